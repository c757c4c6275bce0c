//! The host inventory: the hypervisors a class may use, kept apart from the lab file so one lab
//! file serves a laptop and a room. Read with the lab file's reader, so every problem is
//! reported at once as `file:line:column: field: message`.
//!
//! ```yaml
//! hosts:
//!   - name: h1
//!     uri: qemu+ssh://root@10.0.0.11/system
//!   - name: h2
//!     uri: qemu+ssh://root@10.0.0.12/system?keyfile=/root/.ssh/lab
//!     weight: 2               # optional; default: from the host's free memory and CPUs
//! ```
//!
//! Every libvirt call goes to `uri`. The guests' SSH and the few commands libvirt has no call
//! for go over the host's own sshd: for `qemu+ssh` URIs the same login (user, host, port,
//! `keyfile`, `known_hosts`, `no_verify`); other transports name it with `ssh: user@host[:port]`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lab::file::Reader;
use crate::lab::source::{join_index, SourceMap};
use crate::lab::{read, Position, Problem};

/// Longest host name: it is printed in tables and recorded with every resource.
pub const MAX_HOST_NAME: usize = 16;
/// Largest weight a host may be given.
pub const MAX_WEIGHT: u64 = 1000;

/// Where and how vxlab reaches one hypervisor: what a running copy records of its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSpec {
    /// The host's name in the inventory.
    pub name: String,
    /// Its libvirt URI.
    pub uri: String,
    /// Its sshd as `user@host[:port]`, when the URI does not say it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
}

/// One host of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// How to reach it.
    pub spec: HostSpec,
    /// Its share of the class relative to the others' (see [`super::placement`]).
    pub weight: Option<u64>,
    /// Where it is written.
    pub at: Position,
}

/// A validated inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The file it was read from.
    pub file: PathBuf,
    /// The hosts, in file order.
    pub hosts: Vec<HostEntry>,
}

/// Where and how to log in on a hypervisor's sshd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshLogin {
    /// User name.
    pub user: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The private key to log in with; without one, the agent and then `~/.ssh/id_*`.
    pub keyfile: Option<PathBuf>,
    /// Where the host's key must be listed; `~/.ssh/known_hosts` when absent.
    pub known_hosts: Option<PathBuf>,
    /// Accept any host key (libvirt's `no_verify=1`).
    pub no_verify: bool,
}

impl fmt::Display for SshLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ssh {}@{}:{}", self.user, self.host, self.port)
    }
}

/// An inventory that cannot be used, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InventoryError {
    /// The file as the user named it.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problems: Vec<Problem>,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::lab::write_problems(f, &self.file, "host inventory", &self.problems)
    }
}

/// Reading an inventory failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read the host inventory {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid inventory.
    #[error(transparent)]
    Invalid(#[from] InventoryError),
}

/// Reads and validates the inventory at `path` (a regular file of at most 1 MiB, UTF-8).
pub fn load(path: &Path) -> Result<Inventory, LoadError> {
    let text = read::lab_text(path).map_err(|e| match e {
        read::ReadError::Io(source) => LoadError::Read {
            path: path.to_path_buf(),
            source,
        },
        other => LoadError::Invalid(InventoryError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                position: other.position().unwrap_or(Position { line: 1, column: 1 }),
                field: String::new(),
                message: other.to_string(),
            }],
        }),
    })?;
    Ok(parse(&text, path)?)
}

/// Validates inventory text; `file` only names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<Inventory, InventoryError> {
    let fail = |problems: Vec<Problem>| InventoryError {
        file: file.to_path_buf(),
        problems: crate::lab::sorted(problems),
    };
    let (doc, map) = crate::lab::document(text, "appears twice").map_err(fail)?;
    let mut r = Reader {
        problems: Vec::new(),
        unreadable: Vec::new(),
    };
    let mut hosts = Vec::new();
    if r.fields("", &doc, &["hosts"], &["hosts"]).is_some() {
        if let Some(list) = doc.get("hosts") {
            let items = r.items("hosts", list);
            if items.is_empty() && r.problems.is_empty() {
                r.problem(list.at, "hosts", "lists no host; name at least one".into());
            }
            for (i, item) in items.iter().enumerate() {
                let path = join_index("hosts", i);
                if r.fields(
                    &path,
                    item,
                    &["name", "uri", "weight", "ssh"],
                    &["name", "uri"],
                )
                .is_none()
                {
                    continue;
                }
                let name: String = r.req(&path, item, "name");
                let uri: String = r.req(&path, item, "uri");
                let weight: Option<u64> = r.opt(&path, item, "weight");
                let ssh: Option<String> = r.opt(&path, item, "ssh");
                hosts.push((
                    path,
                    HostEntry {
                        spec: HostSpec { name, uri, ssh },
                        weight,
                        at: item.at,
                    },
                ));
            }
        }
    }
    let mut problems = r.problems;
    problems.extend(check(&hosts, &map, &r.unreadable));
    if problems.is_empty() {
        Ok(Inventory {
            file: file.to_path_buf(),
            hosts: hosts.into_iter().map(|(_, h)| h).collect(),
        })
    } else {
        Err(fail(problems))
    }
}

