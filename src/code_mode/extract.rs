//! Extraction of the JavaScript program from a model reply that carries it in a fenced code block.
//!
//! Providers without native tool calling return the program as Markdown in their text reply, so
//! the gateway must tell a program apart from a direct answer. Fences follow CommonMark: a run of
//! at least three backticks or tildes, indented by at most three spaces. Only a block labelled
//! `js`, `javascript`, `mjs` or `ecmascript` is taken as a program, or else a sole unlabelled block
//! that calls `tools.` or uses `return`. Prose outside fences is never returned.
//!
//! The closing fence of a JavaScript block is found with a small lexer, so that a fence line
//! inside a template literal or a comment does not end the program early.
//!
//! NOTE: container blocks are not parsed. A fence nested in a block quote, or in a list item
//! indented by four or more spaces, is not recognised.

/// A program found in a model reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedProgram {
    /// The code between the fences, without them.
    pub code: String,
    /// The info string's language word as written (`js`, `javascript`, …), `None` for a bare fence.
    pub label: Option<String>,
}

/// Finds the program in a reply; `None` means the reply is a direct answer.
///
/// The first non-empty JavaScript block wins, closed or not, because a reply cut off by the
/// token limit still ends inside its program. A bare block counts only when it is the reply's
/// only fenced block, is closed, and looks like code that drives the tools.
pub fn extract_program(reply: &str) -> Option<ExtractedProgram> {
    let blocks = parse_blocks(reply);
    let mut javascript = blocks
        .iter()
        .filter(|block| block.label.is_some_and(is_javascript));
    let first_program = javascript.find_map(FencedBlock::to_program);
    first_program.or_else(|| sole_bare_program(&blocks))
}

/// Language words that mark a block as JavaScript, compared case-insensitively.
const JAVASCRIPT_LABELS: [&str; 4] = ["js", "javascript", "mjs", "ecmascript"];

fn is_javascript(label: &str) -> bool {
    JAVASCRIPT_LABELS
        .iter()
        .any(|known| known.eq_ignore_ascii_case(label))
}

fn sole_bare_program(blocks: &[FencedBlock<'_>]) -> Option<ExtractedProgram> {
    let [block] = blocks else { return None };
    if block.label.is_some() || !block.closed {
        return None;
    }
    block
        .to_program()
        .filter(|program| looks_like_tool_program(&program.code))
}

/// Returns whether a bare block looks like code that calls the tools, unlike a shell command or
/// sample output.
fn looks_like_tool_program(code: &str) -> bool {
    let calls_tool = words_followed_by(code, "tools.").any(|rest| rest.starts_with(is_ident_start));
    calls_tool || words_followed_by(code, "return").any(|rest| !rest.starts_with(is_ident_part))
}

/// Yields the text after each occurrence of `word` that does not continue an identifier.
fn words_followed_by<'a>(code: &'a str, word: &'a str) -> impl Iterator<Item = &'a str> {
    code.match_indices(word)
        .filter(|(at, _)| !code[..*at].ends_with(is_ident_part))
        .map(move |(at, _)| &code[at + word.len()..])
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

fn is_ident_part(c: char) -> bool {
    is_ident_start(c) || c.is_numeric()
}

/// A fenced code block of the reply, with its content lines.
struct FencedBlock<'a> {
    /// First word of the info string, `None` when the info string is empty.
    label: Option<&'a str>,
    /// Content lines with the opening fence's indentation removed, line endings stripped.
    lines: Vec<&'a str>,
    /// Whether a closing fence was found before the end of the reply.
    closed: bool,
}

impl FencedBlock<'_> {
    /// Builds the program from this block, or `None` when the block holds only whitespace.
    fn to_program(&self) -> Option<ExtractedProgram> {
        let first = self.lines.iter().position(|line| !line.trim().is_empty())?;
        let last = self
            .lines
            .iter()
            .rposition(|line| !line.trim().is_empty())?;
        Some(ExtractedProgram {
            code: self.lines[first..=last].join("\n"),
            label: self.label.map(str::to_owned),
        })
    }
}

