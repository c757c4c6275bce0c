//! Every command vxlab runs on a hypervisor's own shell, built in one typed place like the
//! guests' ([`crate::guest_command`]): only what libvirt has no call for. An argument vector,
//! never a shell string; over SSH each word is quoted.

use std::fmt;

use crate::plan::shell_words;

/// The longest a capture may run on a hypervisor, a net under [`CAPTURE_SCRIPT`]'s own end.
pub const CAPTURE_LIMIT_SECS: u32 = 600;

/// How a capture runs on a hypervisor (`$1` the link, `$2` the time limit). tcpdump by itself
/// notices that its reader went away only when it writes its next packet, so on a quiet link
/// it would outlive the capture by minutes. Here it runs in the background, and a watcher
/// reads the command's standard input, which vxlab holds open as long as it reads: at its end
/// (vxlab's capture ended, or its connection to the host did) the watcher stops tcpdump at
/// once. tcpdump ending by itself ends the command, the watcher with it. The watcher writes
/// nothing, so the command's output is tcpdump's alone.
const CAPTURE_SCRIPT: &str = "exec 3<&0 </dev/null; \
timeout \"$2\" tcpdump -i \"$1\" -U -s 0 -w - 3<&- & t=$!; \
{ cat <&3; kill \"$t\"; } >/dev/null 2>&1 & w=$!; \
exec 3<&-; wait \"$t\"; s=$?; kill \"$w\" 2>/dev/null; exit \"$s\"";

/// One command for a hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCommand {
    /// Which of `programs` are installed (`command -v` prints each one found).
    Programs(Vec<&'static str>),
    /// SHA-256 of files, as `sha256sum` prints them.
    Checksums(Vec<String>),
    /// The host's routes of one family, as JSON.
    Routes {
        /// IPv6 rather than IPv4.
        ipv6: bool,
    },
    /// Owner, group and mode of `/dev/kvm` (`stat` fails when there is none).
    KvmNode,
    /// libvirt's QEMU settings, for the user QEMU runs as.
    QemuConf,
    /// The uid and groups of a user.
    UserIds(String),
    /// The running kernel's release: part of the key of a cached KVM probe.
    KernelRelease,
    /// Boots `kernel` under KVM with no root file system for a few seconds: whether it
    /// reaches its panic shows KVM can run guests here (see [`super::super::accel`]).
    KvmProbe {
        /// The guest kernel's path on the host.
        kernel: String,
        /// Seconds before it is stopped.
        seconds: u32,
    },
    /// An `iptables` or `ip6tables` command of a lab's fence (`host::firewall`).
    Firewall(Vec<String>),
    /// Every frame on a host link as a pcap stream on standard output, each as it comes,
    /// until standard input ends ([`CAPTURE_SCRIPT`]).
    Capture {
        /// The link (a guest's tap).
        link: String,
    },
}

impl HostCommand {
    /// The argument vector.
    pub fn argv(&self) -> Vec<String> {
        let words: Vec<String> = match self {
            HostCommand::Programs(names) => {
                // `command -v` is a shell builtin: sh runs it for each name given after `--`.
                let mut w = vec![
                    "sh".to_string(),
                    "-c".into(),
                    "for p in \"$@\"; do command -v \"$p\" || true; done".into(),
                    "--".into(),
                ];
                w.extend(names.iter().map(|n| n.to_string()));
                w
            }
            HostCommand::Checksums(paths) => {
                let mut w = vec!["sha256sum".to_string(), "--".into()];
                w.extend(paths.iter().cloned());
                w
            }
            HostCommand::Routes { ipv6 } => ["ip", "-j", if *ipv6 { "-6" } else { "-4" }, "route"]
                .iter()
                .map(|s| s.to_string())
                .chain(["show".to_string()])
                .collect(),
            HostCommand::KvmNode => ["stat", "-L", "-c", "%u %g %a", "/dev/kvm"]
                .map(String::from)
                .to_vec(),
            HostCommand::QemuConf => ["cat", "/etc/libvirt/qemu.conf"].map(String::from).to_vec(),
            HostCommand::UserIds(user) => vec!["id".into(), "--".into(), user.clone()],
            HostCommand::KernelRelease => vec!["uname".into(), "-r".into()],
            HostCommand::KvmProbe { kernel, seconds } => {
                let mut w = vec!["timeout".to_string(), seconds.to_string()];
                w.extend(crate::driver::libvirt::accel::kvm_probe_argv(kernel));
                w
            }
            HostCommand::Firewall(argv) => argv.clone(),
            HostCommand::Capture { link } => vec![
                "sh".into(),
                "-c".into(),
                CAPTURE_SCRIPT.into(),
                "sh".into(),
                link.clone(),
                CAPTURE_LIMIT_SECS.to_string(),
            ],
        };
        words
    }

