//! Configuration errors, each naming the key path and, for syntax and type errors, the line.

use toml_edit::{Document, Item, Value};

use super::ExpandError;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: {}{message}", key_prefix(.key))]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
    #[error("{key}: {source}")]
    Expand { key: String, source: ExpandError },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!("key `{k}`: "))
        .unwrap_or_default()
}

/// Builds a [`ConfigError::Parse`] for a serde error of the unexpanded text.
pub(super) fn located(text: &str, origin: &str, err: &toml::de::Error) -> ConfigError {
    let offset = err.span().map_or(0, |span| span.start);
    let (line, column) = line_column(text, offset);
    ConfigError::Parse {
        origin: origin.to_owned(),
        line,
        column,
        key: key_at(text, offset),
        message: err.message().trim().to_owned(),
    }
}

/// Builds a [`ConfigError::Parse`] for a TOML syntax error.
pub(super) fn syntax(text: &str, origin: &str, err: &toml_edit::TomlError) -> ConfigError {
    let offset = err.span().map_or(0, |span| span.start);
    let (line, column) = line_column(text, offset);
    ConfigError::Parse {
        origin: origin.to_owned(),
        line,
        column,
        key: None,
        message: err.message().trim().to_owned(),
    }
}

/// One-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// The dotted path of the innermost key or value whose span contains `offset`.
pub(super) fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = Document::parse(text).ok()?;
    let mut best: Option<(usize, Vec<String>)> = None;
    let mut path = Vec::new();
    visit_item(doc.as_item(), &mut path, offset, &mut best);
    best.map(|(_, path)| super::expand::join_path(&path))
}

type Best = Option<(usize, Vec<String>)>;

fn consider(span: Option<std::ops::Range<usize>>, path: &[String], offset: usize, best: &mut Best) {
    if let Some(span) = span
        && span.contains(&offset)
        && best.as_ref().is_none_or(|(len, _)| span.len() <= *len)
    {
        *best = Some((span.len(), path.to_vec()));
    }
}

fn visit_item(item: &Item, path: &mut Vec<String>, offset: usize, best: &mut Best) {
    match item {
        Item::Table(table) => {
            for (name, _) in table.iter() {
                let (key, child) = table.get_key_value(name).expect("key from iter");
                path.push(name.to_owned());
                consider(key.span(), path, offset, best);
                consider(child.span(), path, offset, best);
                visit_item(child, path, offset, best);
                path.pop();
            }
        }
        Item::ArrayOfTables(tables) => {
            for (index, table) in tables.iter().enumerate() {
                path.push(format!("[{index}]"));
                consider(table.span(), path, offset, best);
                for (name, child) in table.iter() {
                    path.push(name.to_owned());
                    consider(child.span(), path, offset, best);
                    visit_item(child, path, offset, best);
                    path.pop();
                }
                path.pop();
            }
        }
        Item::Value(value) => visit_value(value, path, offset, best),
        Item::None => {}
    }
}

fn visit_value(value: &Value, path: &mut Vec<String>, offset: usize, best: &mut Best) {
    match value {
        Value::InlineTable(table) => {
            for (name, child) in table.iter() {
                path.push(name.to_owned());
                if let Some((key, _)) = table.get_key_value(name) {
                    consider(key.span(), path, offset, best);
                }
                consider(child.span(), path, offset, best);
                visit_value(child, path, offset, best);
                path.pop();
            }
        }
        Value::Array(array) => {
            for (index, element) in array.iter().enumerate() {
                path.push(format!("[{index}]"));
                consider(element.span(), path, offset, best);
                visit_value(element, path, offset, best);
                path.pop();
            }
        }
        _ => {}
    }
}
