//! Host conditions that make every libvirt call slow, found before `up` touches anything.
//!
//! When `/dev/kvm` exists but libvirt's QEMU user cannot open it (a host without udev leaves
//! it `root:root 0600`), libvirt finds KVM "enabled when probing QEMU but not available now",
//! throws its capability cache away and probes QEMU again on every API call: about 4 s each,
//! and an `up` of minutes. vxlab checks the device's owner, group and mode against the QEMU
//! user libvirt runs guests as, and times the first capability query to catch what else might
//! cause the same.

use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// A device node's owner, group and permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// Owner's uid.
    pub uid: u32,
    /// Group's gid.
    pub gid: u32,
    /// Permission bits (`0o660`).
    pub mode: u32,
}

/// Who QEMU runs as under libvirt: the user, and every group it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuUser {
    /// User name, for messages.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// The group libvirt gives it and its supplementary groups.
    pub gids: Vec<u32>,
}

/// `/dev/kvm` exists and libvirt's QEMU user cannot open it.
#[derive(Debug, thiserror::Error)]
#[error(
    "/dev/kvm is mode {mode:04o}, owner {owner}, group {group}: libvirt's QEMU user {user} cannot \
     open it, so libvirt probes QEMU again on every call (about 4 s each) and `up` takes \
     minutes. Give it the group and mode udev would: `chgrp kvm /dev/kvm && chmod 0660 \
     /dev/kvm` (scripts/setup-host.sh does this)"
)]
pub struct KvmNotOpenable {
    /// The device's permission bits.
    pub mode: u32,
    /// Its owner's name.
    pub owner: String,
    /// Its group's name.
    pub group: String,
    /// The QEMU user.
    pub user: String,
}

/// Whether `who` may open `node` for reading and writing, by the owner, group and other bits
/// in that order. Root gets no exception: libvirt drops QEMU's capabilities.
pub fn can_read_write(node: Node, who: &QemuUser) -> bool {
    let bits = if node.uid == who.uid {
        node.mode >> 6
    } else if who.gids.contains(&node.gid) {
        node.mode >> 3
    } else {
        node.mode
    };
    bits & 0o6 == 0o6
}

/// The `user` and `group` settings of libvirt's `qemu.conf`, when set.
pub fn qemu_conf_identity(text: &str) -> (Option<String>, Option<String>) {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
    };
    (value("user"), value("group"))
}

/// Checks that libvirt's QEMU user can open `/dev/kvm`, when it exists.
pub fn check_kvm(device: &Path, qemu_conf: &Path) -> Result<(), KvmNotOpenable> {
    let Ok(meta) = std::fs::metadata(device) else {
        return Ok(());
    };
    let node = Node {
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
    };
    let text = std::fs::read_to_string(qemu_conf).unwrap_or_default();
    let (user, group) = qemu_conf_identity(&text);
    // Debian's and Ubuntu's libvirt run QEMU as libvirt-qemu unless qemu.conf says otherwise.
    let Some(who) = lookup_user(user.as_deref().unwrap_or("libvirt-qemu"), group.as_deref()) else {
        // No such user: libvirt runs QEMU as someone vxlab cannot name; nothing to judge.
        return Ok(());
    };
    if can_read_write(node, &who) {
        return Ok(());
    }
    Err(KvmNotOpenable {
        mode: node.mode,
        owner: user_name(node.uid),
        group: group_name(node.gid),
        user: who.name,
    })
}

/// Why libvirt was slow to answer, when vxlab can tell; `None` when it was not slow.
/// `first` is the first capability query's time, `second` a repeat's.
pub fn explain_slow_capabilities(first: Duration, second: Duration) -> Option<String> {
    let limit = Duration::from_secs(1);
    if first <= limit {
        return None;
    }
    Some(if second <= limit {
        format!(
            "libvirt took {:.1} s to answer its first capability query: it probed QEMU once, as \
             it does after libvirtd starts or QEMU changes; the next took {:.2} s",
            first.as_secs_f64(),
            second.as_secs_f64()
        )
    } else {
        format!(
            "warning: libvirt takes {:.1} s and {:.1} s to answer a capability query, so every \
             libvirt call is slow and `up` will be too. It usually means libvirt discards its \
             QEMU capability cache each time (its debug log says \"Outdated cached \
             capabilities\"); /dev/kvm is fine, so look for a QEMU binary or firmware that \
             keeps changing, or restart libvirtd",
            first.as_secs_f64(),
            second.as_secs_f64()
        )
    })
}

fn lookup_user(user: &str, group: Option<&str>) -> Option<QemuUser> {
    let (uid, primary, name) = if let Some(n) = user.strip_prefix('+') {
        let uid: u32 = n.parse().ok()?;
        (uid, passwd_by_uid(uid).map_or(0, |p| p.1), user_name(uid))
    } else {
        let (uid, gid) = passwd_by_name(user)?;
        (uid, gid, user.to_string())
    };
    let configured = match group {
        Some(g) => match g.strip_prefix('+') {
            Some(n) => n.parse().ok()?,
            None => gid_by_name(g)?,
        },
        None => primary,
    };
    let mut gids = supplementary_groups(&name, primary);
    gids.push(configured);
    Some(QemuUser { name, uid, gids })
}

