//! What the shell offers while a command line is typed: running labs, lab files and guest
//! names. The shell asks vxlab itself (clap_complete's dynamic completion: the script that
//! `vxlab completions SHELL` prints runs `COMPLETE=SHELL vxlab -- WORDS`), since only vxlab
//! knows which labs run and which guests they have. The labs are looked for where the
//! command line would find them: in the `--state-dir` it gives, anywhere on the line, else
//! in `$VXLAB_STATE_DIR`, else in /var/lib/vxlab.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use clap_complete::engine::{CompletionCandidate, PathCompleter, ValueCompleter};

use crate::lab::{self, DriverKind, Lab};
use crate::state::{StateDir, LAB_COPY};

/// The command line being completed: its words without the `--state-dir` option, and the
/// state directory it names.
struct Line {
    words: Vec<String>,
    state: StateDir,
}

impl Line {
    /// The line the shell asked about (`vxlab -- vxlab WORDS…`).
    fn asked() -> Line {
        Line::of(std::env::args().collect())
    }

    /// `--state-dir DIR` or `--state-dir=DIR` taken out of `words` (a global option: before
    /// or after the command); the last one wins, as for the command itself.
    fn of(words: Vec<String>) -> Line {
        let mut dir: Option<PathBuf> = None;
        let mut rest = Vec::with_capacity(words.len());
        let mut it = words.into_iter();
        while let Some(w) = it.next() {
            if w == "--state-dir" {
                // A value not typed yet is no directory.
                if let Some(d) = it.next().filter(|d| !d.is_empty()) {
                    dir = Some(d.into());
                }
            } else if let Some(d) = w.strip_prefix("--state-dir=") {
                if !d.is_empty() {
                    dir = Some(d.into());
                }
            } else {
                rest.push(w);
            }
        }
        Line {
            words: rest,
            state: dir.map_or_else(StateDir::from_env, StateDir::at),
        }
    }

    /// The lab the line names, by `--lab LAB`, `--lab=LAB` or `reset LAB`: a running lab's
    /// name or a lab file.
    fn named_lab(&self) -> Option<Lab> {
        let words = &self.words;
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
        recorded(&self.state, &given)
    }

    /// The running labs (with their lab files as recorded), on `driver` where given.
    fn running(&self, driver: Option<DriverKind>) -> Vec<(String, Option<Lab>)> {
        self.state
            .labs()
            .into_iter()
            .map(|name| {
                let lab = recorded(&self.state, &name);
                (name, lab)
            })
            .filter(|(_, lab)| match (driver, lab) {
                (None, _) => true,
                (Some(d), Some(lab)) => lab.driver == d,
                (Some(_), None) => false,
            })
            .collect()
    }

    /// Running labs by name, each with its guests as help.
    fn labs(&self, typed: &str, driver: Option<DriverKind>) -> Vec<CompletionCandidate> {
        self.running(driver)
            .into_iter()
            .filter(|(name, _)| name.starts_with(typed))
            .map(|(name, lab)| {
                let help =
                    lab.map(|l| format!("running lab, guests {}", guest_names(&l).join(" ")));
                CompletionCandidate::new(name).help(help.map(Into::into))
            })
            .collect()
    }

    /// Guest names of the lab the line names, else of the running labs; on `driver` only,
    /// where the command works only there (`ssh` and `console` reach VMs alone).
    fn guests(&self, typed: &str, driver: Option<DriverKind>) -> Vec<String> {
        let mut names: Vec<String> = match self.named_lab() {
            Some(lab) if driver.is_none_or(|d| lab.driver == d) => guest_names(&lab),
            Some(_) => Vec::new(),
            None => self
                .running(driver)
                .into_iter()
                .filter_map(|(_, lab)| lab)
                .flat_map(|l| guest_names(&l))
                .collect(),
        };
        names.sort();
        names.dedup();
        names.retain(|g| g.starts_with(typed));
        names
    }
}

/// Lab files: `.yaml` files and the directories that may hold them (not `.` itself, which
/// holds every other candidate).
pub fn lab_files(current: &OsStr) -> Vec<CompletionCandidate> {
    PathCompleter::file()
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .complete(current)
        .into_iter()
        .filter(|c| c.get_value() != ".")
        .collect()
}

/// Running labs by name, each with its guests as help.
pub fn running_labs(current: &OsStr) -> Vec<CompletionCandidate> {
    Line::asked().labs(&current.to_string_lossy(), None)
}

/// A running lab's name or a lab file.
pub fn labs_and_files(current: &OsStr) -> Vec<CompletionCandidate> {
    let mut out = running_labs(current);
    out.extend(lab_files(current));
    out
}

/// A running lab on VMs, or a lab file: what `ssh` and `console` reach.
pub fn vm_labs_and_files(current: &OsStr) -> Vec<CompletionCandidate> {
    let mut out = Line::asked().labs(&current.to_string_lossy(), Some(DriverKind::Libvirt));
    out.extend(lab_files(current));
    out
}

