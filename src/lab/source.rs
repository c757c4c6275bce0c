//! Where each field of a lab file stands in its text.
//!
//! The checks in [`super::validate`] run on parsed values and need a line and column for every
//! field they complain about. This walks the loaded document ([`super::yaml::Node`]) once and
//! records, for every path such as `guests.vm-a.address` or `vxlans[0].group`, where its key and
//! its value start.

use std::collections::{HashMap, HashSet};

use super::yaml::{self, Node, Value};

/// A 1-based line and column in the lab file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, counting from 1.
    pub line: usize,
    /// Column, counting from 1.
    pub column: usize,
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
    /// Indexes `text`. Text that cannot be loaded gives an empty map: loading reports that
    /// error with its own position.
    pub fn index(text: &str) -> Self {
        yaml::load(text)
            .map(|doc| Self::of(&doc))
            .unwrap_or_default()
    }

    /// Indexes a loaded document.
    pub fn of(doc: &Node) -> Self {
        let mut map = SourceMap::default();
        map.walk("", doc);
        map
    }

    fn walk(&mut self, path: &str, node: &Node) {
        self.values.entry(path.to_string()).or_insert(node.at);
        match &node.value {
            Value::Scalar { .. } => {}
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.walk(&join_index(path, i), item);
                }
            }
            Value::Map(entries) => {
                let mut seen = HashSet::new();
                for (key, value) in entries {
                    let full = join_key(path, &key.text);
                    if !seen.insert(key.text.as_str()) {
                        self.duplicate_keys.push((full, key.at));
                        continue;
                    }
                    self.keys.insert(full.clone(), key.at);
                    self.walk(&full, value);
                }
            }
        }
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
