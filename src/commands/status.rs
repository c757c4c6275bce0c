//! `vxlab status`: the running labs, the workshop copies with the lab they copy, and whether
//! each passes its checks now (or, without root, when it was last checked).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::{engine, exit, is_root, resolve, HostError};
use crate::driver::{libvirt, netns};
use crate::health::{self, Health};
use crate::lab::Lab;
use crate::parallel::parallel_map;
use crate::plan;
use crate::state::StateDir;

/// One running lab's row.
fn row(state: &StateDir, name: &str, root: bool) -> (Value, Vec<String>) {
    let last = health::load(&state.lab_dir(name));
    let last_json = last.as_ref().map(last_check_json);
    let lab: Lab = match resolve(Some(Path::new(name))) {
        Ok((lab, _)) => lab,
        Err(e) => {
            let row = json!({"lab": name, "health": format!("unreadable: {e:#}"), "last_check": last_json});
            return (row, Vec::new());
        }
    };
    let p = plan::plan(&lab);
    let instances = p.guests.iter().map(|g| g.instance.clone()).collect();
    // A real, quick check (pings only once all else holds) when vxlab may read the guests;
    // else the last one's result with its age, never a guess.
    // A lab another vxlab is changing now (an `up` still making it) is not checked half-made.
    let busy = state.changing(name);
    let (health, ok, checked_now) = if let Some(pid) = busy {
        (
            format!(
                "being changed by {}: not checked now",
                crate::host::process::described(pid)
            ),
            None,
            false,
        )
    } else if root {
        let mut unread = Vec::new();
        match engine(&lab, None).and_then(|e| Ok(e.quick_check(&p, &mut unread)?)) {
            Ok(v) => {
                keep_as_last_check(state, name, &v);
                // What could not be read was not checked: said beside the health.
                let summary = match unread.as_slice() {
                    [] => Health::of(&v).summary(),
                    notes => format!(
                        "{} (not checked: {})",
                        Health::of(&v).summary(),
                        notes.join("; ")
                    ),
                };
                (summary, Some(v.ok()), true)
            }
            Err(e) => (format!("cannot check: {e:#}"), Some(false), false),
        }
    } else {
        match &last {
            Some(h) => (
                format!("{} (last check, {})", h.summary(), h.age()),
                Some(h.failed == 0),
                false,
            ),
            None => ("unknown: never checked".into(), None, false),
        }
    };
    // Read again: the check just made is the last one now.
    let last_json = health::load(&state.lab_dir(name))
        .as_ref()
        .map(last_check_json)
        .or(last_json);
    let row = json!({
        "lab": name,
        "instance_of": lab.instance.as_ref().map(|i| &i.base),
        "instance": lab.instance.as_ref().map(|i| &i.name),
        "driver": lab.driver.to_string(),
        // The host of a class the lab was placed on; null for this machine.
        "host": super::hosts::recorded_host(state, name).map(|h| h.name),
        "guests": lab.guests.len(),
        "bridge": lab.underlay.bridge,
        "underlay": lab.underlay.subnet.to_string(),
        "health": health,
        "ok": ok,
        "checked_now": checked_now,
        "busy": busy,
        "last_check": last_json,
    });
    (row, instances)
}

/// A lab's last check as `status --json` gives it.
fn last_check_json(h: &Health) -> Value {
    json!({"at": h.at, "age": h.age(), "passed": h.passed, "failed": h.failed, "causes": h.causes})
}

/// Keeps a quick check's verdict as the lab's last check, so that whoever reads it next (a
/// user who may not check, the class server) does not see an older, better one. Under the
/// lab's lock, and only while the lab still has state: a `down` removing it is left to
/// finish, and nothing is left behind.
fn keep_as_last_check(state: &StateDir, name: &str, v: &crate::verify::Verdict) {
    let Ok(lock) = state.lock_to_check(name) else {
        return;
    };
    match lock.load() {
        Ok(Some(_)) => {
            let _ = health::save(lock.dir(), v);
        }
        // Taken down meanwhile: the directory the lock made again goes.
        Ok(None) => {
            let _ = lock.remove();
        }
        Err(_) => {}
    }
}

/// `vxlab status`
pub fn status(json: bool) -> Result<u8> {
    let state = StateDir::from_env();
    let root = is_root();
    if let Err(e) = std::fs::read_dir(state.root()) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return Err(HostError::CannotRead {
                what: "the state directory",
                path: state.root().to_path_buf(),
            }
            .into());
        }
    }
    // A state directory an older vxlab made 0755 lists the labs, each of whose directories
    // is root's alone: say once what is needed, not "only a lock is left" for every lab.
    if !root && !state.unreadable().is_empty() {
        return Err(HostError::CannotRead {
            what: "the labs' state in",
            path: state.root().to_path_buf(),
        }
        .into());
    }
    let labs = state.labs();
    let rows = parallel_map(&labs, 4, |name| row(&state, name, root));
    let known: BTreeSet<String> = rows.iter().flat_map(|(_, i)| i.clone()).collect();
    let rows: Vec<Value> = rows.into_iter().map(|(r, _)| r).collect();
    // Guests running on this host that no lab in this state directory owns: labs brought up
    // with another VXLAB_STATE_DIR.
    let mut strays: Vec<String> = netns::running_guests();
    strays.extend(libvirt::running_guests());
    strays.retain(|n| !known.contains(n));
    // The labs they belong to, as their names say.
    let mut elsewhere: Vec<&str> = strays
        .iter()
        .filter_map(|n| plan::instance_owner(n).map(|(lab, _)| lab))
        .collect();
    elsewhere.dedup();
    let leftovers = state.leftovers();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "labs": rows,
                "elsewhere": strays,
                "elsewhere_labs": elsewhere,
                "leftovers": leftovers,
            }))?
        );
        return Ok(exit::OK);
    }
    if !root {
        println!("(not root: showing each lab's last check; run as root for a check now)\n");
    }
    if rows.is_empty() {
        println!("no lab is running in {}", state.root().display());
    } else {
        let text = |v: &Value, k: &str| match &v[k] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        println!(
            "{:<24} {:<16} {:<8} {:<8} {:<16} {:>6}  {:<15} {:<18} HEALTH",
            "LAB", "INSTANCE OF", "INSTANCE", "DRIVER", "HOST", "GUESTS", "BRIDGE", "UNDERLAY"
        );
        for r in &rows {
            println!(
                "{:<24} {:<16} {:<8} {:<8} {:<16} {:>6}  {:<15} {:<18} {}",
                text(r, "lab"),
                text(r, "instance_of"),
                text(r, "instance"),
                text(r, "driver"),
                match &r["host"] {
                    Value::String(h) => h.clone(),
                    _ => "this machine".into(),
                },
                text(r, "guests"),
                text(r, "bridge"),
                text(r, "underlay"),
                text(r, "health")
            );
        }
    }
    if !strays.is_empty() {
        println!(
            "\nlabs running on this host that {} does not hold: {} (guests {})\n\
             they were brought up with another state directory: run vxlab with \
             VXLAB_STATE_DIR set to it (or --state-dir) to see, check or remove them",
            state.root().display(),
            elsewhere.join(", "),
            strays.join(", ")
        );
    }
    for l in &leftovers {
        println!("\n{l}: only a lock is left (an up stopped at once); `vxlab down {l}` removes it");
    }
    Ok(exit::OK)
}
