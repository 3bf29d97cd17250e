//! Typed API declarations for code mode, generated from the JSON Schemas of MCP tools.
//!
//! The model reads this text to write a program that calls `tools.<server>.<tool>(args)`. Nothing
//! compiles it, so the schema mapping aims at a faithful hint rather than a sound type system, and
//! keywords it does not model become `unknown`.
//!
//! Names, descriptions and schemas come from MCP servers and are untrusted. Names become
//! JavaScript identifiers or JSON strings, and descriptions are escaped inside doc comments.
//! `$ref` cycles, deep nesting and very large schemas degrade to `unknown`, so a schema cannot
//! make the text grow without bound.
//!
//! The text depends only on the sources, in the order given, so the same tools always produce
//! byte-identical text. Object properties appear in the iteration order of `serde_json::Map`,
//! which is alphabetical unless serde_json's `preserve_order` feature is enabled.

use std::collections::HashSet;

use serde_json::{Map, Value};

/// One tool as the declarations describe it.
pub struct ToolSource<'a> {
    pub server: &'a str,
    pub tool: &'a str,
    pub description: Option<&'a str>,
    pub input_schema: &'a Value,
    pub output_schema: Option<&'a Value>,
}

/// Where a declared function leads: `tools.<server_ident>.<tool_ident>` calls `sources[source]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub server_ident: String,
    pub tool_ident: String,
    pub source: usize,
}

/// Declaration text together with one binding per source, in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiDeclarations {
    pub text: String,
    pub bindings: Vec<Binding>,
}

/// Schemas nested deeper than this below a tool's root schema map to `unknown`.
const MAX_DEPTH: usize = 8;

/// Maximum number of schemas and enum values mapped per root schema, counting schemas cut by the
/// depth limit. Later ones map to `unknown`. `$ref`s that point to the same definition several
/// times multiply the output, so a small hostile schema could otherwise expand into megabytes.
// NOTE: the budget counts schemas, not the length of names and literals, so a definition with very
// long property names or enum strings that is referenced many times can still produce large text.
const MAX_SCHEMAS_PER_ROOT: usize = 2_000;

/// Maximum characters of property doc comments per root schema, for the same reason. Properties
/// past the budget get no doc comment.
const MAX_DOC_CHARS_PER_ROOT: usize = 20_000;

/// Maximum length, in characters of compact JSON, of a `default` shown in a doc comment.
const MAX_DEFAULT_CHARS: usize = 200;

const INDENT: &str = "  ";

const RESULT_NOTE: &str =
    "// A call resolves to the tool's structured content when it has some, otherwise to its text.";

const UNKNOWN: TsType = TsType::Keyword("unknown");
const NEVER: TsType = TsType::Keyword("never");
const NULL: TsType = TsType::Keyword("null");

/// ES2023 reserved words, strict-mode reserved words, global names that cannot be rebound in
/// strict code or would mislead, and `Object.prototype` members that a property lookup could hit.
const RESERVED_WORDS: &str = "\
    await break case catch class const continue debugger default delete do else enum export \
    extends false finally for function if import in instanceof new null return super switch \
    this throw true try typeof var void while with yield \
    implements interface let package private protected public static \
    undefined NaN Infinity eval arguments \
    __proto__ constructor prototype toString valueOf hasOwnProperty";

/// Builds the declaration of `tools` for the given sources.
///
/// Tools are grouped by server in order of each server's first appearance, and keep their input
/// order within a server. Callers pass sources sorted by (server, tool).
pub fn declare(sources: &[ToolSource<'_>]) -> ApiDeclarations {
    let mut text = format!("{RESULT_NOTE}\n");
    let mut bindings = Vec::with_capacity(sources.len());
    let groups = group_by_server(sources);
    if groups.is_empty() {
        text.push_str("declare const tools: {};\n");
        return ApiDeclarations { text, bindings };
    }
    text.push_str("declare const tools: {\n");
    let mut server_names = UniqueNames::default();
    for group in &groups {
        let server_ident = server_names.claim(group.server);
        bindings.extend(write_server(&mut text, &server_ident, group, sources));
    }
    text.push_str("};\n");
    bindings.sort_by_key(|binding| binding.source);
    ApiDeclarations { text, bindings }
}

/// Maps any name to a JavaScript identifier; deterministic.
///
/// Characters outside `[A-Za-z0-9_$]`, non-ASCII letters included, become `_`. An empty result or
/// one starting with a digit gets a `_` prefix, and a reserved word gets a `_` suffix.
pub fn js_identifier(name: &str) -> String {
    let mut identifier: String = name
        .chars()
        .map(|c| if is_identifier_char(c) { c } else { '_' })
        .collect();
    if identifier.is_empty() || identifier.starts_with(|c: char| c.is_ascii_digit()) {
        identifier.insert(0, '_');
    }
    if RESERVED_WORDS
        .split_ascii_whitespace()
        .any(|word| word == identifier)
    {
        identifier.push('_');
    }
    identifier
}

fn is_identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$'
}

/// Identifiers already used in one scope. A name that maps to a claimed identifier gets the first
/// free `_2`, `_3`, … suffix.
#[derive(Default)]
struct UniqueNames {
    claimed: HashSet<String>,
}

impl UniqueNames {
    fn claim(&mut self, name: &str) -> String {
        let base = js_identifier(name);
        let mut candidate = base.clone();
        let mut counter = 2;
        while self.claimed.contains(&candidate) {
            candidate = format!("{base}_{counter}");
            counter += 1;
        }
        self.claimed.insert(candidate.clone());
        candidate
    }
}

struct ServerGroup<'s> {
    server: &'s str,
    members: Vec<usize>,
}