fn passwd_by_name(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    let mut pw: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out = std::ptr::null_mut();
    // SAFETY: every pointer refers to live storage of the sizes given.
    let r = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

fn passwd_by_uid(uid: u32) -> Option<(String, u32)> {
    let mut pw: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out = std::ptr::null_mut();
    // SAFETY: every pointer refers to live storage of the sizes given.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points at a NUL-terminated string inside `buf`.
    let name = unsafe { CStr::from_ptr(pw.pw_name) };
    Some((name.to_string_lossy().into_owned(), pw.pw_gid))
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is plain data; all-zero (null pointers, zero ids) is a valid value that
    // getpwnam_r overwrites.
    unsafe { std::mem::zeroed() }
}

fn group_entry(name: Option<&str>, gid: u32) -> Option<(String, u32)> {
    // SAFETY: group is plain data; all-zero is a valid value that getgr*_r overwrites.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out = std::ptr::null_mut();
    let r = match name {
        Some(n) => {
            let c = CString::new(n).ok()?;
            // SAFETY: every pointer refers to live storage of the sizes given.
            unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) }
        }
        // SAFETY: as above.
        None => unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) },
    };
    if r != 0 || out.is_null() {
        return None;
    }
    // SAFETY: on success gr_name points at a NUL-terminated string inside `buf`.
    let n = unsafe { CStr::from_ptr(gr.gr_name) };
    Some((n.to_string_lossy().into_owned(), gr.gr_gid))
}

fn gid_by_name(name: &str) -> Option<u32> {
    group_entry(Some(name), 0).map(|g| g.1)
}

fn user_name(uid: u32) -> String {
    passwd_by_uid(uid).map_or_else(|| uid.to_string(), |p| p.0)
}

fn group_name(gid: u32) -> String {
    group_entry(None, gid).map_or_else(|| gid.to_string(), |g| g.0)
}

/// The groups `user` belongs to, its primary group `primary` included.
fn supplementary_groups(user: &str, primary: u32) -> Vec<u32> {
    let Ok(c) = CString::new(user) else {
        return vec![primary];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let asked = n;
        // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many and sets
        // `n` to the number it found.
        let r = unsafe { libc::getgrouplist(c.as_ptr(), primary, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        if n <= asked {
            return vec![primary];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libvirt_qemu() -> QemuUser {
        // Debian: libvirt-qemu, primary group kvm (108), also in its own group.
        QemuUser {
            name: "libvirt-qemu".into(),
            uid: 64055,
            gids: vec![108, 64055],
        }
    }

    #[test]
    fn a_fresh_hosts_root_only_kvm_is_refused_and_udevs_kvm_group_is_fine() {
        let fresh = Node {
            uid: 0,
            gid: 0,
            mode: 0o600,
        };
        assert!(!can_read_write(fresh, &libvirt_qemu()));
        let udev = Node {
            uid: 0,
            gid: 108,
            mode: 0o660,
        };
        assert!(can_read_write(udev, &libvirt_qemu()));
        // Read-only for the group is not enough: KVM needs read and write.
        assert!(!can_read_write(
            Node {
                mode: 0o640,
                ..udev
            },
            &libvirt_qemu()
        ));
        // World-writable works for anyone.
        assert!(can_read_write(
            Node {
                mode: 0o666,
                ..fresh
            },
            &libvirt_qemu()
        ));
    }

    #[test]
    fn qemu_as_root_owns_a_root_device() {
        let root = QemuUser {
            name: "root".into(),
            uid: 0,
            gids: vec![0],
        };
        let node = Node {
            uid: 0,
            gid: 0,
            mode: 0o600,
        };
        assert!(can_read_write(node, &root));
    }

    #[test]
    fn qemu_conf_settings_are_read_and_comments_ignored() {
        let text = "#user = \"qemu\"\n# group = \"x\"\nuser = \"+0\"\ngroup=\"kvm\"\n";
        assert_eq!(
            qemu_conf_identity(text),
            (Some("+0".into()), Some("kvm".into()))
        );
        assert_eq!(
            qemu_conf_identity("#user = \"libvirt-qemu\"\n"),
            (None, None)
        );
    }

    #[test]
    fn a_slow_first_query_is_a_one_off_probe_but_two_slow_ones_are_a_warning() {
        let s = Duration::from_secs_f64;
        assert_eq!(explain_slow_capabilities(s(0.02), s(0.02)), None);
        let once = explain_slow_capabilities(s(3.9), s(0.02)).unwrap();
        assert!(once.contains("probed QEMU once"), "{once}");
        let every = explain_slow_capabilities(s(4.1), s(3.8)).unwrap();
        assert!(every.contains("every libvirt call is slow"), "{every}");
    }

    #[test]
    fn the_refusal_says_what_to_run() {
        let e = KvmNotOpenable {
            mode: 0o600,
            owner: "root".into(),
            group: "root".into(),
            user: "libvirt-qemu".into(),
        }
        .to_string();
        assert!(e.contains("mode 0600, owner root, group root"), "{e}");
        assert!(
            e.contains("chgrp kvm /dev/kvm && chmod 0660 /dev/kvm"),
            "{e}"
        );
        assert!(e.contains("scripts/setup-host.sh"), "{e}");
    }
}