/// Splits the reply into its fenced blocks, skipping the prose between them.
fn parse_blocks(reply: &str) -> Vec<FencedBlock<'_>> {
    // `lines` also strips the `\r` of CRLF endings, so the output always uses `\n`.
    let lines: Vec<&str> = reply.lines().collect();
    let mut blocks = Vec::new();
    let mut next = 0;
    while next < lines.len() {
        next += 1;
        if let Some(opening) = parse_opening(lines[next - 1]) {
            let (block, consumed) = read_block(&lines[next..], &opening);
            blocks.push(block);
            next += consumed;
        }
    }
    blocks
}

/// A fence line's marker byte (`` ` `` or `~`), run length and indentation in spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fence {
    marker: u8,
    len: usize,
    indent: usize,
}

impl Fence {
    /// Returns whether `line` closes a block opened by this fence: same marker, at least as long,
    /// and nothing but spaces or tabs after it.
    fn is_closed_by(&self, line: &str) -> bool {
        let Some((fence, rest)) = split_fence(line) else {
            return false;
        };
        fence.marker == self.marker && fence.len >= self.len && is_blank(rest)
    }
}

/// An opening fence line, split into the fence and the label from its info string.
struct Opening<'a> {
    fence: Fence,
    label: Option<&'a str>,
}

fn parse_opening(line: &str) -> Option<Opening<'_>> {
    let (fence, info) = split_fence(line)?;
    // CommonMark: a backtick in the info string makes the line inline code, not a fence.
    if fence.marker == b'`' && info.contains('`') {
        return None;
    }
    let label = info.split_whitespace().next();
    Some(Opening { fence, label })
}

/// Splits a line that starts with a fence into the fence and the text after its run.
fn split_fence(line: &str) -> Option<(Fence, &str)> {
    let indent = line.bytes().take_while(|&byte| byte == b' ').count();
    let marker = *line
        .as_bytes()
        .get(indent)
        .filter(|&&byte| byte == b'`' || byte == b'~')?;
    let len = line[indent..]
        .bytes()
        .take_while(|&byte| byte == marker)
        .count();
    // Four spaces of indentation make an indented code block in CommonMark.
    if indent > 3 || len < 3 {
        return None;
    }
    let fence = Fence {
        marker,
        len,
        indent,
    };
    Some((fence, &line[indent + len..]))
}

fn is_blank(text: &str) -> bool {
    text.bytes().all(|byte| byte == b' ' || byte == b'\t')
}

/// Reads one block from the lines after its opening fence and returns it with the number of lines
/// it used, counting the closing fence.
fn read_block<'a>(lines: &[&'a str], opening: &Opening<'a>) -> (FencedBlock<'a>, usize) {
    let fence = &opening.fence;
    let close = if opening.label.is_some_and(is_javascript) {
        find_javascript_close(lines, fence)
    } else {
        find_plain_close(lines, fence)
    };
    let end = close.unwrap_or(lines.len());
    let block = FencedBlock {
        label: opening.label,
        lines: lines[..end]
            .iter()
            .map(|line| strip_indent(line, fence.indent))
            .collect(),
        closed: close.is_some(),
    };
    (block, close.map_or(end, |at| at + 1))
}

fn find_plain_close(lines: &[&str], fence: &Fence) -> Option<usize> {
    lines.iter().position(|line| fence.is_closed_by(line))
}

/// Finds the closing fence of a JavaScript block, accepting only fence lines outside strings,
/// template literals and comments.
fn find_javascript_close(lines: &[&str], fence: &Fence) -> Option<usize> {
    let mut lexer = Lexer::default();
    for (at, line) in lines.iter().enumerate() {
        if lexer.is_top_level() && fence.is_closed_by(line) {
            return Some(at);
        }
        lexer.feed_line(strip_indent(line, fence.indent));
    }
    // The lexer ignores regex literals, so `/[`]/` can leave it inside a template literal up to
    // the end of the reply. Falling back to the first plain fence keeps the prose after the block
    // out of the program.
    find_plain_close(lines, fence)
}

/// Removes up to `indent` leading spaces, as CommonMark does for content of an indented fence.
fn strip_indent(line: &str, indent: usize) -> &str {
    let spaces = line
        .bytes()
        .take(indent)
        .take_while(|&byte| byte == b' ')
        .count();
    &line[spaces..]
}

