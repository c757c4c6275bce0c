//! The lab file as written: every field read from the loaded document with the type the lab
//! format gives it, keeping values in the form the user typed so [`super::validate`] can judge
//! them and point at them.
//!
//! Reading goes on past a bad field: an unknown field, a missing one or a value of the wrong
//! type each becomes a [`Problem`] and the field takes a placeholder; the placeholder's own
//! complaints are dropped later (see [`Reader::unreadable`]), so the user sees each mistake once
//! and all of them in one run.

use indexmap::IndexMap;

use super::source::{join_index, join_key};
use super::yaml::{Node, Value};
use super::Problem;

/// A whole lab file.
#[derive(Debug, Default)]
pub struct RawLab {
    pub name: String,
    pub driver: String,
    pub underlay: RawUnderlay,
    pub guests: IndexMap<String, RawGuest>,
    pub vxlans: Vec<RawVxlan>,
    pub checks: Option<Vec<RawCheck>>,
    pub libvirt: Option<RawLibvirt>,
    pub iproute2: Option<RawIproute2>,
    pub workshop: Option<RawWorkshop>,
}

/// `workshop:` settings: where copies take their underlays from.
#[derive(Debug, Default)]
pub struct RawWorkshop {
    pub pool: Option<String>,
}

/// `underlay:`
#[derive(Debug, Default)]
pub struct RawUnderlay {
    pub bridge: String,
    pub subnet: String,
    pub gateway: Option<String>,
    pub interface: Option<String>,
}

/// One entry of `guests:`
#[derive(Debug, Default)]
pub struct RawGuest {
    pub address: String,
    pub memory: Option<u64>,
    pub vcpus: Option<u64>,
}

/// One entry of `vxlans:`
#[derive(Debug, Default)]
pub struct RawVxlan {
    pub name: String,
    pub vni: i64,
    pub group: Option<String>,
    /// `auto`: every other member, by head-end replication.
    pub remotes: Option<Node>,
    pub dev: Option<String>,
    pub port: Option<i64>,
    pub learning: Option<bool>,
    /// `learned` (default) or `static`: vxlab writes every peer's MAC with its VTEP.
    pub fdb: Option<String>,
    pub mtu: Option<i64>,
    pub addresses: IndexMap<String, String>,
    pub macs: Option<IndexMap<String, String>>,
}

/// One entry of `checks:`
#[derive(Debug)]
pub struct RawCheck {
    /// `all`, or `{ from, to, expect }`.
    pub ping: Node,
}

/// `libvirt:` settings, used by the libvirt driver.
#[derive(Debug, Default)]
pub struct RawLibvirt {
    pub uri: Option<String>,
    pub image: Option<String>,
    pub accel: Option<String>,
    pub memory: Option<u64>,
    pub vcpus: Option<u64>,
}

/// `iproute2:` settings: when and from what to build iproute2.
#[derive(Debug, Default)]
pub struct RawIproute2 {
    pub build: Option<String>,
    pub source: Option<String>,
    pub reference: Option<String>,
    pub cflags: Option<String>,
}

/// A value read from a scalar.
pub(crate) trait Scalar: Sized {
    /// What the lab format calls this type, for messages.
    const WHAT: &'static str;
    /// The value of `text`; `plain` when it was not quoted.
    fn from_scalar(text: &str, plain: bool) -> Option<Self>;
}

impl Scalar for String {
    const WHAT: &'static str = "text";
    fn from_scalar(text: &str, _plain: bool) -> Option<Self> {
        // As serde_yaml reads a string: any scalar, as written (`007` stays `007`).
        Some(text.to_string())
    }
}