/// The semantic checks: names, URIs, logins, weights, nothing twice.
fn check(hosts: &[(String, HostEntry)], map: &SourceMap, unreadable: &[String]) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut say = |path: &str, field: &str, message: String| {
        let full = format!("{path}.{field}");
        if !unreadable.contains(&full) {
            out.push(Problem {
                position: map.locate(&full),
                field: full,
                message,
            });
        }
    };
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    let mut uris: BTreeMap<&str, &str> = BTreeMap::new();
    for (path, h) in hosts {
        let s = &h.spec;
        if let Err(why) = valid_name(&s.name) {
            say(path, "name", why);
        } else if let Some(first) = names.insert(&s.name, path) {
            say(
                path,
                "name",
                format!("`{}` is already the name of {first}", s.name),
            );
        }
        match parse_uri(&s.uri) {
            Err(why) => say(path, "uri", why),
            Ok(_) => {
                if let Some(first) = uris.insert(&s.uri, path) {
                    say(
                        path,
                        "uri",
                        format!("{first} has the same URI: list each host once"),
                    );
                }
                if let Err(why) = s.login() {
                    let field = if s.ssh.is_some() { "ssh" } else { "uri" };
                    say(path, field, why);
                }
            }
        }
        if let Some(w) = h.weight {
            if !(1..=MAX_WEIGHT).contains(&w) {
                say(
                    path,
                    "weight",
                    format!("must be 1 to {MAX_WEIGHT}, not {w}"),
                );
            }
        }
    }
    out
}

/// A host name: `[a-z0-9-]`, starting with a letter or digit, up to [`MAX_HOST_NAME`].
pub fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_HOST_NAME
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a host name: use 1 to {MAX_HOST_NAME} lowercase letters, digits \
             and dashes"
        ))
    }
}

/// The URI parameters an inventory may give: the login's and libvirt's transport choices.
pub const ALLOWED_PARAMS: [&str; 6] = [
    "keyfile",
    "known_hosts",
    "no_verify",
    "no_tty",
    "proxy",
    "pkipath",
];

/// A libvirt remote URI, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUri {
    /// The transport after `qemu+`: `ssh`, `libssh2`, `libssh`, `tls` or `tcp`.
    pub transport: String,
    /// The user, when given.
    pub user: Option<String>,
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// The port, when given.
    pub port: Option<u16>,
    /// The query's parameters.
    pub params: Vec<(String, String)>,
}

impl RemoteUri {
    /// Parameter `key`, when the query has it.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the transport is SSH, whose login vxlab uses too.
    pub fn is_ssh(&self) -> bool {
        matches!(self.transport.as_str(), "ssh" | "libssh2" | "libssh")
    }
}

/// Whether `host` can be a host name or address: letters, digits, dots, dashes, and the
/// colons of an IPv6 address.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && !host.starts_with('-')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
}

/// Splits `[user@]host[:port]`, the host possibly an IPv6 address in brackets.
fn authority(text: &str) -> Result<(Option<String>, String, Option<u16>), String> {
    let (user, rest) = match text.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, text),
    };
    if let Some(u) = &user {
        let ok = !u.is_empty()
            && !u.starts_with('-')
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !ok {
            return Err(format!("`{u}` is not a user name"));
        }
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{rest}`: an IPv6 address needs its closing `]`"))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if !valid_host(&host) {
        return Err(format!("`{host}` is not a host name or address"));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{p}` is not a port"))
        })
        .transpose()?;
    Ok((user, host, port))
}

