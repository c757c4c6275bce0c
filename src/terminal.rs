//! Processes in guests that people talk to: `vxlab shell`, `vxlab exec` and the class server's
//! browser terminals. What to start is decided here, once ([`shell`], [`command`]); a driver
//! starts it ([`crate::driver::Driver::spawn`]) and hands back a [`GuestProcess`], whose input
//! and output are plain byte streams whichever driver made it.

use std::io::{self, Read, Write};
use std::path::Path;

use serde::Deserialize;

use crate::iproute2::Tools;
use crate::plan::GuestPlan;

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct WinSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl WinSize {
    /// The size terminals start with when nobody said otherwise.
    pub const DEFAULT: WinSize = WinSize { cols: 80, rows: 24 };

    /// The size with each side kept in 1..=1000, so a client cannot ask the kernel or sshd for
    /// a nonsense terminal.
    pub fn clamped(self) -> WinSize {
        WinSize {
            cols: self.cols.clamp(1, 1000),
            rows: self.rows.clamp(1, 1000),
        }
    }
}

/// What to start in a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment variables set for it (on top of a minimal environment).
    pub env: Vec<(String, String)>,
    /// A pseudo-terminal of this size, or pipes (`None`).
    pub tty: Option<WinSize>,
    /// Whether it runs with only what a student needs: on namespaces, as an unprivileged user
    /// with the network capabilities, in its own mount namespace that hides the host's labs
    /// (see [`crate::host::spawn`]); a VM is its own machine and needs nothing more.
    pub confined: bool,
    /// The uid a confined process runs as on the host: one per run of a lab, so students of
    /// different copies (or of an earlier run of the same copy) share no files or limits.
    pub uid: u32,
}

/// The first uid of the range confined shells run as; far above any uid a distribution hands
/// out, and below the overflow uid range.
const STUDENT_UID_BASE: u32 = 0x4000_0000;

/// The uid the confined processes of lab `lab` run as in its run `made` (see
/// [`crate::state::LabState::made`]): a hash of both into 2^24 uids.
pub fn student_uid(lab: &str, made: &str) -> u32 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let bytes = lab.bytes().chain([0]).chain(made.bytes());
    let h = bytes.fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    STUDENT_UID_BASE + (h & 0x00ff_ffff)
}

/// The shell a student gets in guest `g` of lab `lab` (in its run `made`): bash with the prompt `lab/guest# `,
/// the `ip` and `bridge` vxlab configured the guest with first on the PATH, and none of the
/// distribution's start-up files (they would set another prompt).
pub fn shell(lab: &str, made: &str, g: &GuestPlan, tools: &Tools, size: WinSize) -> Launch {
    let mut path = String::new();
    for tool in [&tools.ip, &tools.bridge] {
        if let Some(dir) = Path::new(tool).parent().filter(|d| d.is_absolute()) {
            let dir = dir.to_string_lossy();
            if !path.split(':').any(|p| p == dir) {
                path.push_str(&dir);
                path.push(':');
            }
        }
    }
    path.push_str("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    Launch {
        argv: ["bash", "--noprofile", "--norc", "-i"]
            .map(String::from)
            .to_vec(),
        env: vec![
            ("PS1".into(), format!("{lab}/{}# ", g.name)),
            ("PATH".into(), path),
            ("TERM".into(), "xterm-256color".into()),
            ("HOME".into(), "/tmp".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ],
        tty: Some(size.clamped()),
        confined: true,
        uid: student_uid(lab, made),
    }
}

/// `argv` run as `vxlab exec` runs it: as root in the guest, on a pseudo-terminal of `tty`'s
/// size when asked for one.
pub fn command(argv: &[String], tty: Option<WinSize>) -> Launch {
    Launch {
        argv: argv.to_vec(),
        env: vec![("TERM".into(), "xterm-256color".into())],
        tty: tty.map(WinSize::clamped),
        confined: false,
        uid: 0,
    }
}

/// A process running in a guest. With a terminal, `stdout` carries both output streams and
/// `stderr` is `None`.
pub struct GuestProcess {
    /// What the process reads.
    pub stdin: Box<dyn Write + Send>,
    /// What it prints.
    pub stdout: Box<dyn Read + Send>,
    /// What it prints on standard error, without a terminal.
    pub stderr: Option<Box<dyn Read + Send>>,
    /// Size, end and exit status.
    pub control: Box<dyn ProcessControl>,
}

/// What can be done to a running guest process besides talking to it.
pub trait ProcessControl: Send + Sync {
    /// Tells its terminal the new size (nothing without a terminal).
    fn resize(&self, size: WinSize) -> io::Result<()>;
    /// Waits for it to end; its exit status (128 + the signal when killed by one).
    fn wait(&self) -> io::Result<i32>;
    /// Ends it, as a terminal being closed would (hang-up).
    fn hang_up(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> crate::plan::Plan {
        crate::plan::plan(
            &crate::lab::load(Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/labs/two-netns.yaml"
            )))
            .unwrap(),
        )
    }

    #[test]
    fn the_shell_names_lab_and_guest_and_puts_built_tools_first() {
        let p = seed();
        let tools = Tools {
            ip: "/var/cache/vxlab/iproute2/abc/prefix/sbin/ip".into(),
            bridge: "/var/cache/vxlab/iproute2/abc/prefix/sbin/bridge".into(),
            ..Tools::default()
        };
        let l = shell(
            "two-netns",
            "",
            &p.guests[0],
            &tools,
            WinSize {
                cols: 0,
                rows: 9999,
            },
        );
        let env = |k: &str| l.env.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(env("PS1"), "two-netns/vm-a# ");
        assert!(env("PATH").starts_with("/var/cache/vxlab/iproute2/abc/prefix/sbin:/usr/local"));
        assert_eq!(
            l.tty,
            Some(WinSize {
                cols: 1,
                rows: 1000
            })
        );
        assert!(l.confined);
        let plain = shell(
            "two-netns",
            "",
            &p.guests[0],
            &Tools::default(),
            WinSize::DEFAULT,
        );
        assert!(plain
            .env
            .iter()
            .any(|(k, v)| k == "PATH" && v.starts_with("/usr/local/sbin")));
    }

    #[test]
    fn copies_of_a_lab_get_different_uids_in_the_student_range() {
        let uids: std::collections::BTreeSet<u32> = (1..=30)
            .map(|i| student_uid(&format!("two-netns-{i}"), "5f0c2a9e41d7b836"))
            .collect();
        assert_eq!(uids.len(), 30);
        // The same copy taken down and brought up again is another run: another uid.
        assert_ne!(
            student_uid("two-netns-1", "5f0c2a9e41d7b836"),
            student_uid("two-netns-1", "a03e77d190c4f25b")
        );
        assert!(uids
            .iter()
            .all(|u| (STUDENT_UID_BASE..STUDENT_UID_BASE + (1 << 24)).contains(u)));
    }
}