/// A YAML 1.2 integer: decimal with an optional sign, or `0x`/`0o` (unquoted only).
fn integer(text: &str, plain: bool) -> Option<i128> {
    if !plain {
        return None;
    }
    let (neg, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(h) = digits.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = digits.strip_prefix("0o") {
        (8, o)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Longer than any i128: certainly out of range, and parsing it would fail anyway.
    let v = i128::from_str_radix(digits, radix).unwrap_or(i128::MAX);
    Some(if neg { -v } else { v })
}

impl Scalar for i64 {
    const WHAT: &'static str = "a whole number";
    fn from_scalar(text: &str, plain: bool) -> Option<Self> {
        integer(text, plain).and_then(|v| i64::try_from(v).ok())
    }
}

impl Scalar for u64 {
    const WHAT: &'static str = "a whole number, 0 or more";
    fn from_scalar(text: &str, plain: bool) -> Option<Self> {
        integer(text, plain).and_then(|v| u64::try_from(v).ok())
    }
}

impl Scalar for bool {
    const WHAT: &'static str = "true or false";
    fn from_scalar(text: &str, plain: bool) -> Option<Self> {
        match (plain, text) {
            (true, "true" | "True" | "TRUE") => Some(true),
            (true, "false" | "False" | "FALSE") => Some(false),
            _ => None,
        }
    }
}

/// Reads fields from the document, collecting problems instead of stopping at the first. The
/// host inventory (`crate::hosts::inventory`) is read with it too.
pub struct Reader {
    /// Problems found so far.
    pub problems: Vec<Problem>,
    /// Paths whose value could not be read: the placeholder standing in for it would only
    /// draw more complaints about the same mistake, so validation's problems at these paths
    /// are dropped.
    pub unreadable: Vec<String>,
}

impl Reader {
    pub(crate) fn problem(&mut self, at: super::Position, field: &str, message: String) {
        self.problems.push(Problem {
            position: at,
            field: field.to_string(),
            message,
        });
    }

    pub(crate) fn wrong(&mut self, path: &str, node: &Node, wanted: &str) {
        self.problem(
            node.at,
            path,
            format!("expected {wanted}, found {}", node.kind()),
        );
        self.unreadable.push(path.to_string());
    }

    /// The fields of the mapping `node` at `path`: reports keys not in `known` and `required`
    /// keys that are missing.
    pub(crate) fn fields<'n>(
        &mut self,
        path: &str,
        node: &'n Node,
        known: &[&str],
        required: &[&str],
    ) -> Option<&'n [(super::yaml::Key, Node)]> {
        let Some(entries) = node.entries() else {
            self.wrong(path, node, "a mapping of fields");
            return None;
        };
        for (k, _) in entries {
            if !known.contains(&k.text.as_str()) {
                let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                self.problem(
                    k.at,
                    path,
                    format!(
                        "unknown field `{}`, expected one of {}",
                        k.text,
                        expected.join(", ")
                    ),
                );
            }
        }
        for r in required {
            if !entries.iter().any(|(k, _)| k.text == *r) {
                self.problem(node.at, path, format!("missing field `{r}`"));
                self.unreadable.push(join_key(path, r));
            }
        }
        Some(entries)
    }

    /// A scalar field; absent or null is `None`.
    pub(crate) fn opt<T: Scalar>(&mut self, path: &str, node: &Node, key: &str) -> Option<T> {
        let value = node.get(key).filter(|v| !v.is_null())?;
        self.scalar(&join_key(path, key), value)
    }

    /// A required scalar field; a placeholder when it is missing or unreadable.
    pub(crate) fn req<T: Scalar + Default>(&mut self, path: &str, node: &Node, key: &str) -> T {
        let full = join_key(path, key);
        match node.get(key) {
            // `fields` reported it missing.
            None => T::default(),
            Some(v) => self.scalar(&full, v).unwrap_or_default(),
        }
    }

    pub(crate) fn scalar<T: Scalar>(&mut self, path: &str, node: &Node) -> Option<T> {
        let parsed = match &node.value {
            Value::Scalar { text, plain } => T::from_scalar(text, *plain),
            _ => None,
        };
        if parsed.is_none() {
            self.wrong(path, node, T::WHAT);
        }
        parsed
    }

    /// A mapping from names to scalars.
    pub(crate) fn names<T: Scalar>(&mut self, path: &str, node: &Node) -> IndexMap<String, T> {
        let mut out = IndexMap::new();
        let Some(entries) = node.entries() else {
            self.wrong(path, node, "a mapping of names to values");
            return out;
        };
        for (k, v) in entries {
            let full = join_key(path, &k.text);
            if let Some(x) = self.scalar(&full, v) {
                // The first of duplicate keys counts; duplicates are reported when loading.
                out.entry(k.text.clone()).or_insert(x);
            }
        }
        out
    }

    /// The items of the list at `path`.
    pub(crate) fn items<'n>(&mut self, path: &str, node: &'n Node) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            _ => {
                self.wrong(path, node, "a list (items start with `- `)");
                &[]
            }
        }
    }
}