/// Takes a remote libvirt URI apart, refusing what vxlab cannot use: a local URI, a session
/// daemon (it cannot make bridges), a driver other than QEMU.
pub fn parse_uri(uri: &str) -> Result<RemoteUri, String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("`{uri}` is not a URI like qemu+ssh://root@host/system"))?;
    let transport = match scheme.strip_prefix("qemu+") {
        Some(t @ ("ssh" | "libssh2" | "libssh" | "tls" | "tcp")) => t.to_string(),
        _ if scheme == "qemu" => {
            return Err(format!(
                "`{uri}` is this machine's own libvirt; list it by its address, like \
                 qemu+ssh://root@ADDRESS/system"
            ))
        }
        _ => {
            return Err(format!(
                "`{scheme}` is not a remote QEMU transport: use qemu+ssh (or qemu+libssh2, \
                 qemu+libssh, qemu+tls, qemu+tcp)"
            ))
        }
    };
    let (auth, path_query) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    if path != "/system" {
        return Err(format!(
            "the path must be /system (libvirt's system daemon; a session daemon cannot make \
             the lab's bridge), not `{path}`"
        ));
    }
    let (user, host, port) = authority(auth)?;
    let params = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let parsed = RemoteUri {
        transport,
        user,
        host,
        port,
        params,
    };
    // Only parameters vxlab understands: libvirt runs others (`command=`, `netcat=`,
    // `socket=`) as programs or paths, here or on the host.
    for (k, v) in &parsed.params {
        if !ALLOWED_PARAMS.contains(&k.as_str()) {
            return Err(format!(
                "`{k}=` is not a parameter vxlab passes on; use only {}",
                ALLOWED_PARAMS.join(", ")
            ));
        }
        let plain = v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b','));
        if !plain {
            return Err(format!(
                "`{k}={v}`: only letters, digits and / . _ - , may be used"
            ));
        }
    }
    for key in ["keyfile", "known_hosts"] {
        if let Some(p) = parsed.param(key) {
            if !p.starts_with('/') {
                return Err(format!(
                    "`{key}={p}` must be an absolute path (libvirt would read it relative to \
                     wherever vxlab runs)"
                ));
            }
        }
    }
    if let Some(v) = parsed.param("no_verify") {
        if !matches!(v, "0" | "1") {
            return Err(format!("`no_verify={v}`: use 0 or 1"));
        }
    }
    Ok(parsed)
}