fn group_by_server<'s>(sources: &[ToolSource<'s>]) -> Vec<ServerGroup<'s>> {
    let mut groups: Vec<ServerGroup<'s>> = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|group| group.server == source.server)
        {
            Some(group) => group.members.push(index),
            None => groups.push(ServerGroup {
                server: source.server,
                members: vec![index],
            }),
        }
    }
    groups
}

fn write_server(
    text: &mut String,
    server_ident: &str,
    group: &ServerGroup<'_>,
    sources: &[ToolSource<'_>],
) -> Vec<Binding> {
    push_line(text, 1, &format!("{server_ident}: {{"));
    let mut tool_names = UniqueNames::default();
    let mut bindings = Vec::with_capacity(group.members.len());
    for &source in &group.members {
        let tool_ident = tool_names.claim(sources[source].tool);
        write_tool(text, &sources[source], server_ident, &tool_ident);
        let server_ident = server_ident.to_owned();
        bindings.push(Binding {
            server_ident,
            tool_ident,
            source,
        });
    }
    push_line(text, 1, "};");
    bindings
}

fn write_tool(text: &mut String, source: &ToolSource<'_>, server_ident: &str, tool_ident: &str) {
    write_doc(text, 2, &tool_doc(source, server_ident, tool_ident));
    let args = render_type(&input_type(source.input_schema), 2);
    let output = source.output_schema.map_or(UNKNOWN, root_type);
    let output = render_type(&output, 2);
    let signature = format!("{tool_ident}(args: {args}): Promise<{output}>;");
    push_line(text, 2, &signature);
}

fn tool_doc(source: &ToolSource<'_>, server_ident: &str, tool_ident: &str) -> Vec<String> {
    let mut lines = source.description.map_or_else(Vec::new, comment_lines);
    if server_ident != source.server || tool_ident != source.tool {
        let names = format!("(original name: {} / {})", source.server, source.tool);
        lines.push(comment_line(&names));
    }
    lines
}

/// Maps an input schema. Anything other than an object schema gets a free-form object, because
/// MCP passes tool arguments as a JSON object.
fn input_type(schema: &Value) -> TsType {
    if is_object_schema(schema) {
        root_type(schema)
    } else {
        free_form_object()
    }
}

fn free_form_object() -> TsType {
    let index = Some(Box::new(UNKNOWN));
    TsType::Object(ObjectType {
        properties: Vec::new(),
        index,
    })
}

fn is_object_schema(schema: &Value) -> bool {
    match schema.get("type") {
        Some(kind) => kind == "object",
        None => schema.get("properties").is_some_and(Value::is_object),
    }
}

fn root_type(schema: &Value) -> TsType {
    SchemaMapper::new(schema).map(schema, 0)
}

/// A TypeScript type, built before rendering so that unions can be simplified and nested
/// objects indented where they end up.
#[derive(Debug, Clone, PartialEq)]
enum TsType {
    Keyword(&'static str),
    /// A JSON value written as a literal type, already escaped.
    Literal(String),
    Array(Box<TsType>),
    Tuple(Vec<TsType>, Option<Box<TsType>>),
    Object(ObjectType),
    Union(Vec<TsType>),
    Intersection(Vec<TsType>),
}

#[derive(Debug, Clone, PartialEq)]
struct ObjectType {
    properties: Vec<Property>,
    /// Value type of the `[key: string]` index signature, if the object has one.
    index: Option<Box<TsType>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Property {
    /// The property name as written: a plain identifier or a JSON string.
    key: String,
    optional: bool,
    doc: Vec<String>,
    ty: TsType,
}

/// Converter for the schemas under one root schema, which `$ref`s resolve against.
struct SchemaMapper<'a> {
    root: &'a Value,
    /// Targets of the `$ref`s being expanded, to cut recursion.
    expanding: Vec<&'a Value>,
    schemas_left: usize,
    doc_chars_left: usize,
}

impl<'a> SchemaMapper<'a> {
    fn new(root: &'a Value) -> Self {
        // The root is being expanded from the start, so `"$ref": "#"` cuts at once.
        SchemaMapper {
            root,
            expanding: vec![root],
            schemas_left: MAX_SCHEMAS_PER_ROOT,
            doc_chars_left: MAX_DOC_CHARS_PER_ROOT,
        }
    }

    fn map(&mut self, schema: &'a Value, depth: usize) -> TsType {
        if self.schemas_left == 0 {
            return UNKNOWN;
        }
        self.schemas_left -= 1;
        if depth > MAX_DEPTH {
            return UNKNOWN;
        }
        match schema {
            Value::Bool(false) => NEVER,
            Value::Object(keywords) => self.map_nullable(keywords, depth),
            _ => UNKNOWN,
        }
    }

    fn map_all(&mut self, schemas: &'a [Value], depth: usize) -> Vec<TsType> {
        schemas
            .iter()
            .map(|schema| self.map(schema, depth + 1))
            .collect()
    }

    /// Handles OpenAPI's `nullable: true`, which some MCP servers emit instead of a `null` type.
    fn map_nullable(&mut self, keywords: &'a Map<String, Value>, depth: usize) -> TsType {
        let ty = self.map_keywords(keywords, depth);
        if keywords.get("nullable") == Some(&Value::Bool(true)) {
            union(vec![ty, NULL])
        } else {
            ty
        }
    }

    fn map_keywords(&mut self, keywords: &'a Map<String, Value>, depth: usize) -> TsType {
        if let Some(reference) = keywords.get("$ref") {
            return self.map_ref(reference, depth);
        }
        if let Some(value) = keywords.get("const") {
            return literal(value);
        }
        if let Some(Value::Array(values)) = keywords.get("enum") {
            self.schemas_left = self.schemas_left.saturating_sub(values.len());
            return union(values.iter().map(literal).collect());
        }
        self.map_combined(keywords, depth)
    }

    /// Intersects the type from `type` (or inferred from object and array keywords) with the
    /// `oneOf`/`anyOf` unions and `allOf` members. A member that only adds constraints, such as
    /// `{"required": ["a"]}`, maps to `unknown` and drops out of the intersection.
    fn map_combined(&mut self, keywords: &'a Map<String, Value>, depth: usize) -> TsType {
        let mut parts: Vec<TsType> = self.map_type(keywords, depth).into_iter().collect();
        for key in ["oneOf", "anyOf"] {
            if let Some(Value::Array(members)) = keywords.get(key) {
                parts.push(union(self.map_all(members, depth)));
            }
        }
        if let Some(Value::Array(members)) = keywords.get("allOf") {
            parts.extend(self.map_all(members, depth));
        }
        intersection(parts)
    }

    /// Resolves a `$ref` against the root schema and inlines its target, or gives `unknown` when
    /// it does not resolve or is already being expanded.
    fn map_ref(&mut self, reference: &Value, depth: usize) -> TsType {
        let Some(target) = reference.as_str().and_then(|r| resolve_ref(self.root, r)) else {
            return UNKNOWN;
        };
        if self.is_expanding(target) {
            return UNKNOWN;
        }
        self.expanding.push(target);
        let ty = self.map(target, depth + 1);
        self.expanding.pop();
        ty
    }

    fn is_expanding(&self, target: &Value) -> bool {
        self.expanding
            .iter()
            .any(|open| std::ptr::eq(*open, target))
    }

    fn map_type(&mut self, keywords: &'a Map<String, Value>, depth: usize) -> Option<TsType> {
        match keywords.get("type") {
            Some(Value::String(name)) => Some(self.map_named_type(name, keywords, depth)),
            Some(Value::Array(names)) => Some(self.map_type_list(names, keywords, depth)),
            _ => self.infer_type(keywords, depth),
        }
    }

    fn map_type_list(
        &mut self,
        names: &[Value],
        keywords: &'a Map<String, Value>,
        depth: usize,
    ) -> TsType {
        let mut members = Vec::with_capacity(names.len());
        for name in names {
            members.push(match name.as_str() {
                Some(name) => self.map_named_type(name, keywords, depth),
                None => UNKNOWN,
            });
        }
        union(members)
    }

    fn map_named_type(
        &mut self,
        name: &str,
        keywords: &'a Map<String, Value>,
        depth: usize,
    ) -> TsType {
        match name {
            "string" => TsType::Keyword("string"),
            "number" | "integer" => TsType::Keyword("number"),
            "boolean" => TsType::Keyword("boolean"),
            "null" => NULL,
            "array" => self.map_array(keywords, depth),
            "object" => self.map_object(keywords, depth),
            _ => UNKNOWN,
        }
    }

    /// Infers an object or array from its keywords when `type` is missing, as schema
    /// generators often leave it out.
    fn infer_type(&mut self, keywords: &'a Map<String, Value>, depth: usize) -> Option<TsType> {
        if keywords.contains_key("properties") || keywords.contains_key("additionalProperties") {
            return Some(self.map_object(keywords, depth));
        }
        if keywords.contains_key("items") || keywords.contains_key("prefixItems") {
            return Some(self.map_array(keywords, depth));
        }
        None
    }

    /// Maps `items` to `T[]`, and the tuple forms (`prefixItems` from draft 2020-12, an `items`
    /// array from earlier drafts) to `[A, B]`.
    fn map_array(&mut self, keywords: &'a Map<String, Value>, depth: usize) -> TsType {
        if let Some(Value::Array(prefix)) = keywords.get("prefixItems") {
            return self.map_tuple(prefix, keywords.get("items"), depth);
        }
        match keywords.get("items") {
            Some(Value::Array(items)) => {
                self.map_tuple(items, keywords.get("additionalItems"), depth)
            }
            Some(items) => TsType::Array(Box::new(self.map(items, depth + 1))),
            None => TsType::Array(Box::new(UNKNOWN)),
        }
    }

    /// Maps a tuple with an optional `...T[]` rest. Without a rest keyword JSON Schema allows
    /// further items of any type, but a closed tuple is the clearer hint for the model.
    fn map_tuple(
        &mut self,
        elements: &'a [Value],
        rest: Option<&'a Value>,
        depth: usize,
    ) -> TsType {
        let elements = self.map_all(elements, depth);
        let rest = match rest {
            None | Some(Value::Bool(false)) => None,
            Some(schema) => Some(Box::new(self.map(schema, depth + 1))),
        };
        TsType::Tuple(elements, rest)
    }

    fn map_object(&mut self, keywords: &'a Map<String, Value>, depth: usize) -> TsType {
        let required = required_names(keywords);
        let mut properties = Vec::new();
        if let Some(Value::Object(schemas)) = keywords.get("properties") {
            for (name, schema) in schemas {
                let optional = !required.contains(name.as_str());
                properties.push(self.map_property(name, schema, optional, depth));
            }
        }
        let additional = keywords.get("additionalProperties");
        let index = self.map_index(additional, properties.is_empty(), depth);
        TsType::Object(ObjectType {
            properties,
            index: index.map(Box::new),
        })
    }

    fn map_property(
        &mut self,
        name: &str,
        schema: &'a Value,
        optional: bool,
        depth: usize,
    ) -> Property {
        let doc = self.charge_doc(property_doc(schema));
        let ty = self.map(schema, depth + 1);
        Property {
            key: property_key(name),
            optional,
            doc,
            ty,
        }
    }

    fn charge_doc(&mut self, doc: Vec<String>) -> Vec<String> {
        let chars = doc.iter().map(|line| line.chars().count()).sum();
        match self.doc_chars_left.checked_sub(chars) {
            Some(left) => {
                self.doc_chars_left = left;
                doc
            }
            None => Vec::new(),
        }
    }

    /// Maps `additionalProperties` to the index signature's value type. An object without
    /// properties and without the keyword accepts any keys, so it gets `unknown` values.
    fn map_index(
        &mut self,
        additional: Option<&'a Value>,
        no_properties: bool,
        depth: usize,
    ) -> Option<TsType> {
        match additional {
            Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(UNKNOWN),
            Some(schema @ Value::Object(_)) => Some(self.map(schema, depth + 1)),
            _ => no_properties.then_some(UNKNOWN),
        }
    }
}

fn resolve_ref<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    // NOTE: only same-document refs are resolved, and percent-encoded pointers are not decoded.
    root.pointer(reference.strip_prefix('#')?)
}

fn required_names(keywords: &Map<String, Value>) -> HashSet<&str> {
    match keywords.get("required") {
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
        _ => HashSet::new(),
    }
}

fn literal(value: &Value) -> TsType {
    TsType::Literal(json_text(value))
}

/// Builds a flattened union without duplicates. `unknown` absorbs the other members and `never`
/// adds nothing.
fn union(members: Vec<TsType>) -> TsType {
    let mut flat = Vec::new();
    for member in members {
        match member {
            TsType::Union(inner) => inner.into_iter().for_each(|m| push_unique(&mut flat, m)),
            other if other == NEVER => {}
            other => push_unique(&mut flat, other),
        }
    }
    if flat.contains(&UNKNOWN) {
        return UNKNOWN;
    }
    collapse(flat, NEVER, TsType::Union)
}

/// Builds a flattened intersection without duplicates. `never` absorbs the other members and
/// `unknown` adds nothing.
fn intersection(members: Vec<TsType>) -> TsType {
    let mut flat = Vec::new();
    for member in members {
        match member {
            TsType::Intersection(inner) => {
                inner.into_iter().for_each(|m| push_unique(&mut flat, m))
            }
            other if other == UNKNOWN => {}
            other => push_unique(&mut flat, other),
        }
    }
    if flat.contains(&NEVER) {
        return NEVER;
    }
    collapse(flat, UNKNOWN, TsType::Intersection)
}

fn push_unique(members: &mut Vec<TsType>, member: TsType) {
    if !members.contains(&member) {
        members.push(member);
    }
}

fn collapse(mut members: Vec<TsType>, empty: TsType, build: fn(Vec<TsType>) -> TsType) -> TsType {
    match members.len() {
        0 => empty,
        1 => members.remove(0),
        _ => build(members),
    }
}

/// Formats a property name as a plain identifier when it is one, else as a JSON string. The name
/// `__proto__` is quoted too, because unquoted it names the prototype in object literals.
fn property_key(name: &str) -> String {
    if is_plain_identifier(name) && name != "__proto__" {
        name.to_owned()
    } else {
        json_text(&Value::String(name.to_owned()))
    }
}

fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let first = chars.next();
    first.is_some_and(|c| is_identifier_char(c) && !c.is_ascii_digit())
        && chars.all(is_identifier_char)
}