/// Guest names of the lab the command line names (`--lab LAB`, or `reset LAB`), else of the
/// running labs.
pub fn guests(current: &OsStr) -> Vec<CompletionCandidate> {
    let line = Line::asked();
    candidates(line.guests(&current.to_string_lossy(), None))
}

/// Guest names as [`guests`], of labs on VMs only: `ssh` and `console` refuse a namespace
/// guest (`vxlab shell` is its way in).
pub fn vm_guests(current: &OsStr) -> Vec<CompletionCandidate> {
    let line = Line::asked();
    candidates(line.guests(&current.to_string_lossy(), Some(DriverKind::Libvirt)))
}

fn candidates(names: Vec<String>) -> Vec<CompletionCandidate> {
    names.into_iter().map(CompletionCandidate::new).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(words: &[&str]) -> Line {
        Line::of(words.iter().map(|w| w.to_string()).collect())
    }

    #[test]
    fn the_lab_named_on_the_command_line_is_found() {
        let file = format!("{}/labs/two-vni.yaml", env!("CARGO_MANIFEST_DIR"));
        let lab = line(&["vxlab", "--", "vxlab", "show", "--lab", &file, ""])
            .named_lab()
            .unwrap();
        assert_eq!(guest_names(&lab), ["vm-a", "vm-b", "vm-c"]);
        assert!(line(&["vxlab", "capture", &format!("--lab={file}")])
            .named_lab()
            .is_some());
        assert!(line(&["vxlab", "show"]).named_lab().is_none());
    }

    /// A state directory holding running lab `name` (a copy of shipped lab `file`).
    fn running_in(dir: &Path, file: &str, name: &str) {
        let text =
            std::fs::read_to_string(format!("{}/labs/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let lab_dir = dir.join(name);
        std::fs::create_dir_all(&lab_dir).unwrap();
        let text = text.replacen(
            &format!("name: {}", file.trim_end_matches(".yaml")),
            &format!("name: {name}"),
            1,
        );
        std::fs::write(lab_dir.join(LAB_COPY), text).unwrap();
        std::fs::write(lab_dir.join(crate::state::STATE_FILE), "{}").unwrap();
    }

    #[test]
    fn the_state_dir_given_anywhere_on_the_line_is_where_labs_are_found() {
        let dir = tempfile::tempdir().unwrap();
        running_in(dir.path(), "two-vni.yaml", "c-vni");
        running_in(dir.path(), "two-vm.yaml", "c-vm");
        let d = dir.path().to_str().unwrap();
        let eq = format!("--state-dir={d}");
        for words in [
            vec!["vxlab", "--", "vxlab", "--state-dir", d, "show", ""],
            vec!["vxlab", "--", "vxlab", "show", "--state-dir", d, ""],
            vec!["vxlab", "--", "vxlab", &eq, "show", ""],
        ] {
            let l = line(&words);
            assert_eq!(l.state.root(), dir.path(), "{words:?}");
            assert!(!l.words.iter().any(|w| w.contains("--state-dir")));
            let names: Vec<String> = l.labs("", None).iter().map(value).collect();
            assert_eq!(names, ["c-vm", "c-vni"], "{words:?}");
            assert_eq!(l.guests("", None), ["vm-a", "vm-b", "vm-c"], "{words:?}");
        }
        // `reset LAB` names its lab with the option between them.
        let l = line(&[
            "vxlab",
            "--",
            "vxlab",
            "reset",
            "--state-dir",
            d,
            "c-vm",
            "",
        ]);
        assert_eq!(l.guests("", None), ["vm-a", "vm-b"]);
        // ssh and console reach VMs only: a namespace lab's guests are not offered.
        let l = line(&["vxlab", "--", "vxlab", "--state-dir", d, "ssh", ""]);
        assert_eq!(l.guests("", Some(DriverKind::Libvirt)), ["vm-a", "vm-b"]);
        let vm_labs: Vec<String> = l
            .labs("", Some(DriverKind::Libvirt))
            .iter()
            .map(value)
            .collect();
        assert_eq!(vm_labs, ["c-vm"]);
        let l = line(&[
            "vxlab",
            "--",
            "vxlab",
            "--state-dir",
            d,
            "ssh",
            "--lab",
            "c-vni",
            "",
        ]);
        assert_eq!(
            l.guests("", Some(DriverKind::Libvirt)),
            Vec::<String>::new()
        );
        // A `--state-dir` whose value is not typed yet names no directory.
        let l = line(&["vxlab", "--", "vxlab", "show", "--state-dir", ""]);
        assert_eq!(l.state.root(), StateDir::from_env().root());
    }

    fn value(c: &CompletionCandidate) -> String {
        c.get_value().to_string_lossy().into_owned()
    }

    #[test]
    fn lab_files_never_offer_the_directory_itself() {
        let offered: Vec<String> = lab_files(OsStr::new("")).iter().map(value).collect();
        assert!(!offered.contains(&".".to_string()), "{offered:?}");
    }
}
