//! Choosing between KVM and software emulation (TCG).
//!
//! A /dev/kvm that answers is not proof that KVM can run a guest: on some hosts (nested or
//! paravirtualized, such as the PVM hosts CI runs on) an ordinary kernel hangs early under
//! KVM. So `auto` boots the image's kernel under KVM once with no root file system: a kernel
//! that reaches its "cannot mount root" panic within a few seconds proves KVM works. The
//! answer is cached per host kernel and guest kernel, with when and why, and every `up` says
//! which it uses and why.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::lab::Accel;

/// The chosen accelerator and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// libvirt domain type: `kvm` or `qemu`.
    pub domain_type: &'static str,
    /// One line for the user.
    pub reason: String,
}

impl Choice {
    /// Whether guests run under software emulation.
    pub fn is_tcg(&self) -> bool {
        self.domain_type == "qemu"
    }
}

/// How long a kernel may take to reach its root-mount panic under KVM: well under a second
/// where KVM works; where it does not, the kernel hangs and this is what `up` pays, once.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// What the decision needs to know about the host; the real one looks, a test fakes it.
pub trait KvmProbe {
    /// Whether `/dev/kvm` exists.
    fn device_exists(&self) -> bool;
    /// Boots `kernel` under KVM with no root file system: whether it reached its panic in time.
    fn kernel_boots(&self, kernel: &Path) -> bool;
}

/// A remembered probe result: what it was for, whether KVM worked, and when it was probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// The host kernel and guest kernel it was probed with.
    pub key: String,
    /// Whether the guest kernel booted under KVM.
    pub works: bool,
    /// Seconds since the epoch.
    pub at: u64,
}

impl Probed {
    /// The cache file's one line: `key=kvm|tcg@seconds`.
    pub fn to_line(&self) -> String {
        format!(
            "{}={}@{}\n",
            self.key,
            if self.works { "kvm" } else { "tcg" },
            self.at
        )
    }

    /// Reads a cache line; older lines without a time read as probed at 0.
    pub fn from_line(text: &str) -> Option<Probed> {
        let (key, value) = text.trim().rsplit_once('=')?;
        let (verdict, at) = value.split_once('@').unwrap_or((value, "0"));
        let works = match verdict {
            "kvm" => true,
            "tcg" => false,
            _ => return None,
        };
        Some(Probed {
            key: key.to_string(),
            works,
            at: at.parse().unwrap_or(0),
        })
    }
}

/// Chooses the accelerator for `setting`. With `auto`, a cached probe for `key` (host kernel
/// and guest kernel) is used when there is one; otherwise `probe` boots `kernel` and the
/// result is returned for the caller to cache. `cache` names the cache file in the reason.
pub fn decide(
    setting: Accel,
    probe: &dyn KvmProbe,
    kernel: &Path,
    key: &str,
    cached: Option<Probed>,
    now: u64,
    cache: &Path,
) -> (Choice, Option<Probed>) {
    let kvm = |why: String| Choice {
        domain_type: "kvm",
        reason: format!("using KVM: {why}"),
    };
    let tcg = |why: String| Choice {
        domain_type: "qemu",
        reason: format!("using software emulation (TCG), slower than KVM: {why}"),
    };
    match setting {
        Accel::Kvm => (kvm("the lab asks for it".into()), None),
        Accel::Tcg => (tcg("the lab asks for it".into()), None),
        Accel::Auto if !probe.device_exists() => (tcg("this host has no /dev/kvm".into()), None),
        Accel::Auto => {
            let (probed, fresh) = match cached.filter(|c| c.key == key) {
                Some(c) => (c, None),
                None => {
                    let p = Probed {
                        key: key.to_string(),
                        works: probe.kernel_boots(kernel),
                        at: now,
                    };
                    (p.clone(), Some(p))
                }
            };
            let when = if fresh.is_some() {
                "probed just now".to_string()
            } else {
                format!(
                    "probed {} ago, cached in {}; delete it to probe again",
                    age(now.saturating_sub(probed.at)),
                    cache.display()
                )
            };
            let choice = if probed.works {
                kvm(format!("a guest kernel booted under /dev/kvm ({when})"))
            } else {
                tcg(format!(
                    "/dev/kvm exists but a guest kernel did not get through its start under KVM \
                     within {} s ({when})",
                    PROBE_TIMEOUT.as_secs()
                ))
            };
            (choice, fresh)
        }
    }
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// The probe cache key: the host's kernel release and the guest kernel's path.
pub fn cache_key(kernel: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{}:{}", host.trim(), kernel.display())
}

/// The cached probe for `key` in the cache file's text, one line per host and guest kernel.
pub fn cached_for(text: &str, key: &str) -> Option<Probed> {
    text.lines()
        .filter_map(Probed::from_line)
        .find(|p| p.key == key)
}

/// The cache file's text with `p` in place of any older line for its key.
pub fn with_probe(text: &str, p: &Probed) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| Probed::from_line(l).is_some_and(|o| o.key != p.key))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&p.to_line());
    out
}