fn property_doc(schema: &Value) -> Vec<String> {
    let description = schema.get("description").and_then(Value::as_str);
    let mut lines = description.map_or_else(Vec::new, comment_lines);
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        lines.push(comment_line(&format!("@format {format}")));
    }
    let default = schema.get("default").map(json_text);
    if let Some(default) = default.filter(|text| text.chars().count() <= MAX_DEFAULT_CHARS) {
        lines.push(comment_line(&format!("@default {default}")));
    }
    lines
}

/// Serializes a value as compact JSON. serde_json escapes control characters in strings; this also
/// escapes the characters that `is_unsafe_text_char` rejects, which serde_json leaves as they are.
fn json_text(value: &Value) -> String {
    let mut escaped = String::new();
    for c in value.to_string().chars() {
        if is_unsafe_text_char(c) {
            escaped.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// Checks for control characters, for the line and paragraph separators that JavaScript treats
/// as line breaks, and for bidirectional formatting characters, which can make text display
/// differently from how it parses.
fn is_unsafe_text_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Splits text into doc comment lines. Leading and trailing blank lines are dropped.
fn comment_lines(text: &str) -> Vec<String> {
    let normalized = text.replace("\r\n", "\n");
    let is_line_break = |c: char| matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}');
    let lines: Vec<String> = normalized.split(is_line_break).map(comment_line).collect();
    let first = lines
        .iter()
        .position(|line| !line.is_empty())
        .unwrap_or(lines.len());
    let last = lines
        .iter()
        .rposition(|line| !line.is_empty())
        .map_or(first, |last| last + 1);
    lines[first..last].to_vec()
}

/// Makes one line safe inside a `/** */` comment. Unsafe characters become spaces and `*/`
/// becomes `*\/`, so the text can neither end the comment nor start a new line.
fn comment_line(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if is_unsafe_text_char(c) { ' ' } else { c })
        .collect();
    cleaned.replace("*/", "*\\/").trim_end().to_owned()
}

fn write_doc(out: &mut String, level: usize, lines: &[String]) {
    match lines {
        [] => {}
        [line] => push_line(out, level, &format!("/** {line} */")),
        _ => {
            push_line(out, level, "/**");
            for line in lines {
                let star = if line.is_empty() {
                    " *".to_owned()
                } else {
                    format!(" * {line}")
                };
                push_line(out, level, &star);
            }
            push_line(out, level, " */");
        }
    }
}

fn push_line(out: &mut String, level: usize, line: &str) {
    push_indent(out, level);
    out.push_str(line);
    out.push('\n');
}

fn push_indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str(INDENT);
    }
}

