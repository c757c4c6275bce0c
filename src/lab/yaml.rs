//! The lab file's YAML as a tree of nodes, each with its position and, for scalars, the text
//! exactly as written, so that every field can be judged on its own and every problem reported
//! in one run.
//!
//! Loading is bounded before anything else looks at the text: nesting deeper than
//! [`MAX_DEPTH`] stops the walk at the first node too deep (the parsers' cost grows with the
//! square of the depth: 40,000 nested `[` took 8 s), and aliases may not expand the document
//! past [`MAX_NODES`] nodes. Syntax errors are libyaml's (serde_yaml's parser), pointed at the
//! line whose indentation is wrong when that is what libyaml stumbled on.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::Position;

/// Deepest nesting of mappings and sequences accepted. The lab format needs 4 (`vxlans`, one
/// vxlan, its `addresses`, a value); 16 leaves room for odd but valid layouts.
pub const MAX_DEPTH: usize = 16;
/// Most nodes a document may hold once aliases are expanded: a 250-guest lab has about 3,000.
pub const MAX_NODES: usize = 100_000;

/// One node of the document.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub at: Position,
    /// What it holds.
    pub value: Value,
}

/// The content of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar with its text as written (without quotes); `plain` when it was not quoted.
    Scalar {
        /// The text.
        text: String,
        /// Unquoted (a plain scalar can be a number, a boolean or null).
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order, duplicates included.
    Map(Vec<(Key, Node)>),
}

/// A mapping key: a scalar's text and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The key's text.
    pub text: String,
    /// Where the key stands.
    pub at: Position,
}

impl Node {
    /// The scalar text, when this is a scalar.
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Whether this is YAML's null: nothing, `~` or `null` unquoted.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The entries, when this is a mapping.
    pub fn entries(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value of key `key`, when this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?
            .iter()
            .find(|(k, _)| k.text == key)
            .map(|(_, v)| v)
    }

    /// What kind of node this is, for messages.
    pub fn kind(&self) -> String {
        match &self.value {
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
            Value::Scalar { .. } if self.is_null() => "nothing".into(),
            Value::Scalar { text, plain: true } => format!("`{text}`"),
            Value::Scalar { text, plain: false } => format!("the quoted text \"{text}\""),
        }
    }

    fn count(&self) -> usize {
        1 + match &self.value {
            Value::Scalar { .. } => 0,
            Value::Seq(items) => items.iter().map(Node::count).sum(),
            Value::Map(m) => m.iter().map(|(_, v)| 1 + v.count()).sum(),
        }
    }
}

/// Why a document could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// Where.
    pub at: Position,
    /// What, in words.
    pub message: String,
}

fn position(m: &Marker) -> Position {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Position {
        line: m.line(),
        column: m.col() + 1,
    }
}

enum Frame {
    Seq {
        at: Position,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        at: Position,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        key: Option<Key>,
    },
}

/// Builds the tree from parser events, within the limits.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    root: Option<Node>,
}

impl Builder {
    fn limit(at: Position, message: String) -> LoadError {
        LoadError { at, message }
    }