/// A lexical context the lexer has entered and not yet left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// The text of a template literal.
    Template,
    /// Code of a `${ … }` substitution, with the number of its `{` not yet closed.
    Substitution(usize),
    /// A single- or double-quoted string, with its quote byte.
    Quote(u8),
    /// A `/* … */` comment.
    BlockComment,
}

/// A line-by-line JavaScript lexer that tracks only what can hide a fence line: strings,
/// template literals with nested substitutions, and comments.
///
/// It scans bytes, which is safe for UTF-8 because every byte it matches is ASCII and never
/// occurs inside a multi-byte character.
#[derive(Debug, Default)]
struct Lexer {
    /// Contexts entered from the top level, innermost last.
    stack: Vec<Context>,
}

impl Lexer {
    fn is_top_level(&self) -> bool {
        self.stack.is_empty()
    }

    fn feed_line(&mut self, line: &str) {
        // A model that puts Markdown into a template literal writes a bare ``` line and means it
        // as text. Lexing it would close the literal and reopen it, so it is skipped.
        if self.stack.last() == Some(&Context::Template) && is_backtick_fence_line(line) {
            return;
        }
        let bytes = line.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            at += self.step(&bytes[at..]);
        }
        self.end_line();
    }

    /// Consumes the token at the start of `rest` and returns its length in bytes.
    fn step(&mut self, rest: &[u8]) -> usize {
        match self.stack.last().copied() {
            None | Some(Context::Substitution(_)) => self.step_code(rest),
            Some(Context::Template) => self.step_template(rest),
            Some(Context::Quote(quote)) => self.step_quote(quote, rest),
            Some(Context::BlockComment) => self.step_block_comment(rest),
        }
    }

    fn step_code(&mut self, rest: &[u8]) -> usize {
        match rest {
            // A line comment runs to the end of the line and hides everything in it.
            [b'/', b'/', ..] => rest.len(),
            [b'/', b'*', ..] => self.enter(Context::BlockComment, 2),
            [quote @ (b'\'' | b'"'), ..] => self.enter(Context::Quote(*quote), 1),
            [b'`', ..] => self.enter(Context::Template, 1),
            [b'{', ..] => self.open_brace(),
            [b'}', ..] => self.close_brace(),
            _ => 1,
        }
    }

    fn step_template(&mut self, rest: &[u8]) -> usize {
        match rest {
            [b'\\', ..] => skip_escape(rest),
            [b'`', ..] => self.leave(1),
            [b'$', b'{', ..] => self.enter(Context::Substitution(0), 2),
            _ => 1,
        }
    }

    fn step_quote(&mut self, quote: u8, rest: &[u8]) -> usize {
        match rest {
            [b'\\', ..] => skip_escape(rest),
            [byte, ..] if *byte == quote => self.leave(1),
            _ => 1,
        }
    }

    fn step_block_comment(&mut self, rest: &[u8]) -> usize {
        match rest {
            [b'*', b'/', ..] => self.leave(2),
            _ => 1,
        }
    }

    fn enter(&mut self, context: Context, len: usize) -> usize {
        self.stack.push(context);
        len
    }

    fn leave(&mut self, len: usize) -> usize {
        self.stack.pop();
        len
    }

    fn open_brace(&mut self) -> usize {
        if let Some(Context::Substitution(depth)) = self.stack.last_mut() {
            *depth += 1;
        }
        1
    }

    /// Closes a brace, ending the substitution when it matches the `${`.
    fn close_brace(&mut self) -> usize {
        match self.stack.last_mut() {
            Some(Context::Substitution(0)) => self.leave(1),
            Some(Context::Substitution(depth)) => {
                *depth -= 1;
                1
            }
            _ => 1,
        }
    }

    /// Drops a quoted string left open at the end of a line.
    ///
    /// An unterminated string usually comes from a regex literal such as `/["']/`, which this
    /// lexer does not recognise, and must not hide the rest of the block. Strings continued with a
    /// trailing backslash are dropped too. This loses nothing, because a fence line has no
    /// backslash and so cannot lie inside such a string in valid JavaScript.
    fn end_line(&mut self) {
        if matches!(self.stack.last(), Some(Context::Quote(_))) {
            self.stack.pop();
        }
    }
}