/// Renders a type that starts on a line indented by `level`. The lines of a multi-line object
/// are indented relative to that level.
fn render_type(ty: &TsType, level: usize) -> String {
    let mut out = String::new();
    write_type(&mut out, ty, level);
    out
}

fn write_type(out: &mut String, ty: &TsType, level: usize) {
    match ty {
        TsType::Keyword(keyword) => out.push_str(keyword),
        TsType::Literal(text) => out.push_str(text),
        TsType::Array(element) => {
            write_operand(out, element, level, is_union_or_intersection(element));
            out.push_str("[]");
        }
        TsType::Tuple(elements, rest) => write_tuple(out, elements, rest.as_deref(), level),
        TsType::Object(object) => write_object(out, object, level),
        TsType::Union(members) => write_joined(out, members, " | ", level, |_| false),
        TsType::Intersection(members) => write_joined(out, members, " & ", level, |member| {
            matches!(member, TsType::Union(_))
        }),
    }
}

fn is_union_or_intersection(ty: &TsType) -> bool {
    matches!(ty, TsType::Union(_) | TsType::Intersection(_))
}

fn write_operand(out: &mut String, ty: &TsType, level: usize, parenthesize: bool) {
    if parenthesize {
        out.push('(');
        write_type(out, ty, level);
        out.push(')');
    } else {
        write_type(out, ty, level);
    }
}