    /// Puts a finished node where it belongs.
    fn place(&mut self, node: Node, anchor: usize) -> Result<(), LoadError> {
        self.nodes += node.count();
        if self.nodes > MAX_NODES {
            return Err(Self::limit(
                node.at,
                format!("the document grows past {MAX_NODES} nodes (through aliases?); a lab is far smaller"),
            ));
        }
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries, key, at, ..
            }) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => match node.value {
                    Value::Scalar { text, .. } => {
                        // yaml-rust2 marks a block mapping at its first `:`; it starts where its
                        // first key does.
                        if (node.at.line, node.at.column) < (at.line, at.column) {
                            *at = node.at;
                        }
                        *key = Some(Key { text, at: node.at })
                    }
                    _ => {
                        return Err(Self::limit(
                            node.at,
                            "a key must be a plain name, not a list or a mapping".into(),
                        ))
                    }
                },
            },
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame, at: Position) -> Result<(), LoadError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(Self::limit(
                at,
                format!("nested deeper than {MAX_DEPTH} levels; a lab file needs 4"),
            ));
        }
        self.stack.push(frame);
        Ok(())
    }

    fn event(&mut self, ev: Event, at: Position) -> Result<(), LoadError> {
        match ev {
            Event::Scalar(text, style, anchor, _) => {
                let plain = style == TScalarStyle::Plain;
                self.place(
                    Node {
                        at,
                        value: Value::Scalar { text, plain },
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                let mut node = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| Self::limit(at, "an alias to an unknown anchor".into()))?;
                node.at = at;
                self.place(node, 0)
            }
            Event::SequenceStart(anchor, _) => self.open(
                Frame::Seq {
                    at,
                    anchor,
                    items: Vec::new(),
                },
                at,
            ),
            Event::MappingStart(anchor, _) => self.open(
                Frame::Map {
                    at,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                },
                at,
            ),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq { at, anchor, items }) => (
                        Node {
                            at,
                            value: Value::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        at,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            at,
                            value: Value::Map(entries),
                        },
                        anchor,
                    ),
                    None => return Ok(()),
                };
                self.place(node, anchor)
            }
            _ => Ok(()),
        }
    }
}

/// Nesting the pre-scan lets through to the parsers. Its count is an estimate that can
/// only be too high, so it allows twice [`MAX_DEPTH`]; the exact check runs on the events.
const PRESCAN_LIMIT: usize = 2 * MAX_DEPTH;

fn too_deep(at: Position) -> LoadError {
    LoadError {
        at,
        message: format!("nested deeper than {MAX_DEPTH} levels; a lab file needs 4"),
    }
}

/// Estimates, in one pass over the characters and before any parser sees them, how deeply the
/// text nests, and refuses it past [`PRESCAN_LIMIT`] at the first character too deep.
///
/// Both parsers take time growing with the square of the nesting (yaml-rust2 looks ahead over
/// every open `[`), so they must never see deep text. The estimate counts indentation levels,
/// `- ` and `? ` indicators and open flow collections, and skips quoted scalars, comments and
/// block scalars. It errs on the high side: a `[` that may start a collection counts, and a
/// quote counts as one only where YAML starts a quoted scalar. The error points where the
/// estimate first passed [`MAX_DEPTH`].
pub fn prescan(text: &str) -> Result<(), LoadError> {
    let mut first_deep: Option<Position> = None;
    let mut deeper = |depth: usize, line: usize, column: usize| {
        let at = Position { line, column };
        if depth > MAX_DEPTH && first_deep.is_none() {
            first_deep = Some(at);
        }
        if depth > PRESCAN_LIMIT {
            return Err(too_deep(first_deep.unwrap_or(at)));
        }
        Ok(())
    };
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<char> = None;
    // The indentation of the line that opened a block scalar (`|` or `>`).
    let mut block_scalar: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let n = line.len() - line.trim_start_matches(' ').len();
        let content = &line[n..];
        if let Some(parent) = block_scalar {
            if content.is_empty() || n > parent {
                continue;
            }
            block_scalar = None;
        }
        let structural = quote.is_none() && flow == 0;
        if structural && !content.is_empty() && !content.starts_with('#') {
            while indents.last().is_some_and(|&top| top > n) {
                indents.pop();
            }
            if indents.last() != Some(&n) {
                indents.push(n);
            }
        }
        let mut block = indents.len();
        let mut at_node_start = structural;
        let mut after_space = true;
        let mut chars = content.chars().enumerate().peekable();
        while let Some((k, c)) = chars.next() {
            let column = n + k + 1;
            let next = chars.peek().map(|&(_, c)| c);
            match quote {
                Some('"') => {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        quote = None;
                    }
                    continue;
                }
                Some(_) => {
                    if c == '\'' {
                        if next == Some('\'') {
                            chars.next();
                        } else {
                            quote = None;
                        }
                    }
                    continue;
                }
                None => {}
            }
            let space_after = next.is_none_or(char::is_whitespace);
            match c {
                '#' if after_space => break,
                ' ' | '\t' => {
                    after_space = true;
                    continue;
                }
                '-' | '?' if at_node_start && flow == 0 && space_after => {
                    block += 1;
                    deeper(block + flow, i + 1, column)?;
                }
                '"' | '\'' if at_node_start => quote = Some(c),
                '|' | '>' if at_node_start && flow == 0 => {
                    block_scalar = Some(n);
                    break;
                }
                '[' | '{' if flow > 0 || at_node_start || after_space => {
                    flow += 1;
                    deeper(block + flow, i + 1, column)?;
                    at_node_start = true;
                    after_space = false;
                    continue;
                }
                ']' | '}' if flow > 0 => flow -= 1,
                ',' if flow > 0 => {
                    at_node_start = true;
                    after_space = false;
                    continue;
                }
                ':' if space_after || flow > 0 => {
                    at_node_start = true;
                    after_space = false;
                    continue;
                }
                _ => {}
            }
            at_node_start = matches!(c, '-' | '?') && at_node_start;
            after_space = false;
        }
    }
    Ok(())
}

