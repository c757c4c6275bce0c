//! Where each field of a lab file stands in its text.
//!
//! serde_yaml reports positions only for its own parse errors; the semantic checks in
//! [`super::validate`] run on parsed values and need a line and column for every field they
//! complain about. This walks the YAML event stream once and records, for every path such as
//! `guests.vm-a.address` or `vxlans[0].group`, where its key and its value start.

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the lab file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, counting from 1.
    pub line: usize,
    /// Column, counting from 1.
    pub column: usize,
}

impl Position {
    fn from_marker(m: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Position {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// Positions of every key and value in one YAML document, by field path.
#[derive(Debug, Default)]
pub struct SourceMap {
    keys: HashMap<String, Position>,
    values: HashMap<String, Position>,
    /// Mapping keys that appear twice in the same mapping, with the second position.
    pub duplicate_keys: Vec<(String, Position)>,
}

impl SourceMap {
    /// Indexes `text`. Text that is not valid YAML gives an empty map: serde_yaml reports
    /// that error with its own position.
    pub fn index(text: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return SourceMap::default();
        }
        walker.map
    }

    /// Where the value at `path` starts, or where its key does, or the nearest parent's.
    pub fn locate(&self, path: &str) -> Position {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.values.get(&p).or_else(|| self.keys.get(&p)) {
                return *pos;
            }
            match parent(&p) {
                Some(up) => p = up,
                None => return Position { line: 1, column: 1 },
            }
        }
    }

    /// Where the key of `path` stands (for errors about a name itself).
    pub fn locate_key(&self, path: &str) -> Position {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.locate(path))
    }
}

fn parent(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(path[..cut].to_string())
}

/// Joins a mapping key onto a path.
pub fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Joins a sequence index onto a path.
pub fn join_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        seen: HashSet<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    map: SourceMap,
}

impl Walker {
    /// Path of the node that starts now, or `None` when it is a mapping key.
    fn place_node(&mut self, text: Option<&str>, pos: Position) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = join_index(path, *next);
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key, seen }) => match key.take() {
                Some(k) => Some(join_key(path, &k)),
                None => {
                    // A key. Complex (non-scalar) keys are not part of the lab format.
                    let k = text.unwrap_or_default().to_string();
                    // A block mapping starts where its first key does.
                    self.map.values.entry(path.clone()).or_insert(pos);
                    let full = join_key(path, &k);
                    if !seen.insert(k.clone()) {
                        self.map.duplicate_keys.push((full.clone(), pos));
                    }
                    self.map.keys.entry(full).or_insert(pos);
                    *key = Some(k);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Position::from_marker(mark);
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(path) = self.place_node(Some(&text), pos) {
                    self.map.values.entry(path).or_insert(pos);
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.place_node(None, pos) {
                    self.map.values.entry(path).or_insert(pos);
                }
            }
            Event::MappingStart(..) => {
                let path = self.place_node(None, pos).unwrap_or_default();
                self.stack.push(Frame::Map {
                    path,
                    key: None,
                    seen: HashSet::new(),
                });
            }
            Event::SequenceStart(..) => {
                let path = self.place_node(None, pos).unwrap_or_default();
                self.map.values.entry(path.clone()).or_insert(pos);
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name: two\nguests:\n  vm-a: { address: 192.168.10.2 }\n  vm-b:\n    address: 192.168.10.3\nvxlans:\n  - name: vxlan0\n    group: 239.1.1.1\n";

    #[test]
    fn positions_of_nested_fields() {
        let m = SourceMap::index(TEXT);
        assert_eq!(m.locate("name"), Position { line: 1, column: 7 });
        assert_eq!(
            m.locate("guests.vm-a.address"),
            Position {
                line: 3,
                column: 20
            }
        );
        assert_eq!(m.locate_key("guests.vm-b"), Position { line: 4, column: 3 });
        assert_eq!(
            m.locate("guests.vm-b.address"),
            Position {
                line: 5,
                column: 14
            }
        );
        assert_eq!(
            m.locate("vxlans[0].group"),
            Position {
                line: 8,
                column: 12
            }
        );
    }

    #[test]
    fn a_missing_field_points_at_its_parent() {
        let m = SourceMap::index(TEXT);
        assert_eq!(m.locate("vxlans[0].vni"), m.locate("vxlans[0]"));
    }

    #[test]
    fn duplicate_keys_are_reported_where_they_repeat() {
        let m = SourceMap::index("guests:\n  vm-a: {}\n  vm-a: {}\n");
        assert_eq!(
            m.duplicate_keys,
            vec![("guests.vm-a".to_string(), Position { line: 3, column: 3 })]
        );
    }
}