/// Chooses for real: the host's /dev/kvm, a probe boot through QEMU, the cache file `cache`.
pub fn choose(setting: Accel, kernel: &Path, cache: &Path) -> Choice {
    choose_with(setting, &HostProbe, kernel, &cache_key(kernel), cache)
}

/// [`choose`] with `probe` (this machine, or another host over SSH) and the cache `key` that
/// names what was probed. A fresh probe is added to the cache as it is then: several hosts
/// are probed at once, each adding its own line. A cache that cannot be written only costs
/// the next `up` another probe.
pub fn choose_with(
    setting: Accel,
    probe: &dyn KvmProbe,
    kernel: &Path,
    key: &str,
    cache: &Path,
) -> Choice {
    let text = std::fs::read_to_string(cache).unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (choice, fresh) = decide(
        setting,
        probe,
        kernel,
        key,
        cached_for(&text, key),
        now,
        cache,
    );
    if let Some(p) = fresh {
        let now = std::fs::read_to_string(cache).unwrap_or_default();
        let _ = std::fs::write(cache, with_probe(&now, &p));
    }
    choice
}

/// The host: /dev/kvm, and QEMU run directly.
pub struct HostProbe;

impl KvmProbe for HostProbe {
    fn device_exists(&self) -> bool {
        Path::new("/dev/kvm").exists()
    }

    fn kernel_boots(&self, kernel: &Path) -> bool {
        kvm_boots(kernel)
    }
}

/// The probe that tells whether KVM really runs a guest: QEMU boots `kernel` under KVM with no
/// root file system, and its console shows the panic that follows (on this machine or, over
/// SSH, on another host).
pub fn kvm_probe_argv(kernel: &str) -> Vec<String> {
    [
        "qemu-system-x86_64",
        "-accel",
        "kvm",
        "-m",
        "256",
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        kernel,
        "-append",
        "console=ttyS0 panic=-1 root=/dev/null",
    ]
    .map(String::from)
    .to_vec()
}

