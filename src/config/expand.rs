//! `${VAR}` and `${VAR:-default}` expansion inside the string values of a TOML document.
//!
//! Expansion runs on the parsed document rather than on the raw text, so a variable can never
//! inject TOML syntax, and each failure can name the key path it happened at. Values are replaced
//! in place with their surrounding whitespace and comments kept, so line numbers stay the same for
//! the error messages of the typed pass that follows.

use toml_edit::{DocumentMut, Item, Value};

use super::ConfigError;

/// Why one string value could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error(
        "environment variable `{0}` is not set and has no default; set it or write `${{{0}:-default}}`"
    )]
    Unset(String),
    #[error("unclosed `${{` in `{0}`; close it with `}}`")]
    Unclosed(String),
    #[error("invalid variable name `{0}`; use letters, digits and `_`, not starting with a digit")]
    InvalidName(String),
    #[error("nested `${{` in the default of `{0}` is not supported; use a plain default")]
    Nested(String),
}

/// Expands every `${NAME}` and `${NAME:-default}` in `input`.
///
/// `:-` applies when the variable is unset or empty. A `$` not followed by `{` stays as it is.
pub fn expand_str(
    input: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let body_and_tail = &rest[start + 2..];
        let end = body_and_tail
            .find('}')
            .ok_or_else(|| ExpandError::Unclosed(input.to_owned()))?;
        out.push_str(&resolve(&body_and_tail[..end], lookup)?);
        rest = &body_and_tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve(body: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let (name, default) = match body.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (body, None),
    };
    if !is_variable_name(name) {
        return Err(ExpandError::InvalidName(name.to_owned()));
    }
    if default.is_some_and(|d| d.contains("${")) {
        return Err(ExpandError::Nested(name.to_owned()));
    }
    match (lookup(name), default) {
        (Some(value), Some(default)) if value.is_empty() => Ok(default.to_owned()),
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_owned()),
        (None, None) => Err(ExpandError::Unset(name.to_owned())),
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Expands all string values of `doc` in place; the first failure names its key path.
pub fn expand_document(
    doc: &mut DocumentMut,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    expand_item(doc.as_item_mut(), &mut Vec::new(), lookup)
}

fn expand_item(
    item: &mut Item,
    path: &mut Vec<String>,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match item {
        Item::Value(value) => expand_value(value, path, lookup),
        Item::Table(table) => {
            for (key, child) in table.iter_mut() {
                path.push(key.get().to_owned());
                expand_item(child, path, lookup)?;
                path.pop();
            }
            Ok(())
        }
        Item::ArrayOfTables(tables) => {
            for (index, table) in tables.iter_mut().enumerate() {
                path.push(format!("[{index}]"));
                for (key, child) in table.iter_mut() {
                    path.push(key.get().to_owned());
                    expand_item(child, path, lookup)?;
                    path.pop();
                }
                path.pop();
            }
            Ok(())
        }
        Item::None => Ok(()),
    }
}

fn expand_value(
    value: &mut Value,
    path: &mut Vec<String>,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(formatted) => {
            let expanded =
                expand_str(formatted.value(), lookup).map_err(|source| ConfigError::Expand {
                    key: join_path(path),
                    source,
                })?;
            if expanded != *formatted.value() {
                let decor = formatted.decor().clone();
                *formatted = toml_edit::Formatted::new(expanded);
                *formatted.decor_mut() = decor;
            }
            Ok(())
        }
        Value::Array(array) => {
            for (index, element) in array.iter_mut().enumerate() {
                path.push(format!("[{index}]"));
                expand_value(element, path, lookup)?;
                path.pop();
            }
            Ok(())
        }
        Value::InlineTable(table) => {
            for (key, child) in table.iter_mut() {
                path.push(key.get().to_owned());
                expand_value(child, path, lookup)?;
                path.pop();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Joins path segments as `a.b[0].c`.
pub(crate) fn join_path(path: &[String]) -> String {
    let mut joined = String::new();
    for segment in path {
        if !segment.starts_with('[') && !joined.is_empty() {
            joined.push('.');
        }
        joined.push_str(segment);
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_in_middle_of_string() {
        assert_eq!(expand_str("a-${SET}-b", &env).unwrap(), "a-value-b");
        assert_eq!(expand_str("${SET}${SET}", &env).unwrap(), "valuevalue");
    }

    #[test]
    fn default_applies_when_unset_or_empty() {
        assert_eq!(expand_str("${UNSET:-d}", &env).unwrap(), "d");
        assert_eq!(expand_str("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(expand_str("${SET:-d}", &env).unwrap(), "value");
        assert_eq!(expand_str("${UNSET:-}", &env).unwrap(), "");
    }

    #[test]
    fn set_but_empty_without_default_is_empty() {
        assert_eq!(expand_str("x${EMPTY}y", &env).unwrap(), "xy");
    }

    #[test]
    fn unset_without_default_is_an_error() {
        assert_eq!(
            expand_str("${UNSET}", &env),
            Err(ExpandError::Unset("UNSET".into()))
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(matches!(
            expand_str("${SET", &env),
            Err(ExpandError::Unclosed(_))
        ));
        assert!(matches!(
            expand_str("${1X}", &env),
            Err(ExpandError::InvalidName(_))
        ));
        assert!(matches!(
            expand_str("${}", &env),
            Err(ExpandError::InvalidName(_))
        ));
    }

    #[test]
    fn nested_default_is_an_error() {
        assert_eq!(
            expand_str("${A:-${B:-x}}", &env),
            Err(ExpandError::Nested("A".into()))
        );
    }

    #[test]
    fn lone_dollar_is_literal() {
        assert_eq!(expand_str("cost $5 {x}", &env).unwrap(), "cost $5 {x}");
    }

    #[test]
    fn default_may_contain_colons_and_slashes() {
        assert_eq!(
            expand_str("${UNSET:-http://127.0.0.1:8081/v1}", &env).unwrap(),
            "http://127.0.0.1:8081/v1"
        );
    }
}
