//! Running programs on the host or inside a network namespace.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// What a finished command left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status; -1 when killed by a signal.
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// True on exit status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// A program vxlab needs and the Debian package that has it.
pub const PROGRAMS: [(&str, &str); 3] = [
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("ping", "iputils-ping"),
];

/// Finds `program` on PATH.
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Runs `argv` to completion, inside the network namespace bound at `netns` if given.
///
/// Entering the namespace with setns() is what `ip netns exec` does too, minus its remount of
/// /sys, which none of the programs vxlab runs need; it is several times cheaper.
pub fn run(argv: &[String], netns: Option<&Path>) -> io::Result<Output> {
    run_with_input(argv, netns, None)
}

/// [`run`], with `input` written to the program's standard input.
///
/// Inside a namespace, a short-lived thread enters it and starts the program from there: a
/// child inherits its parent thread's network namespace, so no code has to run between fork
/// and exec, and the program starts by `posix_spawn` (a vfork) instead of a fork that copies
/// the page tables of a process with a hundred threads, a third of a 100-guest `up`.
pub fn run_with_input(
    argv: &[String],
    netns: Option<&Path>,
    input: Option<&str>,
) -> io::Result<Output> {
    match netns {
        Some(ns) => super::netns::in_netns(ns, || run_here(argv, input)),
        None => run_here(argv, input),
    }
}

/// Runs `argv` to completion in the calling thread's network namespace.
fn run_here(argv: &[String], input: Option<&str>) -> io::Result<Output> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    // A process group of its own: Ctrl-C at the terminal stops vxlab between steps (see
    // `interrupt`), and the command in flight finishes instead of dying half-way.
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(e.kind(), format!("`{program}` is not installed"))
        } else {
            e
        }
    })?;
    // The input is written from its own thread while the output is read here: a child that
    // fills its output pipe before it has read all its input cannot block either side.
    let writer = input.map(|text| {
        let mut stdin = child.stdin.take().expect("piped");
        let text = text.to_string();
        std::thread::spawn(move || io::Write::write_all(&mut stdin, text.as_bytes()))
    });
    let out = child.wait_with_output()?;
    if let Some(w) = writer {
        // A child that exits early closes its input; that is its answer, not an error.
        let _ = w.join();
    }
    Ok(Output {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Process `pid` as `ps` would show it to a person: its command line, the program by name
/// (not the path it was started by), at most 8 words, and the pid: `vxlab up labs/two-vm.yaml
/// --count 3 (pid 812)`; only the pid when it has gone.
pub fn described(pid: u32) -> String {
    let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .enumerate()
        .map(|(i, w)| {
            let w = String::from_utf8_lossy(w);
            if i == 0 {
                w.rsplit('/').next().unwrap_or_default().to_string()
            } else {
                w.into_owned()
            }
        })
        .take(8)
        .collect();
    if argv.is_empty() {
        format!("pid {pid}")
    } else {
        format!("{} (pid {pid})", crate::guest_command::shell_words(&argv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_described_by_its_program_name_and_arguments_and_a_gone_one_by_its_pid() {
        let me = std::process::id();
        let said = described(me);
        let program = std::env::args().next().unwrap();
        let name = program.rsplit('/').next().unwrap();
        assert!(
            said.starts_with(name) && said.ends_with(&format!("(pid {me})")),
            "{said}"
        );
        assert_eq!(described(u32::MAX), format!("pid {}", u32::MAX));
    }
}