impl HostSpec {
    /// How vxlab logs in on this host's sshd: from `ssh:` when given, else from a `qemu+ssh`
    /// URI, with the URI's `keyfile`, `known_hosts` and `no_verify` either way.
    pub fn login(&self) -> Result<SshLogin, String> {
        let uri = parse_uri(&self.uri)?;
        let (user, host, port) = match &self.ssh {
            Some(s) => {
                authority(s).map_err(|e| format!("`{s}`: {e}; write it as user@host[:port]"))?
            }
            None if uri.is_ssh() => (uri.user.clone(), uri.host.clone(), uri.port),
            None => {
                return Err(format!(
                    "vxlab reaches the guests through the host's sshd, which a qemu+{} URI does \
                     not name: add `ssh: user@host[:port]`",
                    uri.transport
                ))
            }
        };
        Ok(SshLogin {
            user: user.unwrap_or_else(|| "root".into()),
            host,
            port: port.unwrap_or(22),
            keyfile: uri.param("keyfile").map(PathBuf::from),
            known_hosts: uri.param("known_hosts").map(PathBuf::from),
            no_verify: uri.param("no_verify") == Some("1"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let e = parse(text, Path::new("hosts.yaml")).unwrap_err();
        e.problems
            .iter()
            .map(|p| {
                let field = if p.field.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", p.field)
                };
                format!(
                    "{}:{}: {field}{}",
                    p.position.line, p.position.column, p.message
                )
            })
            .collect()
    }

    #[test]
    fn the_issues_inventory_reads_with_its_logins() {
        let inv = parse(
            "hosts:\n  - name: h1\n    uri: qemu+ssh://root@10.0.0.11/system\n  - name: h2\n    \
             uri: qemu+ssh://root@10.0.0.12:2222/system?keyfile=/root/.ssh/lab&no_verify=1\n    \
             weight: 2\n  - name: h3\n    uri: qemu+tls://h3.example/system\n    ssh: admin@[fd00::3]:22\n",
            Path::new("hosts.yaml"),
        )
        .unwrap();
        assert_eq!(inv.hosts.len(), 3);
        assert_eq!(inv.hosts[1].weight, Some(2));
        assert_eq!(inv.hosts[1].at, Position { line: 4, column: 5 });
        let h2 = inv.hosts[1].spec.login().unwrap();
        assert_eq!(
            (h2.user.as_str(), h2.host.as_str(), h2.port, h2.no_verify),
            ("root", "10.0.0.12", 2222, true)
        );
        assert_eq!(h2.keyfile, Some(PathBuf::from("/root/.ssh/lab")));
        let h3 = inv.hosts[2].spec.login().unwrap();
        assert_eq!((h3.user.as_str(), h3.host.as_str()), ("admin", "fd00::3"));
        assert_eq!(h2.to_string(), "ssh root@10.0.0.12:2222");
    }

    #[test]
    fn every_problem_is_reported_at_its_line_and_column() {
        let text = "hosts:\n  - name: H1\n    uri: qemu:///system\n  - name: h2\n    uri: qemu+ssh://root@h2/session\n    weight: 0\n  - name: h2\n    uri: qemu+tls://h3/system\n    colour: red\n  - name: h4\n    uri: qemu+ssh://root@h4/system?keyfile=lab\n  - name: h5\n    uri: qemu+ssh://root@h5/system\n  - name: h6\n    uri: qemu+ssh://root@h5/system\n";
        assert_eq!(
            errors(text),
            vec![
                "2:11: hosts[0].name: `H1` is not a host name: use 1 to 16 lowercase letters, digits and dashes",
                "3:10: hosts[0].uri: `qemu:///system` is this machine's own libvirt; list it by its address, like qemu+ssh://root@ADDRESS/system",
                "5:10: hosts[1].uri: the path must be /system (libvirt's system daemon; a session daemon cannot make the lab's bridge), not `/session`",
                "6:13: hosts[1].weight: must be 1 to 1000, not 0",
                "7:11: hosts[2].name: `h2` is already the name of hosts[1]",
                "8:10: hosts[2].uri: vxlab reaches the guests through the host's sshd, which a qemu+tls URI does not name: add `ssh: user@host[:port]`",
                "9:5: hosts[2]: unknown field `colour`, expected one of `name`, `uri`, `weight`, `ssh`",
                "11:10: hosts[3].uri: `keyfile=lab` must be an absolute path (libvirt would read it relative to wherever vxlab runs)",
                "15:10: hosts[5].uri: hosts[4] has the same URI: list each host once",
            ]
        );
    }

    #[test]
    fn an_empty_or_misshapen_inventory_says_what_it_wants() {
        assert_eq!(
            errors("hosts: []\n"),
            vec!["1:8: hosts: lists no host; name at least one"]
        );
        assert_eq!(
            errors("hosts:\n  name: h1\n"),
            vec!["2:3: hosts: expected a list (items start with `- `), found a mapping"]
        );
        assert_eq!(
            errors("- h1\n"),
            vec!["1:1: expected a mapping of fields, found a list"]
        );
        assert_eq!(
            errors("hosts:\n  - name: h1\n    uri: qemu+ssh://root@h1/system\n    weight: two\n"),
            vec!["4:13: hosts[0].weight: expected a whole number, 0 or more, found `two`"]
        );
    }

    #[test]
    fn uris_that_could_smuggle_anything_are_refused() {
        for bad in [
            "qemu+ssh://-oProxyCommand=x/system",
            "qemu+ssh://root@h;rm/system",
            "qemu+ssh://ro ot@h/system",
            "qemu+ssh://root@h:99999/system",
            "qemu+ssh://root@h/system?no_verify=yes",
            "xen+ssh://root@h/system",
            "qemu+ssh://root@h/system?command=/tmp/evil",
            "qemu+ssh://root@h/system?netcat=nc;reboot",
            "qemu+ssh://root@h/system?keyfile=/k%20x",
            "qemu+ssh://root@h/system?keyfile=/k$(id)",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
        let u = parse_uri("qemu+ssh://[fd00::1]:2222/system").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user),
            ("fd00::1", Some(2222), None)
        );
    }
}