/// Loads the one document in `text`, within [`MAX_DEPTH`] and [`MAX_NODES`].
pub fn load(text: &str) -> Result<Node, LoadError> {
    prescan(text)?;
    let mut parser = Parser::new_from_str(text);
    let mut b = Builder::default();
    let mut documents = 0;
    let syntax = loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break None,
            Ok((Event::DocumentStart, m)) => {
                documents += 1;
                if documents > 1 {
                    return Err(LoadError {
                        at: position(&m),
                        message: "a second YAML document; a lab file holds one".into(),
                    });
                }
            }
            Ok((ev, m)) => b.event(ev, position(&m))?,
            Err(e) => break Some(e),
        }
    };
    // libyaml is the syntax authority (its messages are the ones YAML users know); it runs only
    // now that the depth and size are known to be small.
    libyaml_syntax(text)?;
    if let Some(e) = syntax {
        return Err(LoadError {
            at: position(e.marker()),
            message: e.info().to_string(),
        });
    }
    b.root.ok_or(LoadError {
        at: Position { line: 1, column: 1 },
        message: "the file holds no lab (it is empty or only comments)".into(),
    })
}

/// libyaml's verdict on the syntax of `text`.
fn libyaml_syntax(text: &str) -> Result<(), LoadError> {
    let Err(e) = serde_yaml::from_str::<serde::de::IgnoredAny>(text) else {
        return Ok(());
    };
    let at = e
        .location()
        .map_or(Position { line: 1, column: 1 }, |l| Position {
            line: l.line(),
            column: l.column(),
        });
    let what = e.to_string();
    let what = what
        .split(" at line ")
        .next()
        .unwrap_or_default()
        .to_string();
    Err(indentation(text, at, &what).unwrap_or(LoadError { at, message: what }))
}

/// libyaml's complaints that, in a lab file, come from a line indented wrongly.
const INDENTATION_SIGNS: [&str; 4] = [
    "did not find expected key",
    "did not find expected '-' indicator",
    "expected <block end>",
    "mapping values are not allowed in this context",
];