/// Boots `kernel` under KVM with no root file system and waits for its panic.
fn kvm_boots(kernel: &Path) -> bool {
    let argv = kvm_probe_argv(&kernel.to_string_lossy());
    let child = Command::new(&argv[0])
        .args(&argv[1..])
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

/// Whether `lab`'s guests will run under KVM, from the setting and a cached probe only (no
/// probe boot): for estimates made before anything starts.
pub fn likely_kvm(lab: &crate::lab::Lab) -> bool {
    match lab.libvirt.accel {
        Accel::Kvm => true,
        Accel::Tcg => false,
        Accel::Auto => {
            let Ok(image) = super::image::resolve(&lab.libvirt.image) else {
                return false;
            };
            let text = std::fs::read_to_string(cache_file(&super::image::cache_dir()));
            cached_for(&text.unwrap_or_default(), &cache_key(&image.kernel))
                .is_some_and(|p| p.works)
        }
    }
}

/// Where the probe result is cached: beside the images.
pub fn cache_file(images: &Path) -> PathBuf {
    images.join("accel-probe")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A host as the test says it is, counting the probe boots it is asked for.
    struct FakeHost {
        device: bool,
        boots: bool,
        probes: Cell<u32>,
    }

    impl FakeHost {
        fn new(device: bool, boots: bool) -> Self {
            FakeHost {
                device,
                boots,
                probes: Cell::new(0),
            }
        }
    }

    impl KvmProbe for FakeHost {
        fn device_exists(&self) -> bool {
            self.device
        }
        fn kernel_boots(&self, _: &Path) -> bool {
            self.probes.set(self.probes.get() + 1);
            self.boots
        }
    }

    fn run(setting: Accel, host: &FakeHost, cached: Option<Probed>) -> (Choice, Option<Probed>) {
        decide(
            setting,
            host,
            Path::new("/img/vmlinuz"),
            "6.1.0:/img/vmlinuz",
            cached,
            10_000,
            Path::new("/cache/accel-probe"),
        )
    }

    #[test]
    fn auto_uses_kvm_where_a_guest_kernel_boots_under_it_and_caches_that() {
        let host = FakeHost::new(true, true);
        let (c, fresh) = run(Accel::Auto, &host, None);
        assert_eq!(c.domain_type, "kvm");
        assert!(c.reason.contains("probed just now"), "{}", c.reason);
        assert_eq!(
            fresh,
            Some(Probed {
                key: "6.1.0:/img/vmlinuz".into(),
                works: true,
                at: 10_000
            })
        );
        assert_eq!(host.probes.get(), 1);
    }

    #[test]
    fn auto_falls_back_to_tcg_where_kvm_hangs_a_guest_and_says_why() {
        let host = FakeHost::new(true, false);
        let (c, fresh) = run(Accel::Auto, &host, None);
        assert!(c.is_tcg());
        assert!(c.reason.contains("did not get through its start under KVM"));
        assert!(!fresh.unwrap().works);
    }

    #[test]
    fn a_cached_result_for_the_same_kernels_is_used_without_probing_and_explained() {
        let host = FakeHost::new(true, true);
        let cached = Probed {
            key: "6.1.0:/img/vmlinuz".into(),
            works: false,
            at: 10_000 - 2 * 3600,
        };
        let (c, fresh) = run(Accel::Auto, &host, Some(cached));
        assert!(c.is_tcg());
        assert_eq!(host.probes.get(), 0);
        assert_eq!(fresh, None);
        assert!(
            c.reason
                .contains("probed 2 h ago, cached in /cache/accel-probe; delete it to probe again"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn a_cached_result_for_another_host_kernel_is_probed_again() {
        let host = FakeHost::new(true, true);
        let stale = Probed {
            key: "5.10.0:/img/vmlinuz".into(),
            works: false,
            at: 1,
        };
        let (c, fresh) = run(Accel::Auto, &host, Some(stale));
        assert_eq!(c.domain_type, "kvm");
        assert_eq!(host.probes.get(), 1);
        assert!(fresh.is_some());
    }

    #[test]
    fn no_device_means_tcg_without_a_probe_and_forced_settings_are_obeyed() {
        let none = FakeHost::new(false, true);
        let (c, _) = run(Accel::Auto, &none, None);
        assert!(c.is_tcg() && c.reason.contains("no /dev/kvm"));
        assert_eq!(none.probes.get(), 0);
        let hangs = FakeHost::new(true, false);
        assert_eq!(run(Accel::Kvm, &hangs, None).0.domain_type, "kvm");
        assert!(run(Accel::Tcg, &FakeHost::new(true, true), None).0.is_tcg());
        assert_eq!(hangs.probes.get(), 0);
    }

    #[test]
    fn cache_lines_round_trip_and_old_lines_still_read() {
        let p = Probed {
            key: "6.1.0-50-amd64:/var/cache/vxlab/images/debian-12/vmlinuz".into(),
            works: true,
            at: 1_764_000_000,
        };
        assert_eq!(Probed::from_line(&p.to_line()), Some(p));
        let old = Probed::from_line("6.1.0:/img/vmlinuz=tcg\n").unwrap();
        assert!(!old.works && old.at == 0);
        assert_eq!(Probed::from_line("garbage"), None);
    }

    #[test]
    fn the_cache_keeps_one_line_per_kernel_so_two_images_do_not_evict_each_other() {
        let probe = |key: &str, works, at| Probed {
            key: key.into(),
            works,
            at,
        };
        let text = with_probe("", &probe("6.1:/a/vmlinuz", false, 1));
        let text = with_probe(&text, &probe("6.1:/b/vmlinuz", false, 2));
        let text = with_probe(&text, &probe("6.1:/a/vmlinuz", true, 3));
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(
            cached_for(&text, "6.1:/a/vmlinuz"),
            Some(probe("6.1:/a/vmlinuz", true, 3))
        );
        assert_eq!(cached_for(&text, "6.1:/b/vmlinuz").unwrap().at, 2);
        assert_eq!(cached_for(&text, "6.1:/c/vmlinuz"), None);
    }
}