/// Joins union or intersection members. Only a union inside an intersection needs parentheses,
/// because `&` binds tighter than `|` and nested unions are already flattened.
fn write_joined(
    out: &mut String,
    members: &[TsType],
    separator: &str,
    level: usize,
    parenthesize: fn(&TsType) -> bool,
) {
    for (position, member) in members.iter().enumerate() {
        if position > 0 {
            out.push_str(separator);
        }
        write_operand(out, member, level, parenthesize(member));
    }
}

fn write_tuple(out: &mut String, elements: &[TsType], rest: Option<&TsType>, level: usize) {
    out.push('[');
    for (position, element) in elements.iter().enumerate() {
        if position > 0 {
            out.push_str(", ");
        }
        write_type(out, element, level);
    }
    if let Some(rest) = rest {
        if !elements.is_empty() {
            out.push_str(", ");
        }
        out.push_str("...");
        write_operand(out, rest, level, is_union_or_intersection(rest));
        out.push_str("[]");
    }
    out.push(']');
}

/// Writes an object one property per line. An object with nothing but a single-line index
/// signature stays on one line, as in `{ [key: string]: unknown }`.
fn write_object(out: &mut String, object: &ObjectType, level: usize) {
    if let Some(inline) = inline_object(object, level) {
        out.push_str(&inline);
        return;
    }
    out.push_str("{\n");
    for property in &object.properties {
        write_property(out, property, level + 1);
    }
    if let Some(index) = &object.index {
        let value = render_type(index, level + 1);
        push_line(out, level + 1, &format!("[key: string]: {value};"));
    }
    push_indent(out, level);
    out.push('}');
}

fn inline_object(object: &ObjectType, level: usize) -> Option<String> {
    if !object.properties.is_empty() {
        return None;
    }
    let Some(index) = &object.index else {
        return Some("{}".to_owned());
    };
    let value = render_type(index, level);
    let single_line = !value.contains('\n');
    single_line.then(|| format!("{{ [key: string]: {value} }}"))
}