/// When libyaml's complaint comes from indentation, points at the line whose indentation is
/// wrong: the first line, up to the one libyaml stopped at, indented to a column that no
/// enclosing line of its block starts at.
fn indentation(text: &str, at: Position, what: &str) -> Option<LoadError> {
    if !INDENTATION_SIGNS.iter().any(|s| what.contains(s)) {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    // Columns at which a block starts on the lines before: a line's own indentation, and
    // after each `- ` the column of what follows it; and the columns of those `- `.
    let mut open: Vec<usize> = Vec::new();
    let mut dashes: Vec<usize> = Vec::new();
    for (i, line) in lines.iter().enumerate().take(at.line.min(lines.len())) {
        if !content(line) {
            continue;
        }
        let n = indent(line);
        let item = line[n..].starts_with("- ") || line[n..] == *"-";
        let wrong = if i == 0 {
            None
        } else if !item && dashes.last() == Some(&n) && !open.contains(&n) {
            Some(format!(
                "this line lines up with the `- ` items of the list above but is not one; \
                 indent it like the fields of the item it belongs to (YAML: {what})"
            ))
        } else if !open.contains(&n)
            && !dashes.contains(&n)
            && open.last().is_some_and(|&top| n < top)
        {
            Some(format!(
                "this line is indented by {n}, which lines up with no block above it; \
                 indent it like the lines of the mapping or list it belongs to (YAML: {what})"
            ))
        } else {
            None
        };
        if let Some(message) = wrong {
            return Some(line_above_at_fault(&lines, i, what).unwrap_or(LoadError {
                at: Position {
                    line: i + 1,
                    column: n + 1,
                },
                message,
            }));
        }
        open.retain(|&c| c < n);
        dashes.retain(|&c| c < n);
        if !item {
            open.push(n);
        }
        let mut rest = &line[n..];
        let mut col = n;
        while let Some(after) = rest.strip_prefix("- ") {
            dashes.push(col);
            let skip = after.len() - after.trim_start_matches(' ').len();
            col += 2 + skip;
            open.push(col);
            rest = &after[skip..];
        }
    }
    // Nothing lines up wrongly before the line libyaml stopped at: the fault is that line,
    // or the one above it, with a value already and so no room for a block under it.
    let stop = at.line.checked_sub(1).filter(|&i| i < lines.len())?;
    if let Some(e) = line_above_at_fault(&lines, stop, what) {
        return Some(e);
    }
    let here = lines[stop];
    let j = (0..stop).rev().find(|&j| content(lines[j]))?;
    let (n, above) = (indent(here), lines[j]);
    let m = indent(above);
    let key_col = m + if above[m..].starts_with("- ") { 2 } else { 0 };
    if n > key_col && has_value(above) && content(here) {
        return Some(LoadError {
            at: Position {
                line: stop + 1,
                column: n + 1,
            },
            message: format!(
                "this line is indented by {n}, deeper than the line above, which has its value \
                 already; indent it by {key_col}, like that line's key, or give the line above \
                 no value to open a block under it (YAML: {what})"
            ),
        });
    }
    None
}

/// How many spaces a line starts with.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Whether a line holds YAML (not blank, not only a comment).
fn content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// Whether a line is `key: value` (or a `- value` item) with the value on it, so that no
/// block can open under it.
fn has_value(line: &str) -> bool {
    let t = line.trim();
    let t = t.strip_prefix("- ").unwrap_or(t);
    !t.ends_with(':') && t != "-"
}

/// When line `i` (0-based) is where the indentation went wrong, whether the line above it is
/// the one at fault: the first line of a block, indented unlike the rest of that block (deeper
/// than line `i`, which the block's opener leaves room for), or a line as far left as the
/// `key:` opening the block above it, which then holds nothing while line `i` is deeper.
fn line_above_at_fault(lines: &[&str], i: usize, what: &str) -> Option<LoadError> {
    let before = |i: usize| (0..i).rev().find(|&j| content(lines[j]));
    let j = before(i)?;
    let k = before(j)?;
    let (n, nj, nk) = (indent(lines[i]), indent(lines[j]), indent(lines[k]));
    let opener = lines[k].trim_end().ends_with(':');
    let at = |line: usize, column: usize, message: String| LoadError {
        at: Position {
            line: line + 1,
            column: column + 1,
        },
        message,
    };
    if opener && nk < n && n < nj {
        return Some(at(
            j,
            nj,
            format!(
                "this line is indented by {nj}, and the next line of its block by {n}: \
                 indent the lines of one block alike (YAML: {what})"
            ),
        ));
    }
    if opener && nj == nk && n > nj && has_value(lines[j]) {
        let key = lines[k].trim().trim_end_matches(':');
        return Some(at(
            j,
            nj,
            format!(
                "this line is indented like `{key}:` above it, which then holds nothing, while \
                 the next line is indented by {n}: indent it by {n}, under `{key}:` (YAML: \
                 {what})"
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(n: &Node) -> &str {
        n.text().unwrap()
    }

    #[test]
    fn scalars_keep_their_text_and_quoting() {
        let doc = load("guests:\n  007: { address: \"10.0.0.1\" }\nvni: 0x2a\n").unwrap();
        let guests = doc.get("guests").unwrap().entries().unwrap();
        assert_eq!(guests[0].0.text, "007");
        assert_eq!(guests[0].0.at, Position { line: 2, column: 3 });
        let address = guests[0].1.get("address").unwrap();
        assert_eq!(scalar(address), "10.0.0.1");
        assert!(matches!(address.value, Value::Scalar { plain: false, .. }));
        assert_eq!(scalar(doc.get("vni").unwrap()), "0x2a");
    }

    #[test]
    fn deep_nesting_stops_at_the_first_node_too_deep_and_quickly() {
        let start = std::time::Instant::now();
        let flow = format!(
            "name: x\nextra: {}{}\n",
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        let err = load(&flow).unwrap_err();
        // The root mapping, then `[` number 16 (column 8 is the first).
        assert_eq!(
            err.at,
            Position {
                line: 2,
                column: 23
            },
            "{}",
            err.message
        );
        assert!(
            err.message.contains("nested deeper than 16"),
            "{}",
            err.message
        );
        let blocks = format!("name: x\nextra:\n{}1\n", "- ".repeat(100_000));
        let err = load(&blocks).unwrap_err();
        assert_eq!(
            err.at,
            Position {
                line: 3,
                column: 31
            },
            "{}",
            err.message
        );
        let indented: String = (0..2_000)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert!(load(&indented)
            .unwrap_err()
            .message
            .contains("nested deeper"));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        // Brackets in quotes, comments and block scalars are text.
        let text = format!(
            "a: '{}'\nb: \"{}\" # {}\nc: |\n  {}\nd: [[1], {{e: 2}}]\n",
            "[".repeat(50),
            "{".repeat(50),
            "[".repeat(50),
            "[".repeat(50)
        );
        assert!(load(&text).is_ok());
        // A quote inside a plain scalar hides nothing from the count.
        let sneaky = format!("a: [x '{}]\n", "[".repeat(100));
        assert!(prescan(&sneaky).is_err());
    }

    #[test]
    fn aliases_may_not_blow_the_document_up() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            text += &format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n");
        }
        let err = load(&text).unwrap_err();
        assert!(err.message.contains("grows past"), "{}", err.message);
        let small = load("a: &x { b: 1 }\nc: *x\n").unwrap();
        assert_eq!(small.get("c").unwrap().get("b").map(scalar), Some("1"));
    }

    #[test]
    fn a_wrongly_indented_key_is_pointed_at_not_the_field_it_hides() {
        let text = "name: bad\nvxlans:\n  - name: vxlan0\n   vni: 42\n    group: 239.1.1.1\n";
        let err = load(text).unwrap_err();
        assert_eq!(err.at, Position { line: 4, column: 4 }, "{}", err.message);
        assert!(err.message.contains("indented by 3"), "{}", err.message);
    }

    #[test]
    fn empty_and_multi_document_files_are_refused() {
        assert!(load("# nothing\n")
            .unwrap_err()
            .message
            .contains("holds no lab"));
        let err = load("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.at.line, 2);
    }
}
