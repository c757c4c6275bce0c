//! What a guest is told about itself at boot, in one of two ways.
//!
//! Images vxlab builds ([`Seeding::Cmdline`]) boot straight into their `vxlab.target` and
//! learn who they are from the kernel command line: systemd sets the hostname and machine-id
//! from it with no extra process, and the image's seed unit names and addresses the underlay
//! interface from `vxlab.underlay=`. Their two SSH keys come from a tar archive on a raw
//! second disk that the same unit unpacks before sshd starts. The private host key never goes
//! on the command line: that is visible to every user of the host in QEMU's arguments.
//!
//! Images users bring ([`Seeding::NoCloud`]) get the same facts as cloud-init NoCloud
//! documents on a vfat disk labelled `cidata`.

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::plan::GuestPlan;
use crate::templates::render;

/// How a guest learns who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeding {
    /// Images vxlab builds: identity on the kernel command line, keys in a tar seed.
    Cmdline,
    /// Images users bring: cloud-init NoCloud documents on a `cidata` disk.
    NoCloud,
}

/// The keys a guest is given: the host key vxlab pinned, and the lab's client key.
#[derive(Debug, Clone)]
pub struct GuestKeys {
    /// The guest's private host key, OpenSSH format.
    pub host_private: String,
    /// Its public half, `ssh-ed25519 AAAA... comment`.
    pub host_public: String,
    /// The lab's client key that root accepts.
    pub authorized: String,
}

/// A value that cannot go on a kernel command line as one word.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` cannot go on the kernel command line: it must be one word of letters, digits and .:_-=,/")]
pub struct UnsafeWord(pub String);

/// The kernel command line every guest boots with. `no_timer_check`: under emulation on a
/// loaded host the kernel's early check that the IO-APIC timer ticks can miss its window,
/// and the boot then ends in "IO-APIC + timer doesn't work!"; virtual machines skip it.
const BASE_CMDLINE: &str =
    "root=/dev/vda rw console=ttyS0 net.ifnames=0 biosdevname=0 quiet no_timer_check";

/// The kernel command line of guest `g`. With [`Seeding::Cmdline`] it boots the image's
/// `vxlab.target` and carries the guest's hostname, machine-id, and underlay interface (name,
/// MAC, address); `cloud-init=disabled` spares the boot cloud-init's generator.
/// Images users bring get the plain command line: their own boot does the rest.
pub fn kernel_cmdline(
    g: &GuestPlan,
    seeding: Seeding,
    machine_id: &str,
) -> Result<String, UnsafeWord> {
    if seeding == Seeding::NoCloud {
        return Ok(BASE_CMDLINE.to_string());
    }
    let mac = g.underlay_mac.to_string();
    let words = [
        "systemd.unit=vxlab.target".to_string(),
        "cloud-init=disabled".to_string(),
        // The kernel's crypto self-tests cost a third of a second of every emulated boot.
        "cryptomgr.notests".to_string(),
        format!("systemd.hostname={}", g.name),
        format!("systemd.machine_id={machine_id}"),
        format!("vxlab.underlay={},{mac},{}", g.interface, g.underlay),
    ];
    for w in &words {
        if !is_one_word(w) {
            return Err(UnsafeWord(w.clone()));
        }
    }
    Ok(format!("{BASE_CMDLINE} {}", words.join(" ")))
}

fn is_one_word(w: &str) -> bool {
    !w.is_empty()
        && w.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'_' | b'-' | b'=' | b',' | b'/')
        })
}