/// Reads a whole lab file from its document.
pub fn read(doc: &Node) -> (RawLab, Reader) {
    let mut r = Reader {
        problems: Vec::new(),
        unreadable: Vec::new(),
    };
    let mut lab = RawLab::default();
    let known = [
        "name", "driver", "underlay", "guests", "vxlans", "checks", "libvirt", "iproute2",
        "workshop",
    ];
    let required = ["name", "driver", "underlay", "guests", "vxlans"];
    if r.fields("", doc, &known, &required).is_none() {
        r.unreadable.push(String::new());
        return (lab, r);
    }
    lab.name = r.req("", doc, "name");
    lab.driver = r.req("", doc, "driver");
    if let Some(u) = doc.get("underlay") {
        lab.underlay = underlay(&mut r, u);
    }
    if let Some(g) = doc.get("guests") {
        lab.guests = guests(&mut r, g);
    }
    if let Some(v) = doc.get("vxlans") {
        let items = r.items("vxlans", v);
        lab.vxlans = items
            .iter()
            .enumerate()
            .map(|(i, x)| vxlan(&mut r, &join_index("vxlans", i), x))
            .collect();
    }
    if let Some(c) = doc.get("checks").filter(|c| !c.is_null()) {
        let items = r.items("checks", c);
        let mut checks = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = join_index("checks", i);
            if r.fields(&path, item, &["ping"], &["ping"]).is_some() {
                if let Some(ping) = item.get("ping") {
                    checks.push(RawCheck { ping: ping.clone() });
                }
            }
        }
        lab.checks = Some(checks);
    }
    if let Some(l) = doc.get("libvirt").filter(|l| !l.is_null()) {
        lab.libvirt = Some(libvirt(&mut r, l));
    }
    if let Some(i) = doc.get("iproute2").filter(|i| !i.is_null()) {
        lab.iproute2 = Some(iproute2(&mut r, i));
    }
    if let Some(w) = doc.get("workshop").filter(|w| !w.is_null()) {
        lab.workshop = Some(workshop(&mut r, w));
    }
    (lab, r)
}

fn underlay(r: &mut Reader, node: &Node) -> RawUnderlay {
    let path = "underlay";
    let known = ["bridge", "subnet", "gateway", "interface"];
    if r.fields(path, node, &known, &["bridge", "subnet"])
        .is_none()
    {
        return RawUnderlay::default();
    }
    RawUnderlay {
        bridge: r.req(path, node, "bridge"),
        subnet: r.req(path, node, "subnet"),
        gateway: r.opt(path, node, "gateway"),
        interface: r.opt(path, node, "interface"),
    }
}

fn guests(r: &mut Reader, node: &Node) -> IndexMap<String, RawGuest> {
    let mut out = IndexMap::new();
    let Some(entries) = node.entries() else {
        r.wrong("guests", node, "a mapping of guest names to their settings");
        return out;
    };
    for (k, g) in entries {
        let path = join_key("guests", &k.text);
        let known = ["address", "memory", "vcpus"];
        let guest = match r.fields(&path, g, &known, &["address"]) {
            None => RawGuest::default(),
            Some(_) => RawGuest {
                address: r.req(&path, g, "address"),
                memory: r.opt(&path, g, "memory"),
                vcpus: r.opt(&path, g, "vcpus"),
            },
        };
        out.entry(k.text.clone()).or_insert(guest);
    }
    out
}