    /// The command line sent over SSH: every word quoted for the login shell.
    pub fn line(&self) -> String {
        shell_words(&self.argv())
    }
}

impl fmt::Display for HostCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())
    }
}

/// The programs of `wanted` that `command -v` did not print.
pub fn missing_programs(wanted: &[&'static str], found: &str) -> Vec<&'static str> {
    wanted
        .iter()
        .copied()
        .filter(|p| {
            !found
                .lines()
                .any(|l| l.trim().rsplit('/').next() == Some(p) && l.trim().starts_with('/'))
        })
        .collect()
}

/// The checksum `sha256sum` printed for `path`.
pub fn checksum_of(output: &str, path: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let (sum, file) = l.split_once("  ")?;
        (file == path && sum.len() == 64).then(|| sum.to_string())
    })
}

/// `stat -c '%u %g %a'`'s line as a device node.
pub fn kvm_node(output: &str) -> Option<super::super::preflight::Node> {
    let mut w = output.split_whitespace();
    let uid = w.next()?.parse().ok()?;
    let gid = w.next()?.parse().ok()?;
    let mode = u32::from_str_radix(w.next()?, 8).ok()?;
    Some(super::super::preflight::Node { uid, gid, mode })
}

/// `id USER`'s line: the uid and every gid (`uid=64055(libvirt-qemu) gid=… groups=…,…`).
pub fn user_ids(output: &str) -> Option<(u32, Vec<u32>)> {
    let number = |s: &str| s.split('(').next()?.parse::<u32>().ok();
    let mut uid = None;
    let mut gids = Vec::new();
    for field in output.split_whitespace() {
        if let Some(v) = field.strip_prefix("uid=") {
            uid = number(v);
        } else if let Some(v) = field.strip_prefix("gid=") {
            gids.extend(number(v));
        } else if let Some(v) = field.strip_prefix("groups=") {
            gids.extend(v.split(',').filter_map(number));
        }
    }
    Some((uid?, gids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_commands_are_argument_vectors_quoted_once_for_ssh() {
        let c = HostCommand::Capture {
            link: "vnet0".into(),
        };
        assert!(
            c.line()
                .starts_with("sh -c 'exec 3<&0 </dev/null; timeout \"$2\" tcpdump -i"),
            "{}",
            c.line()
        );
        assert!(c.line().ends_with("' sh vnet0 600"), "{}", c.line());
        let c = HostCommand::Checksums(vec!["/var/lib/x y/base.qcow2".into(), "-n".into()]);
        assert_eq!(c.line(), "sha256sum -- '/var/lib/x y/base.qcow2' -n");
        let c = HostCommand::Checksums(vec!["/p/it's.log".into()]);
        assert_eq!(c.argv().last().unwrap(), "/p/it's.log");
        assert!(c.line().ends_with("'/p/it'\\''s.log'"), "{}", c.line());
        // The probe's kernel command line stays one word.
        let p = HostCommand::KvmProbe {
            kernel: "/k".into(),
            seconds: 8,
        };
        assert!(p
            .line()
            .ends_with("-kernel /k -append 'console=ttyS0 panic=-1 root=/dev/null'"));
    }

    /// The capture's command run here, with `fake` as tcpdump (first on PATH): the child,
    /// and the first line it wrote to its error stream.
    fn capture_with(fake: &str) -> (tempfile::TempDir, std::process::Child, String) {
        use std::io::BufRead;
        use std::os::unix::fs::PermissionsExt;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let tcpdump = dir.path().join("tcpdump");
        std::fs::write(&tcpdump, fake).unwrap();
        std::fs::set_permissions(&tcpdump, std::fs::Permissions::from_mode(0o755)).unwrap();
        let argv = HostCommand::Capture {
            link: "vnet9".into(),
        }
        .argv();
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut said)
            .unwrap();
        (dir, child, said)
    }

    /// Everything the child wrote to its standard output, to its end.
    fn stdout_of(child: &mut std::process::Child) -> String {
        use std::io::Read;
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        out
    }

    /// Waits up to 5 s for `done`.
    fn within_5s(mut done: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_capture_on_a_host_ends_when_its_reader_goes_however_quiet_the_link() {
        // A tcpdump on a link where nothing passes: it says it listens, then waits.
        let (_dir, mut child, said) =
            capture_with("#!/bin/sh\necho \"listening on $2, pid $$\" >&2\nexec sleep 60\n");
        assert!(said.starts_with("listening on vnet9, pid "), "{said}");
        let pid: u32 = said.trim().rsplit(' ').next().unwrap().parse().unwrap();
        // vxlab's capture ends: the command's input closes (as when its connection does).
        drop(child.stdin.take());
        assert!(
            within_5s(|| child.try_wait().unwrap().is_some()),
            "the capture outlived its reader"
        );
        assert!(
            within_5s(|| !std::path::Path::new(&format!("/proc/{pid}")).exists()),
            "tcpdump outlived its capture"
        );
        let out = stdout_of(&mut child);
        assert_eq!(out, "");
    }

    #[test]
    fn a_capture_on_a_host_ends_with_its_tcpdump_and_gives_only_its_packets() {
        // tcpdump ends by itself (the link went away): the command ends though vxlab still
        // holds its input open, and its output is tcpdump's alone.
        let (_dir, mut child, said) =
            capture_with("#!/bin/sh\necho \"listening on $2\" >&2\nprintf pcap\n");
        assert_eq!(said, "listening on vnet9\n");
        let out = stdout_of(&mut child);
        assert_eq!(out, "pcap");
        assert!(
            within_5s(|| child.try_wait().unwrap().is_some()),
            "the capture outlived its tcpdump"
        );
        drop(child.stdin.take());
    }

    #[test]
    fn what_the_hypervisors_tools_print_is_read_back() {
        let found = "/usr/bin/ip\n/usr/bin/qemu-img\n";
        assert_eq!(
            missing_programs(&["ip", "tcpdump", "qemu-img"], found),
            ["tcpdump"]
        );
        let sums = format!(
            "{}  /a/base.qcow2\n{}  /a/vmlinuz\n",
            "a".repeat(64),
            "b".repeat(64)
        );
        assert_eq!(checksum_of(&sums, "/a/vmlinuz"), Some("b".repeat(64)));
        assert_eq!(checksum_of(&sums, "/a/initrd.img"), None);
        let node = kvm_node("0 994 660\n").unwrap();
        assert_eq!((node.uid, node.gid, node.mode), (0, 994, 0o660));
        assert_eq!(
            user_ids("uid=64055(libvirt-qemu) gid=108(kvm) groups=108(kvm),64055(libvirt-qemu)\n"),
            Some((64055, vec![108, 108, 64055]))
        );
        assert_eq!(user_ids("id: 'x': no such user"), None);
    }
}
