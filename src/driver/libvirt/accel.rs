//! Choosing between KVM and software emulation (TCG).
//!
//! A /dev/kvm that answers is not proof that KVM can run a guest: on some hosts (nested or
//! paravirtualized) an ordinary kernel hangs early under KVM. So `auto` boots the image's
//! kernel under KVM once with no root file system: a kernel that reaches its "cannot mount
//! root" panic within a few seconds proves KVM works. The answer is cached per host kernel.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::lab::Accel;

/// The chosen accelerator and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// libvirt domain type: `kvm` or `qemu`.
    pub domain_type: &'static str,
    /// One line for the user.
    pub reason: String,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Chooses the accelerator for `setting`, probing with `kernel` when it is `auto`.
pub fn choose(setting: Accel, kernel: &Path, cache: &Path) -> Choice {
    let kvm = || Choice {
        domain_type: "kvm",
        reason: "using KVM".into(),
    };
    let tcg = |why: &str| Choice {
        domain_type: "qemu",
        reason: format!("using software emulation (TCG), slower than KVM: {why}"),
    };
    match setting {
        Accel::Kvm => kvm(),
        Accel::Tcg => tcg("the lab asks for it"),
        Accel::Auto if !Path::new("/dev/kvm").exists() => tcg("this host has no /dev/kvm"),
        Accel::Auto => {
            let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let key = format!("{}:{}", host.trim(), kernel.display());
            let cached = std::fs::read_to_string(cache).ok().and_then(|t| {
                let (k, v) = t.trim().rsplit_once('=')?;
                (k == key).then(|| v == "kvm")
            });
            let works = cached.unwrap_or_else(|| {
                let works = kvm_boots(kernel);
                let _ = std::fs::write(
                    cache,
                    format!("{key}={}\n", if works { "kvm" } else { "tcg" }),
                );
                works
            });
            if works {
                kvm()
            } else {
                tcg("/dev/kvm exists but a probe boot under KVM did not get through the kernel's start")
            }
        }
    }
}

/// Boots `kernel` under KVM with no root file system and waits for its panic.
fn kvm_boots(kernel: &Path) -> bool {
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-m",
            "256",
            "-nodefaults",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 root=/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Kernel panic") || line.contains("VFS:") {
                let _ = tx.send(());
                return;
            }
        }
    });
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let ok = rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_ok();
    let _ = child.kill();
    let _ = child.wait();
    ok
}