fn vxlan(r: &mut Reader, path: &str, node: &Node) -> RawVxlan {
    let known = [
        "name",
        "vni",
        "group",
        "remotes",
        "dev",
        "port",
        "learning",
        "fdb",
        "mtu",
        "addresses",
        "macs",
    ];
    if r.fields(path, node, &known, &["name", "vni", "addresses"])
        .is_none()
    {
        return RawVxlan::default();
    }
    let addresses = node
        .get("addresses")
        .map(|a| r.names(&join_key(path, "addresses"), a))
        .unwrap_or_default();
    let macs = node
        .get("macs")
        .filter(|m| !m.is_null())
        .map(|m| r.names(&join_key(path, "macs"), m));
    RawVxlan {
        name: r.req(path, node, "name"),
        vni: r.req(path, node, "vni"),
        group: r.opt(path, node, "group"),
        remotes: node.get("remotes").filter(|v| !v.is_null()).cloned(),
        dev: r.opt(path, node, "dev"),
        port: r.opt(path, node, "port"),
        learning: r.opt(path, node, "learning"),
        fdb: r.opt(path, node, "fdb"),
        mtu: r.opt(path, node, "mtu"),
        addresses,
        macs,
    }
}

fn libvirt(r: &mut Reader, node: &Node) -> RawLibvirt {
    let path = "libvirt";
    let known = ["uri", "image", "accel", "memory", "vcpus"];
    if r.fields(path, node, &known, &[]).is_none() {
        return RawLibvirt::default();
    }
    RawLibvirt {
        uri: r.opt(path, node, "uri"),
        image: r.opt(path, node, "image"),
        accel: r.opt(path, node, "accel"),
        memory: r.opt(path, node, "memory"),
        vcpus: r.opt(path, node, "vcpus"),
    }
}

fn iproute2(r: &mut Reader, node: &Node) -> RawIproute2 {
    let path = "iproute2";
    let known = ["build", "source", "ref", "cflags"];
    if r.fields(path, node, &known, &[]).is_none() {
        return RawIproute2::default();
    }
    RawIproute2 {
        build: r.opt(path, node, "build"),
        source: r.opt(path, node, "source"),
        reference: r.opt(path, node, "ref"),
        cflags: r.opt(path, node, "cflags"),
    }
}

fn workshop(r: &mut Reader, node: &Node) -> RawWorkshop {
    let path = "workshop";
    if r.fields(path, node, &["pool"], &[]).is_none() {
        return RawWorkshop::default();
    }
    RawWorkshop {
        pool: r.opt(path, node, "pool"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_yaml_and_quoted_numbers_are_text() {
        assert_eq!(i64::from_scalar("42", true), Some(42));
        assert_eq!(i64::from_scalar("0x2a", true), Some(42));
        assert_eq!(i64::from_scalar("-0o17", true), Some(-15));
        assert_eq!(i64::from_scalar("42", false), None);
        assert_eq!(i64::from_scalar("1e3", true), None);
        assert_eq!(i64::from_scalar(&"9".repeat(400), true), None);
        assert_eq!(u64::from_scalar("-1", true), None);
        assert_eq!(bool::from_scalar("True", true), Some(true));
        assert_eq!(bool::from_scalar("yes", true), None);
        assert_eq!(String::from_scalar("007", true).as_deref(), Some("007"));
    }

    #[test]
    fn every_unreadable_field_is_reported_in_one_pass() {
        let doc = super::super::yaml::load(
            "name: x\ndriver: netns\nunderlay: { bridge: b }\nguests:\n  a: { address: 1, colour: red }\nvxlans:\n  - name: v\n    vni: \"42\"\n    addresses: []\n",
        )
        .unwrap();
        let (_, r) = read(&doc);
        let mut problems = r.problems;
        problems.sort_by_key(|p| (p.position.line, p.position.column));
        let got: Vec<String> = problems
            .iter()
            .map(|p| {
                format!(
                    "{}:{}: {}: {}",
                    p.position.line, p.position.column, p.field, p.message
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                "3:11: underlay: missing field `subnet`",
                "5:20: guests.a: unknown field `colour`, expected one of `address`, `memory`, `vcpus`",
                "8:10: vxlans[0].vni: expected a whole number, found the quoted text \"42\"",
                "9:16: vxlans[0].addresses: expected a mapping of names to values, found a list",
            ]
        );
    }
}
