//! What the shell offers while a command line is typed: running labs, lab files and guest
//! names. The shell asks vxlab itself (clap_complete's dynamic completion: the script that
//! `vxlab completions SHELL` prints runs `COMPLETE=SHELL vxlab -- WORDS`), since only vxlab
//! knows which labs run and which guests they have.

use std::ffi::OsStr;
use std::path::Path;

use clap_complete::engine::{CompletionCandidate, PathCompleter, ValueCompleter};

use crate::lab::{self, Lab};
use crate::state::{StateDir, LAB_COPY};

/// Lab files: `.yaml` files and the directories that may hold them.
pub fn lab_files(current: &OsStr) -> Vec<CompletionCandidate> {
    PathCompleter::file()
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .complete(current)
}

/// Running labs by name, each with its guests as help.
pub fn running_labs(current: &OsStr) -> Vec<CompletionCandidate> {
    let typed = current.to_string_lossy();
    let state = StateDir::from_env();
    state
        .labs()
        .into_iter()
        .filter(|name| name.starts_with(typed.as_ref()))
        .map(|name| {
            let help = recorded(&state, &name)
                .map(|l| format!("running lab, guests {}", guest_names(&l).join(" ")));
            CompletionCandidate::new(name).help(help.map(Into::into))
        })
        .collect()
}

/// A running lab's name or a lab file.
pub fn labs_and_files(current: &OsStr) -> Vec<CompletionCandidate> {
    let mut out = running_labs(current);
    out.extend(lab_files(current));
    out
}

/// Guest names of the lab the command line names (`--lab LAB`, or `reset LAB`), else of the
/// running labs.
pub fn guests(current: &OsStr) -> Vec<CompletionCandidate> {
    let typed = current.to_string_lossy();
    let words: Vec<String> = std::env::args().collect();
    let mut names: Vec<String> = match named_lab(&words) {
        Some(lab) => guest_names(&lab),
        None => {
            let state = StateDir::from_env();
            state
                .labs()
                .iter()
                .filter_map(|l| recorded(&state, l))
                .flat_map(|l| guest_names(&l))
                .collect()
        }
    };
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|g| g.starts_with(typed.as_ref()))
        .map(CompletionCandidate::new)
        .collect()
}

fn guest_names(lab: &Lab) -> Vec<String> {
    lab.guests.iter().map(|g| g.name.clone()).collect()
}

/// The lab file copy of running lab `name`.
fn recorded(state: &StateDir, name: &str) -> Option<Lab> {
    lab::load_recorded(&state.lab_dir(name).join(LAB_COPY))
        .ok()
        .map(|(lab, _)| lab)
}

/// The lab a command line names, by `--lab LAB`, `--lab=LAB` or `reset LAB`: a running lab's
/// name or a lab file.
fn named_lab(words: &[String]) -> Option<Lab> {
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| w == flag)
            .and_then(|i| words.get(i + 1))
            .cloned()
    };
    let given = words
        .iter()
        .find_map(|w| w.strip_prefix("--lab=").map(str::to_string))
        .or_else(|| after("--lab"))
        .or_else(|| after("reset"))?;
    let path = Path::new(&given);
    if path.is_file() {
        return lab::load(path).ok();
    }
    recorded(&StateDir::from_env(), &given)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_named_on_the_command_line_is_found() {
        let file = format!("{}/labs/two-vni.yaml", env!("CARGO_MANIFEST_DIR"));
        let words: Vec<String> = ["vxlab", "--", "vxlab", "show", "--lab", &file, ""]
            .iter()
            .map(|w| w.to_string())
            .collect();
        let lab = named_lab(&words).unwrap();
        assert_eq!(guest_names(&lab), ["vm-a", "vm-b", "vm-c"]);
        let eq = ["vxlab", "capture", &format!("--lab={file}")].map(String::from);
        assert!(named_lab(&eq).is_some());
        assert!(named_lab(&["vxlab".to_string(), "show".to_string()]).is_none());
    }
}