/// A machine-id for the guest whose public host key is `host_public`: 32 hex digits, unique
/// per guest since every guest's host key is generated for it, and stable while it lives.
pub fn machine_id(host_public: &str) -> String {
    let digest = Sha256::digest(host_public.trim().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The tar seed: the host key at `/etc/ssh`, root's authorized key, owned by root with the
/// modes sshd insists on. It is written to a raw disk as it is; tar pads it to whole blocks.
pub fn tar_seed(keys: &GuestKeys) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let entries: [(&str, tar::EntryType, u32, String); 4] = [
        (
            "etc/ssh/ssh_host_ed25519_key",
            tar::EntryType::Regular,
            0o600,
            keys.host_private.clone(),
        ),
        (
            "etc/ssh/ssh_host_ed25519_key.pub",
            tar::EntryType::Regular,
            0o644,
            format!("{}\n", keys.host_public.trim()),
        ),
        ("root/.ssh", tar::EntryType::Directory, 0o700, String::new()),
        (
            "root/.ssh/authorized_keys",
            tar::EntryType::Regular,
            0o600,
            format!("{}\n", keys.authorized.trim()),
        ),
    ];
    for (path, kind, mode, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        tar.append_data(&mut h, path, data.as_bytes())?;
    }
    tar.into_inner()
}

/// The NoCloud documents for guest `g`: `user-data`, `meta-data`, `network-config`.
pub fn nocloud_documents(g: &GuestPlan, keys: &GuestKeys) -> [(&'static str, String); 3] {
    [
        (
            "user-data",
            render(
                "user-data",
                &json!({
                    "hostname": g.name,
                    "authorized_key": keys.authorized,
                    "host_key_private": keys.host_private,
                    "host_key_public": keys.host_public,
                }),
            ),
        ),
        (
            "meta-data",
            render(
                "meta-data",
                &json!({"instance_id": g.instance, "hostname": g.name}),
            ),
        ),
        (
            "network-config",
            render(
                "network-config",
                &json!({
                    "interface": g.interface,
                    "mac": g.underlay_mac.to_string(),
                    "address": g.underlay.to_string(),
                }),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::path::Path;

    fn seed_guest(name: &str) -> GuestPlan {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/labs/two-vm.yaml"))
                .unwrap();
        let lab = crate::lab::parse(&text, Path::new("two-vm.yaml")).unwrap();
        crate::plan::plan(&lab).guest(name).unwrap().clone()
    }

    fn keys() -> GuestKeys {
        GuestKeys {
            host_private:
                "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
                    .into(),
            host_public: "ssh-ed25519 AAAAhost vm-a".into(),
            authorized: "ssh-ed25519 AAAAclient vxlab".into(),
        }
    }

    #[test]
    fn vm_b_is_told_its_name_id_interface_and_address_on_the_command_line() {
        let g = seed_guest("vm-b");
        let id = machine_id("ssh-ed25519 AAAAhost vm-b");
        let line = kernel_cmdline(&g, Seeding::Cmdline, &id).unwrap();
        let words: Vec<&str> = line.split(' ').collect();
        for w in [
            "root=/dev/vda",
            "net.ifnames=0",
            "systemd.unit=vxlab.target",
            "cloud-init=disabled",
            "systemd.hostname=vm-b",
            &format!("systemd.machine_id={id}"),
            &format!("vxlab.underlay=eth0,{},192.168.10.3/24", g.underlay_mac),
        ] {
            assert!(words.contains(&w), "{w} missing from {line}");
        }
    }

    #[test]
    fn an_ipv6_underlay_keeps_its_prefix() {
        let mut g = seed_guest("vm-a");
        g.underlay = "fd00:10::2/64".parse().unwrap();
        let line = kernel_cmdline(&g, Seeding::Cmdline, "00").unwrap();
        assert!(line.ends_with(&format!(
            "vxlab.underlay=eth0,{},fd00:10::2/64",
            g.underlay_mac
        )));
    }

    #[test]
    fn images_users_bring_get_a_plain_command_line() {
        let line = kernel_cmdline(&seed_guest("vm-a"), Seeding::NoCloud, "x").unwrap();
        assert!(
            !line.contains("vxlab") && !line.contains("cloud-init"),
            "{line}"
        );
    }

    #[test]
    fn nothing_that_could_split_the_command_line_gets_on_it() {
        let mut g = seed_guest("vm-a");
        g.name = "vm-a rd.break".into();
        assert!(kernel_cmdline(&g, Seeding::Cmdline, "00").is_err());
        let mut g = seed_guest("vm-a");
        g.interface = "eth0\"".into();
        assert!(kernel_cmdline(&g, Seeding::Cmdline, "00").is_err());
    }

    #[test]
    fn machine_ids_are_32_hex_digits_and_differ_between_guests() {
        let a = machine_id("ssh-ed25519 AAAAone vm-a");
        let b = machine_id("ssh-ed25519 AAAAtwo vm-b");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn the_tar_seed_puts_both_keys_where_sshd_reads_them_owned_by_root() {
        let data = tar_seed(&keys()).unwrap();
        assert_eq!(data.len() % 512, 0, "a raw disk is made of whole sectors");
        let mut archive = tar::Archive::new(data.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut text = String::new();
            e.read_to_string(&mut text).unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0), "{path}");
            seen.push((path, h.mode().unwrap(), text));
        }
        let find = |p: &str| {
            seen.iter()
                .find(|(q, _, _)| q.trim_end_matches('/') == p)
                .unwrap()
        };
        assert_eq!(find("etc/ssh/ssh_host_ed25519_key").1, 0o600);
        assert!(find("etc/ssh/ssh_host_ed25519_key")
            .2
            .contains("OPENSSH PRIVATE KEY"));
        assert_eq!(find("root/.ssh").1, 0o700);
        assert_eq!(find("root/.ssh/authorized_keys").1, 0o600);
        assert_eq!(
            find("root/.ssh/authorized_keys").2,
            "ssh-ed25519 AAAAclient vxlab\n"
        );
    }
}