/// Skips a backslash and the byte it escapes.
fn skip_escape(rest: &[u8]) -> usize {
    rest.len().min(2)
}

fn is_backtick_fence_line(line: &str) -> bool {
    split_fence(line).is_some_and(|(fence, rest)| fence.marker == b'`' && is_blank(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model reply, given as lines, and the program expected from it.
    struct Case {
        name: &'static str,
        reply: &'static [&'static str],
        /// Expected code lines and label; `None` when the reply is a direct answer.
        expected: Option<(&'static [&'static str], Option<&'static str>)>,
    }

    fn check(cases: &[Case], line_ending: &str) {
        for case in cases {
            let reply = case.reply.join(line_ending);
            let expected = case.expected.map(|(code, label)| ExtractedProgram {
                code: code.join("\n"),
                label: label.map(str::to_owned),
            });
            assert_eq!(extract_program(&reply), expected, "case: {}", case.name);
        }
    }

    #[test]
    fn takes_labelled_javascript_blocks() {
        check(
            &[
                Case {
                    name: "prose before and after a js block",
                    reply: &[
                        "I'll look up the weather in both cities at once.",
                        "",
                        "```js",
                        "const [a, b] = await Promise.all([",
                        "  tools.weather.current({ city: \"Paris\" }),",
                        "  tools.weather.current({ city: \"Oslo\" }),",
                        "]);",
                        "return { paris: a.temp, oslo: b.temp };",
                        "```",
                        "",
                        "This returns both temperatures.",
                    ],
                    expected: Some((
                        &[
                            "const [a, b] = await Promise.all([",
                            "  tools.weather.current({ city: \"Paris\" }),",
                            "  tools.weather.current({ city: \"Oslo\" }),",
                            "]);",
                            "return { paris: a.temp, oslo: b.temp };",
                        ],
                        Some("js"),
                    )),
                },
                Case {
                    name: "javascript label",
                    reply: &[
                        "```javascript",
                        "return await tools.github.list_issues({ repo: \"a/b\" });",
                        "```",
                    ],
                    expected: Some((
                        &["return await tools.github.list_issues({ repo: \"a/b\" });"],
                        Some("javascript"),
                    )),
                },
                Case {
                    name: "mjs and ecmascript labels count as javascript",
                    reply: &[
                        "```mjs",
                        "return 1;",
                        "```",
                        "```ecmascript",
                        "return 2;",
                        "```",
                    ],
                    expected: Some((&["return 1;"], Some("mjs"))),
                },
                Case {
                    name: "ecmascript label",
                    reply: &["```ecmascript", "return 2;", "```"],
                    expected: Some((&["return 2;"], Some("ecmascript"))),
                },
                Case {
                    name: "tilde fence",
                    reply: &[
                        "Running:",
                        "~~~js",
                        "return await tools.fs.list({});",
                        "~~~",
                    ],
                    expected: Some((&["return await tools.fs.list({});"], Some("js"))),
                },
                Case {
                    name: "upper-case label kept as written",
                    reply: &["```JS", "return tools.time.now();", "```"],
                    expected: Some((&["return tools.time.now();"], Some("JS"))),
                },
                Case {
                    name: "info string with extra words",
                    reply: &[
                        "```js title=\"lookup.js\"",
                        "return tools.db.count({});",
                        "```",
                    ],
                    expected: Some((&["return tools.db.count({});"], Some("js"))),
                },
                Case {
                    name: "trailing spaces after both fences",
                    reply: &["```js   ", "return 42;", "```   \t"],
                    expected: Some((&["return 42;"], Some("js"))),
                },
                Case {
                    name: "indented fences inside a list item lose the fence indentation",
                    reply: &[
                        "1. Fetch the page:",
                        "   ```js",
                        "   const page = await tools.web.fetch({ url: \"https://example.com\" });",
                        "   if (page.ok) {",
                        "     return page.text;",
                        "   }",
                        "   ```",
                        "2. Summarise it.",
                    ],
                    expected: Some((
                        &[
                            "const page = await tools.web.fetch({ url: \"https://example.com\" });",
                            "if (page.ok) {",
                            "  return page.text;",
                            "}",
                        ],
                        Some("js"),
                    )),
                },
                Case {
                    name: "python block before js block",
                    reply: &[
                        "In Python this would be:",
                        "```python",
                        "print(client.search('rust'))",
                        "```",
                        "Here is the program to run:",
                        "```js",
                        "return await tools.search.query({ q: \"rust\" });",
                        "```",
                    ],
                    expected: Some((
                        &["return await tools.search.query({ q: \"rust\" });"],
                        Some("js"),
                    )),
                },
                Case {
                    name: "first of two js blocks",
                    reply: &[
                        "```js",
                        "return await tools.a.first();",
                        "```",
                        "Or alternatively:",
                        "```js",
                        "return await tools.a.second();",
                        "```",
                    ],
                    expected: Some((&["return await tools.a.first();"], Some("js"))),
                },
                Case {
                    name: "empty js block skipped for a later one",
                    reply: &["```js", "", "```", "```js", "return 1;", "```"],
                    expected: Some((&["return 1;"], Some("js"))),
                },
                Case {
                    name: "blank lines around the code trimmed, inner ones kept",
                    reply: &[
                        "```js",
                        "",
                        "  ",
                        "const a = 1;",
                        "",
                        "return a;",
                        "",
                        "```",
                    ],
                    expected: Some((&["const a = 1;", "", "return a;"], Some("js"))),
                },
                Case {
                    name: "unclosed js block runs to the end of the reply",
                    reply: &[
                        "```js",
                        "const rows = await tools.db.query({ sql: \"select 1\" });",
                        "return rows.len",
                    ],
                    expected: Some((
                        &[
                            "const rows = await tools.db.query({ sql: \"select 1\" });",
                            "return rows.len",
                        ],
                        Some("js"),
                    )),
                },
                Case {
                    name: "longer closing fence closes",
                    reply: &["```js", "return 1;", "`````", "after"],
                    expected: Some((&["return 1;"], Some("js"))),
                },
            ],
            "\n",
        );
    }

    #[test]
    fn fence_lines_inside_javascript_do_not_close() {
        check(
            &[
                Case {
                    name: "four-backtick fence with a ``` line in a template literal",
                    reply: &[
                        "````js",
                        "const snippet = `",
                        "```",
                        "`;",
                        "return snippet;",
                        "````",
                        "Done.",
                    ],
                    expected: Some((
                        &["const snippet = `", "```", "`;", "return snippet;"],
                        Some("js"),
                    )),
                },
                Case {
                    name: "template literal with a ``` line in a three-backtick fence",
                    reply: &[
                        "```js",
                        "const data = await tools.db.query({ sql: \"select 1\" });",
                        "return `Result:",
                        "```",
                        "${JSON.stringify(data)}",
                        "```",
                        "`;",
                        "```",
                        "The result comes back as Markdown.",
                    ],
                    expected: Some((
                        &[
                            "const data = await tools.db.query({ sql: \"select 1\" });",
                            "return `Result:",
                            "```",
                            "${JSON.stringify(data)}",
                            "```",
                            "`;",
                        ],
                        Some("js"),
                    )),
                },
                Case {
                    name: "substitution with a nested template and braces",
                    reply: &[
                        "```js",
                        "const items = await tools.todo.list({});",
                        "return `Items: ${items.map((i) => { return `- ${i.title}`; }).join(`",
                        "`)}",
                        "```",
                        "`;",
                        "```",
                    ],
                    expected: Some((
                        &[
                            "const items = await tools.todo.list({});",
                            "return `Items: ${items.map((i) => { return `- ${i.title}`; }).join(`",
                            "`)}",
                            "```",
                            "`;",
                        ],
                        Some("js"),
                    )),
                },
                Case {
                    name: "escaped backtick does not end the template",
                    reply: &[
                        "```js",
                        "const s = `a \\` b",
                        "```",
                        "`;",
                        "return s;",
                        "```",
                    ],
                    expected: Some((
                        &["const s = `a \\` b", "```", "`;", "return s;"],
                        Some("js"),
                    )),
                },
                Case {
                    name: "string literal containing ``` does not open a template",
                    reply: &[
                        "```js",
                        "const fence = \"```\";",
                        "const other = '`';",
                        "return fence + other;",
                        "```",
                        "That joins the strings.",
                    ],
                    expected: Some((
                        &[
                            "const fence = \"```\";",
                            "const other = '`';",
                            "return fence + other;",
                        ],
                        Some("js"),
                    )),
                },
                Case {
                    name: "url in a string is not a line comment",
                    reply: &[
                        "```js",
                        "const t = \"http://a\" + `",
                        "```",
                        "`;",
                        "return t;",
                        "```",
                    ],
                    expected: Some((
                        &["const t = \"http://a\" + `", "```", "`;", "return t;"],
                        Some("js"),
                    )),
                },
                Case {
                    name: "block comment containing a ``` line",
                    reply: &[
                        "```js",
                        "/* The tool returns Markdown such as",
                        "```",
                        "*/",
                        "return await tools.docs.render({ id: 3 });",
                        "```",
                    ],
                    expected: Some((
                        &[
                            "/* The tool returns Markdown such as",
                            "```",
                            "*/",
                            "return await tools.docs.render({ id: 3 });",
                        ],
                        Some("js"),
                    )),
                },
                Case {
                    name: "line comment with a backtick does not open a template",
                    reply: &[
                        "```js",
                        "// wrap the output in ` marks",
                        "return 1;",
                        "```",
                        "A longer version:",
                        "```js",
                        "return 2;",
                        "```",
                    ],
                    expected: Some((&["// wrap the output in ` marks", "return 1;"], Some("js"))),
                },
                Case {
                    name: "regex with a quote does not hide the closing fence",
                    reply: &[
                        "```js",
                        "return s.replace(/[\"']/g, \"\");",
                        "```",
                        "Or with a loop:",
                        "```js",
                        "return 2;",
                        "```",
                    ],
                    expected: Some((&["return s.replace(/[\"']/g, \"\");"], Some("js"))),
                },
                Case {
                    name: "regex with a backtick falls back to the first closing fence",
                    reply: &["```js", "return s.replace(/`/g, \"\");", "```", "Prose."],
                    expected: Some((&["return s.replace(/`/g, \"\");"], Some("js"))),
                },
                Case {
                    name: "tilde fence ignores a backtick fence line",
                    reply: &["~~~js", "const md = `", "```", "`;", "return md;", "~~~"],
                    expected: Some((&["const md = `", "```", "`;", "return md;"], Some("js"))),
                },
            ],
            "\n",
        );
    }

    #[test]
    fn takes_sole_bare_block_calling_tools() {
        check(
            &[
                Case {
                    name: "bare block with a tool call",
                    reply: &[
                        "Let me check.",
                        "```",
                        "const me = await tools.github.get_user({});",
                        "me.login",
                        "```",
                    ],
                    expected: Some((
                        &["const me = await tools.github.get_user({});", "me.login"],
                        None,
                    )),
                },
                Case {
                    name: "bare block with return",
                    reply: &["```", "return 6 * 7;", "```"],
                    expected: Some((&["return 6 * 7;"], None)),
                },
            ],
            "\n",
        );
    }

    #[test]
    fn finds_no_program_in_direct_answers() {
        check(
            &[
                Case {
                    name: "prose mentioning tools.x.y() inline",
                    reply: &["You could call tools.weather.current() yourself; it is 18 °C."],
                    expected: None,
                },
                Case {
                    name: "inline code spans",
                    reply: &[
                        "Use `tools.a.b()` for that.",
                        "```tools.a.b()``` works too.",
                    ],
                    expected: None,
                },
                Case {
                    name: "triple-backtick js span at the start of a line",
                    reply: &[
                        "```js const x = 1;``` declares it inline.",
                        "No program is needed here.",
                    ],
                    expected: None,
                },
                Case {
                    name: "code without fences",
                    reply: &["const x = await tools.a.b();", "return x;"],
                    expected: None,
                },
                Case {
                    name: "bare block with a shell command",
                    reply: &["Install it with:", "```", "cargo install xiaomaolv", "```"],
                    expected: None,
                },
                Case {
                    name: "bare block with a package name ending in tools",
                    reply: &["```", "pip install mytools.cli", "```"],
                    expected: None,
                },
                Case {
                    name: "bare block where return is part of a longer word",
                    reply: &["```", "The call returns 42.", "```"],
                    expected: None,
                },
                Case {
                    name: "bare block plus json block",
                    reply: &[
                        "```",
                        "return await tools.a.b();",
                        "```",
                        "```json",
                        "{\"ok\": true}",
                        "```",
                    ],
                    expected: None,
                },
                Case {
                    name: "two bare blocks",
                    reply: &["```", "return 1;", "```", "```", "return 2;", "```"],
                    expected: None,
                },
                Case {
                    name: "json block only",
                    reply: &[
                        "The result:",
                        "```json",
                        "{\"tools\": \"x\", \"return\": 1}",
                        "```",
                    ],
                    expected: None,
                },
                Case {
                    name: "other languages",
                    reply: &[
                        "```python",
                        "return tools.a.b()",
                        "```",
                        "```ts",
                        "return await tools.a.b();",
                        "```",
                        "```text",
                        "return",
                        "```",
                    ],
                    expected: None,
                },
                Case {
                    name: "js example shown inside a markdown block",
                    reply: &[
                        "````markdown",
                        "```js",
                        "return await tools.a.b();",
                        "```",
                        "````",
                    ],
                    expected: None,
                },
                Case {
                    name: "unclosed bare block",
                    reply: &["```", "return await tools.a.b();"],
                    expected: None,
                },
                Case {
                    name: "unclosed python block",
                    reply: &["```python", "return tools.a.b()"],
                    expected: None,
                },
                Case {
                    name: "empty js block",
                    reply: &["```js", "```", "Nothing to run."],
                    expected: None,
                },
                Case {
                    name: "js block with only whitespace",
                    reply: &["```js", "   ", "\t", "```"],
                    expected: None,
                },
                Case {
                    name: "fence indented four spaces is an indented code block",
                    reply: &["Example:", "    ```js", "    return 1;", "    ```"],
                    expected: None,
                },
                Case {
                    name: "two backticks are not a fence",
                    reply: &["``js", "return 1;", "``"],
                    expected: None,
                },
            ],
            "\n",
        );
    }

    #[test]
    fn accepts_crlf_line_endings() {
        check(
            &[Case {
                name: "crlf reply",
                reply: &[
                    "Sure.",
                    "```js",
                    "const a = await tools.x.y();",
                    "return a;",
                    "```",
                    "Bye.",
                ],
                expected: Some((&["const a = await tools.x.y();", "return a;"], Some("js"))),
            }],
            "\r\n",
        );
    }

    #[test]
    fn lexer_returns_to_top_level_after_nested_template() {
        let mut lexer = Lexer::default();
        lexer.feed_line("const s = `a ${ { x: `b ${c}` }.x } d`;");
        assert!(lexer.is_top_level(), "stack: {:?}", lexer.stack);
    }

    #[test]
    fn lexer_matches_object_braces_inside_substitution() {
        let mut lexer = Lexer::default();
        lexer.feed_line("const s = `${ {a: {b: 1}}.a");
        assert_eq!(lexer.stack, [Context::Template, Context::Substitution(0)]);
    }

    #[test]
    fn lexer_drops_string_left_open_at_line_end() {
        let mut lexer = Lexer::default();
        lexer.feed_line("const cells = row.split(/\"/);");
        assert!(lexer.is_top_level(), "stack: {:?}", lexer.stack);
    }

    #[test]
    fn lexer_stays_in_block_comment_across_lines() {
        let mut lexer = Lexer::default();
        lexer.feed_line("/* start");
        assert_eq!(lexer.stack, [Context::BlockComment]);
        lexer.feed_line("end */ const x = 1;");
        assert!(lexer.is_top_level(), "stack: {:?}", lexer.stack);
    }
}