fn write_property(out: &mut String, property: &Property, level: usize) {
    write_doc(out, level, &property.doc);
    let marker = if property.optional { "?" } else { "" };
    let ty = render_type(&property.ty, level);
    push_line(out, level, &format!("{}{marker}: {ty};", property.key));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn source<'a>(server: &'a str, tool: &'a str, schema: &'a Value) -> ToolSource<'a> {
        ToolSource {
            server,
            tool,
            description: None,
            input_schema: schema,
            output_schema: None,
        }
    }

    /// Declares one tool `s.t` and returns the whole text.
    fn declare_tool(input: &Value, output: Option<&Value>, description: Option<&str>) -> String {
        let tool = ToolSource {
            output_schema: output,
            description,
            ..source("s", "t", input)
        };
        declare(&[tool]).text
    }

    fn declare_input(input: Value) -> String {
        declare_tool(&input, None, None)
    }

    /// Wraps the lines of the single tool `s.t` in the surrounding declaration.
    fn document(tool_lines: &str) -> String {
        format!("{RESULT_NOTE}\ndeclare const tools: {{\n  s: {{\n{tool_lines}  }};\n}};\n")
    }

    #[test]
    fn js_identifier_maps_names() {
        let cases = [
            ("echo", "echo"),
            ("get-sum", "get_sum"),
            ("with space", "with_space"),
            ("dollar$ok", "dollar$ok"),
            ("9lives", "_9lives"),
            ("123", "_123"),
            ("", "_"),
            ("naïve", "na_ve"),
            ("日本語", "___"),
            ("emoji🙂", "emoji_"),
            ("class", "class_"),
            ("await", "await_"),
            ("let", "let_"),
            ("yield", "yield_"),
            ("undefined", "undefined_"),
            ("NaN", "NaN_"),
            ("Infinity", "Infinity_"),
            ("eval", "eval_"),
            ("arguments", "arguments_"),
            ("__proto__", "__proto___"),
            ("constructor", "constructor_"),
            ("prototype", "prototype_"),
            ("toString", "toString_"),
            ("valueOf", "valueOf_"),
            ("hasOwnProperty", "hasOwnProperty_"),
            ("Class", "Class"),
            ("async", "async"),
            ("a.b/c", "a_b_c"),
            ("*/", "__"),
        ];
        for (name, expected) in cases {
            assert_eq!(js_identifier(name), expected, "name {name:?}");
        }
    }

    #[test]
    fn js_identifier_is_deterministic() {
        assert_eq!(js_identifier("a-b-ü"), js_identifier("a-b-ü"));
    }

    #[test]
    fn unrenamed_tool_has_no_name_note() {
        let input = json!({
            "type": "object",
            "properties": {"message": {"type": "string", "description": "Message to echo"}},
            "required": ["message"]
        });
        let text = declare_tool(&input, None, Some("Echoes back the input string"));
        let expected = document(
            r#"    /** Echoes back the input string */
    t(args: {
      /** Message to echo */
      message: string;
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn renamed_tool_notes_original_names() {
        let input = json!({"type": "object", "properties": {}, "additionalProperties": false});
        let tool = ToolSource {
            description: Some("Sums."),
            ..source("my server", "get-sum", &input)
        };
        let declarations = declare(&[tool]);
        let expected = format!(
            "{RESULT_NOTE}\ndeclare const tools: {{\n  my_server: {{\n{}  }};\n}};\n",
            r#"    /**
     * Sums.
     * (original name: my server / get-sum)
     */
    get_sum(args: {}): Promise<unknown>;
"#
        );
        assert_eq!(declarations.text, expected);
        let binding = Binding {
            server_ident: "my_server".into(),
            tool_ident: "get_sum".into(),
            source: 0,
        };
        assert_eq!(declarations.bindings, vec![binding]);
    }

    #[test]
    fn refs_to_defs_and_definitions_are_inlined() {
        let text = declare_input(json!({
            "type": "object",
            "properties": {
                "point": {"$ref": "#/$defs/Point"},
                "legacy": {"$ref": "#/definitions/Flag"},
                "missing": {"$ref": "#/$defs/Nope"},
                "remote": {"$ref": "https://example.com/schema.json"}
            },
            "required": ["point"],
            "$defs": {
                "Point": {
                    "type": "object",
                    "properties": {"x": {"type": "number"}, "y": {"type": "integer"}},
                    "required": ["x", "y"]
                }
            },
            "definitions": {"Flag": {"type": "boolean"}}
        }));
        let expected = document(
            r#"    t(args: {
      legacy?: boolean;
      missing?: unknown;
      point: {
        x: number;
        y: number;
      };
      remote?: unknown;
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn recursive_ref_is_cut_to_unknown() {
        let text = declare_input(json!({
            "type": "object",
            "properties": {"root": {"$ref": "#/$defs/Node"}},
            "required": ["root"],
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}
                    },
                    "required": ["name"]
                }
            }
        }));
        let expected = document(
            r#"    t(args: {
      root: {
        children?: unknown[];
        name: string;
      };
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn ref_to_root_is_cut_to_unknown() {
        let text = declare_input(json!({
            "type": "object",
            "properties": {"next": {"$ref": "#"}}
        }));
        let expected = document(
            r#"    t(args: {
      next?: unknown;
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn one_of_any_of_and_all_of_combine() {
        let text = declare_input(json!({
            "type": "object",
            "properties": {
                "either": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                "any": {"anyOf": [{"type": "boolean"}, {"type": "null"}, {"type": "boolean"}]},
                "both": {"allOf": [
                    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                    {"type": "object", "properties": {"b": {"type": "number"}}}
                ]},
                "open": {"oneOf": [{"type": "string"}, {}]}
            },
            "required": ["either"]
        }));
        let expected = document(
            r#"    t(args: {
      any?: boolean | null;
      both?: {
        a: string;
      } & {
        b?: number;
      };
      either: string | number;
      open?: unknown;
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn intersections_parenthesize_unions() {
        let both = json!({"allOf": [
            {"anyOf": [{"type": "string"}, {"type": "number"}]},
            {"enum": ["a", 1]}
        ]});
        let text = declare_input(json!({
            "type": "object",
            "properties": {"one": both, "many": {"type": "array", "items": both}},
            "required": ["one", "many"]
        }));
        let expected = document(
            r#"    t(args: {
      many: ((string | number) & ("a" | 1))[];
      one: (string | number) & ("a" | 1);
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn constraint_only_any_of_keeps_object_type() {
        let text = declare_input(json!({
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
            "anyOf": [{"required": ["a"]}, {"required": ["b"]}]
        }));
        let expected = document(
            r#"    t(args: {
      a?: string;
      b?: string;
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn enums_and_consts_become_literal_unions() {
        let text = declare_input(json!({
            "type": "object",
            "properties": {
                "color": {"type": "string", "enum": ["red", "green", "say \"hi\""]},
                "level": {"type": "integer", "enum": [1, 2, 3.5, -1]},
                "mixed": {"enum": ["a", 1, true, null]},
                "fixed": {"const": "v1"},
                "none": {"enum": []}
            },
            "required": ["color", "level", "mixed", "fixed", "none"]
        }));
        let expected = document(
            r#"    t(args: {
      color: "red" | "green" | "say \"hi\"";
      fixed: "v1";
      level: 1 | 2 | 3.5 | -1;
      mixed: "a" | 1 | true | null;
      none: never;
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn nested_objects_mark_optional_properties() {
        let text = declare_input(json!({
            "type": "object",
            "properties": {
                "outer": {
                    "type": "object",
                    "description": "Outer object",
                    "properties": {
                        "inner": {
                            "type": "object",
                            "properties": {"deep": {"type": "boolean"}},
                            "required": ["deep"]
                        },
                        "count": {"type": "integer"}
                    },
                    "required": ["inner"]
                }
            }
        }));
        let expected = document(
            r#"    t(args: {
      /** Outer object */
      outer?: {
        count?: number;
        inner: {
          deep: boolean;
        };
      };
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn unusual_property_names_are_quoted() {
        let text = declare_input(json!({
            "type": "object",
            "properties": {
                "__proto__": {"type": "string"},
                "a-b": {"type": "string"},
                "with space": {"type": "string"},
                "quote\"d": {"type": "string"},
                "": {"type": "string"},
                "1st": {"type": "string"},
                "line\u{2028}break": {"type": "string"},
                "class": {"type": "string"},
                "$ok_1": {"type": "string"}
            },
            "required": ["__proto__"]
        }));
        let expected = document(
            r#"    t(args: {
      ""?: string;
      $ok_1?: string;
      "1st"?: string;
      "__proto__": string;
      "a-b"?: string;
      class?: string;
      "line\u2028break"?: string;
      "quote\"d"?: string;
      "with space"?: string;
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn descriptions_cannot_escape_doc_comments() {
        let input = json!({
            "type": "object",
            "properties": {
                "p": {
                    "type": "string",
                    "description": "ends */ here\nsecond\tline\u{7}\r\n\nfourth**/"
                }
            },
            "required": ["p"]
        });
        let text = declare_tool(
            &input,
            None,
            Some("Tool */ declare const x: 1; /*\r\nnext\u{2028}last\u{202e}"),
        );
        let expected = document(
            r#"    /**
     * Tool *\/ declare const x: 1; /*
     * next
     * last
     */
    t(args: {
      /**
       * ends *\/ here
       * second line
       *
       * fourth**\/
       */
      p: string;
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn names_cannot_escape_doc_comments() {
        let input = json!({"type": "object"});
        let tool = source("srv*/x", "a\nb", &input);
        let expected = format!(
            "{RESULT_NOTE}\ndeclare const tools: {{\n  srv__x: {{\n{}  }};\n}};\n",
            r#"    /** (original name: srv*\/x / a b) */
    a_b(args: { [key: string]: unknown }): Promise<unknown>;
"#
        );
        assert_eq!(declare(&[tool]).text, expected);
    }

    #[test]
    fn format_and_default_appear_in_doc() {
        let long_default = "x".repeat(MAX_DEFAULT_CHARS);
        let text = declare_input(json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "format": "uri", "default": "https://a.test/*/"},
                "limit": {"type": "integer", "description": "Max rows", "default": 10},
                "huge": {"type": "string", "default": long_default}
            }
        }));
        let expected = document(
            r#"    t(args: {
      huge?: string;
      /**
       * Max rows
       * @default 10
       */
      limit?: number;
      /**
       * @format uri
       * @default "https://a.test/*\/"
       */
      url?: string;
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn arrays_and_tuples_map_items() {
        let text = declare_input(json!({
            "type": "object",
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}},
                "mixed": {
                    "type": "array",
                    "items": {"anyOf": [{"type": "string"}, {"type": "number"}]}
                },
                "nullable_items": {"type": "array", "items": {"type": ["string", "null"]}},
                "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]},
                "old_pair": {"type": "array", "items": [{"type": "boolean"}, {"type": "null"}]},
                "rest": {
                    "type": "array",
                    "prefixItems": [{"type": "string"}],
                    "items": {"type": ["number", "boolean"]}
                },
                "anything": {"type": "array"},
                "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
            }
        }));
        let expected = document(
            r#"    t(args: {
      anything?: unknown[];
      matrix?: number[][];
      mixed?: (string | number)[];
      nullable_items?: (string | null)[];
      old_pair?: [boolean, null];
      pair?: [string, number];
      rest?: [string, ...(number | boolean)[]];
      tags?: string[];
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn additional_properties_become_index_signatures() {
        let text = declare_input(json!({
            "type": "object",
            "properties": {
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object"},
                "free_true": {"type": "object", "additionalProperties": true},
                "closed": {"type": "object", "additionalProperties": false},
                "mixed": {
                    "type": "object",
                    "properties": {"id": {"type": "string"}},
                    "required": ["id"],
                    "additionalProperties": {"type": "number"}
                },
                "nested": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {"v": {"type": "null"}}
                    }
                }
            }
        }));
        let expected = document(
            r#"    t(args: {
      closed?: {};
      free?: { [key: string]: unknown };
      free_true?: { [key: string]: unknown };
      labels?: { [key: string]: string };
      mixed?: {
        id: string;
        [key: string]: number;
      };
      nested?: {
        [key: string]: {
          v?: null;
        };
      };
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn scalar_types_and_missing_type_map() {
        let text = declare_input(json!({
            "type": "object",
            "properties": {
                "i": {"type": "integer"},
                "n": {"type": "number"},
                "b": {"type": "boolean"},
                "z": {"type": "null"},
                "any": {"description": "Anything goes"},
                "odd": {"type": "decimal"},
                "multi": {"type": ["integer", "string", "number"]},
                "maybe": {"type": "string", "nullable": true},
                "nothing": false,
                "everything": true
            }
        }));
        let expected = document(
            r#"    t(args: {
      /** Anything goes */
      any?: unknown;
      b?: boolean;
      everything?: unknown;
      i?: number;
      maybe?: string | null;
      multi?: number | string;
      n?: number;
      nothing?: never;
      odd?: unknown;
      z?: null;
    }): Promise<unknown>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn non_object_input_gets_free_form_args() {
        let schemas = [
            json!({"type": "string"}),
            json!(null),
            json!([1]),
            json!({}),
        ];
        let expected = document("    t(args: { [key: string]: unknown }): Promise<unknown>;\n");
        for schema in schemas {
            assert_eq!(declare_input(schema.clone()), expected, "schema {schema}");
        }
    }

    #[test]
    fn output_schema_sets_promise_type() {
        let input = json!({"type": "object", "properties": {}});
        let output = json!({
            "type": "object",
            "properties": {"total": {"type": "number", "description": "Sum"}},
            "required": ["total"]
        });
        let text = declare_tool(&input, Some(&output), None);
        let expected = document(
            r#"    t(args: { [key: string]: unknown }): Promise<{
      /** Sum */
      total: number;
    }>;
"#,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn nesting_deeper_than_limit_is_unknown() {
        let mut schema = json!({"type": "string"});
        for _ in 0..12 {
            schema = json!({"type": "array", "items": schema});
        }
        let text = declare_input(json!({"type": "object", "properties": {"x": schema}}));
        let arrays = "[]".repeat(MAX_DEPTH);
        let expected = document(&format!(
            "    t(args: {{\n      x?: unknown{arrays};\n    }}): Promise<unknown>;\n"
        ));
        assert_eq!(text, expected);
    }

    #[test]
    fn repeated_refs_stop_at_budgets() {
        // Twelve references to the next level at each of four levels would expand to 12^4
        // properties, each with a 1000-character doc comment, without the budgets.
        let mut defs = Map::new();
        let description = "d".repeat(1000);
        for level in 0..4 {
            let next_ref = format!("#/$defs/L{}", level + 1);
            let next = json!({"$ref": next_ref, "description": description});
            let properties: Map<String, Value> = (0..12)
                .map(|key| (format!("p{key}"), next.clone()))
                .collect();
            defs.insert(
                format!("L{level}"),
                json!({"type": "object", "properties": properties}),
            );
        }
        defs.insert("L4".into(), json!({"type": "string"}));
        let root = json!({"$ref": "#/$defs/L0"});
        let text =
            declare_input(json!({"type": "object", "properties": {"root": root}, "$defs": defs}));
        let lines = text.lines().count();
        let doc_lines = text.matches(&description).count();
        assert!(lines <= 2 * MAX_SCHEMAS_PER_ROOT, "text has {lines} lines");
        assert_eq!(doc_lines, MAX_DOC_CHARS_PER_ROOT / description.len());
        assert!(text.contains("p11?: unknown;"));
    }

    #[test]
    fn server_collisions_get_numbered_suffixes() {
        let input = json!({"type": "object"});
        let sources = [
            source("a-b", "x", &input),
            source("a.b", "x", &input),
            source("a_b", "x", &input),
            source("a_b_2", "x", &input),
        ];
        let declarations = declare(&sources);
        let servers: Vec<&str> = declarations
            .bindings
            .iter()
            .map(|b| b.server_ident.as_str())
            .collect();
        assert_eq!(servers, ["a_b", "a_b_2", "a_b_3", "a_b_2_2"]);
        assert!(declarations.text.contains("\n  a_b_2_2: {\n"));
    }

    #[test]
    fn tool_collisions_get_numbered_suffixes_per_server() {
        let input = json!({"type": "object"});
        let sources = [
            source("one", "do-it", &input),
            source("one", "do_it", &input),
            source("one", "do.it", &input),
            source("two", "do_it", &input),
        ];
        let declarations = declare(&sources);
        let tools: Vec<(&str, &str, usize)> = declarations
            .bindings
            .iter()
            .map(|b| (b.server_ident.as_str(), b.tool_ident.as_str(), b.source))
            .collect();
        assert_eq!(
            tools,
            [
                ("one", "do_it", 0),
                ("one", "do_it_2", 1),
                ("one", "do_it_3", 2),
                ("two", "do_it", 3)
            ]
        );
    }

    #[test]
    fn tools_are_grouped_by_server() {
        let input = json!({"type": "object", "properties": {}, "additionalProperties": false});
        let sources = [
            source("alpha", "a", &input),
            source("beta", "b", &input),
            source("alpha", "c", &input),
        ];
        let declarations = declare(&sources);
        let expected = format!(
            "{RESULT_NOTE}\n{}",
            r#"declare const tools: {
  alpha: {
    a(args: {}): Promise<unknown>;
    c(args: {}): Promise<unknown>;
  };
  beta: {
    b(args: {}): Promise<unknown>;
  };
};
"#
        );
        assert_eq!(declarations.text, expected);
        let order: Vec<usize> = declarations.bindings.iter().map(|b| b.source).collect();
        assert_eq!(order, [0, 1, 2]);
    }

    #[test]
    fn no_sources_declare_empty_tools() {
        let declarations = declare(&[]);
        assert_eq!(
            declarations.text,
            format!("{RESULT_NOTE}\ndeclare const tools: {{}};\n")
        );
        assert!(declarations.bindings.is_empty());
    }

    #[test]
    fn declare_is_deterministic() {
        let input = json!({
            "type": "object",
            "properties": {
                "z": {"type": "string"}, "a": {"$ref": "#/$defs/A"}, "m": {"enum": [3, 1, 2]}
            },
            "$defs": {"A": {"type": "object", "additionalProperties": {"type": "number"}}}
        });
        let sources = [source("x-y", "q", &input), source("x_y", "q", &input)];
        assert_eq!(declare(&sources), declare(&sources));
    }
}
