//! What a host has, read through its [`HostLink`]: libvirt's version, CPUs, memory and CPU
//! load from libvirt's node calls, the image's volumes from its storage pool, and what libvirt
//! cannot tell (`/dev/kvm` for the QEMU user, the programs vxlab needs, checksums) in one
//! batch over SSH. The judging is pure ([`crate::hosts::survey`]).

use std::collections::HashMap;
use std::ffi::CStr;
use std::path::Path;
use std::time::Duration;

use virt::connect::Connect;

use super::command::{self, HostCommand};
use super::storage;
use super::HostLink;
use crate::driver::libvirt::accel::{self, Choice, KvmProbe};
use crate::driver::libvirt::capacity::{self, HostLoad};
use crate::driver::libvirt::checksums::{self, Checksums, FileStamp};
use crate::driver::libvirt::image::{self, Image};
use crate::driver::libvirt::preflight::{self, QemuUser};
use crate::hosts::survey::{Fit, ImageState, KvmAccess, Reached};
use crate::lab::{Accel, Lab};

/// Programs vxlab runs on a host: `ip` for its routes, `tcpdump` for captures, `qemu-img`
/// for libvirt's overlays (libvirt runs it itself), `iptables` and `ip6tables` for the fence
/// around each lab's bridge.
pub const PROGRAMS: [&str; 5] = ["ip", "tcpdump", "qemu-img", "iptables", "ip6tables"];

/// Reads every `name value` pair of a libvirt node statistics call.
macro_rules! node_stats {
    ($conn:expr, $call:path, $ty:ty, $all:expr) => {{
        let conn: &Connect = $conn;
        let mut n: libc::c_int = 0;
        // SAFETY: with a null array libvirt only writes the number of fields into `n`.
        let r = unsafe { $call(conn.as_ptr(), $all, std::ptr::null_mut(), &mut n, 0) };
        if r == -1 {
            Err(virt::error::Error::last_error())
        } else {
            // SAFETY: a name of 80 zero bytes and a zero value: plain data, valid as zeros.
            let empty: $ty = unsafe { std::mem::zeroed() };
            let mut params = vec![empty; n.max(0) as usize];
            // SAFETY: `params` holds `n` entries, which libvirt fills.
            let r = unsafe { $call(conn.as_ptr(), $all, params.as_mut_ptr(), &mut n, 0) };
            if r == -1 {
                Err(virt::error::Error::last_error())
            } else {
                Ok(params
                    .iter()
                    .take(n.max(0) as usize)
                    .map(|p| {
                        // SAFETY: libvirt writes a NUL-terminated name into the 80-byte field.
                        let name = unsafe { CStr::from_ptr(p.field.as_ptr()) };
                        (name.to_string_lossy().into_owned(), p.value as u64)
                    })
                    .collect::<HashMap<String, u64>>())
            }
        }
    }};
}

/// Memory available on the host (free, buffers, page cache), MiB.
fn available_mib(conn: &Connect) -> Result<u64, virt::error::Error> {
    let kib = node_stats!(
        conn,
        virt::sys::virNodeGetMemoryStats,
        virt::sys::virNodeMemoryStats,
        virt::sys::VIR_NODE_MEMORY_STATS_ALL_CELLS
    )?;
    let get = |k: &str| kib.get(k).copied().unwrap_or(0);
    Ok((get("free") + get("buffers") + get("cached")) / 1024)
}

/// Cores busy now, from two readings of the host's CPU times a fifth of a second apart.
fn busy_cores(conn: &Connect) -> Result<f64, virt::error::Error> {
    let read = || {
        node_stats!(
            conn,
            virt::sys::virNodeGetCPUStats,
            virt::sys::virNodeCPUStats,
            virt::sys::VIR_NODE_CPU_STATS_ALL_CPUS
        )
    };
    let busy = |s: &HashMap<String, u64>| {
        ["kernel", "user"]
            .iter()
            .map(|k| s.get(*k).copied().unwrap_or(0))
            .sum::<u64>()
    };
    let interval = Duration::from_millis(200);
    let a = read()?;
    std::thread::sleep(interval);
    let b = read()?;
    let ns = busy(&b).saturating_sub(busy(&a));
    Ok(ns as f64 / interval.as_nanos() as f64)
}

/// What the host has free now, as the capacity plan reads it.
pub fn host_load(link: &HostLink) -> Result<HostLoad, virt::error::Error> {
    let conn = link.conn();
    Ok(HostLoad {
        cores: conn.get_node_info()?.cpus as usize,
        load: busy_cores(conn)?,
        available_mib: available_mib(conn)?,
    })
}

/// libvirt's version on the host, as `9.0.0`.
pub fn libvirt_version(link: &HostLink) -> Result<String, virt::error::Error> {
    let v = link.conn().get_lib_version()?;
    Ok(format!(
        "{}.{}.{}",
        v / 1_000_000,
        v / 1000 % 1000,
        v % 1000
    ))
}

/// The image's volumes on the host: present with this machine's sizes, or what is missing or
/// different, compared by checksum with `sums` (this machine's SHA-256 of disk, kernel and
/// initrd). A volume's checksum is taken on the host only when the volume changed since
/// it was last taken ([`Checksums`]).
pub fn image_state(link: &HostLink, image: &Image, sums: &[String; 3]) -> ImageState {
    let files = storage::image_files(image);
    let pool = match storage::pool(link.conn()) {
        Ok(Some(p)) => p,
        Ok(None) => return ImageState::Missing(files.map(|f| f.volume).to_vec()),
        Err(e) => return ImageState::Unknown(e.message().to_string()),
    };
    let _ = pool.refresh(0);
    let mut missing = Vec::new();
    let mut different = Vec::new();
    // Each volume's path on the host, and what its checksum is remembered by.
    let mut found: Vec<(String, Option<FileStamp>)> = Vec::new();
    for f in &files {
        match storage::volume(&pool, &f.volume) {
            Ok(Some(v)) => {
                let here = std::fs::metadata(&f.local).map(|m| m.len()).unwrap_or(0);
                match (storage::physical_size(&v), v.get_path()) {
                    (Ok(there), Ok(path)) if there == here => {
                        let stamp = v.get_xml_desc(0).ok().and_then(|xml| {
                            Some(FileStamp {
                                size: there,
                                mtime: checksums::volume_mtime(&xml)?,
                            })
                        });
                        found.push((path, stamp));
                    }
                    (Ok(_), Ok(_)) => different.push(f.volume.clone()),
                    (Err(e), _) | (_, Err(e)) => {
                        return ImageState::Unknown(e.message().to_string())
                    }
                }
            }
            Ok(None) => missing.push(f.volume.clone()),
            Err(e) => return ImageState::Unknown(e.message().to_string()),
        }
    }
    if !missing.is_empty() {
        return ImageState::Missing(missing);
    }
    if !different.is_empty() {
        return ImageState::Different(different);
    }
    let record = Checksums::in_image_cache();
    let key = |path: &str| format!("{} {path}", link.spec().uri);
    let mut there: Vec<Option<String>> = found
        .iter()
        .map(|(path, stamp)| record.remembered(&key(path), stamp.as_ref()?))
        .collect();
    let unknown: Vec<String> = found
        .iter()
        .zip(&there)
        .filter(|(_, sum)| sum.is_none())
        .map(|((path, _), _)| path.clone())
        .collect();
    if !unknown.is_empty() {
        let out = match link.run(&HostCommand::Checksums(unknown)) {
            Ok(o) => o,
            Err(e) => return ImageState::Unknown(e.to_string()),
        };
        for ((path, stamp), sum) in found.iter().zip(there.iter_mut()) {
            if sum.is_none() {
                *sum = command::checksum_of(&out.stdout, path);
                if let (Some(stamp), Some(s)) = (stamp, sum.as_deref()) {
                    record.remember(&key(path), stamp, s);
                }
            }
        }
    }
    let differ: Vec<String> = files
        .iter()
        .zip(&there)
        .zip(sums)
        .filter(|((_, there), here)| there.as_deref() != Some(here.as_str()))
        .map(|((f, _), _)| f.volume.clone())
        .collect();
    if differ.is_empty() {
        ImageState::Same
    } else {
        ImageState::Different(differ)
    }
}

/// The path of the image's kernel on the host, when its volume is there.
pub fn kernel_path(link: &HostLink, image: &Image) -> Option<String> {
    let pool = storage::pool(link.conn()).ok()??;
    let [_, kernel, _] = storage::image_files(image);
    storage::volume(&pool, &kernel.volume)
        .ok()??
        .get_path()
        .ok()
}

/// Whether libvirt's QEMU user on the host can open `/dev/kvm`, and the programs vxlab needs
/// there that are missing: one SSH batch, and one more to name the QEMU user's groups.
pub fn kvm_and_programs(link: &HostLink) -> (KvmAccess, Vec<&'static str>) {
    let outs = match link.run_batch(&[
        HostCommand::Programs(PROGRAMS.to_vec()),
        HostCommand::KvmNode,
        HostCommand::QemuConf,
    ]) {
        Ok(o) if o.len() == 3 => o,
        Ok(_) => {
            let why = "the batch did not run".to_string();
            return (KvmAccess::Unknown(why), Vec::new());
        }
        Err(e) => return (KvmAccess::Unknown(e.to_string()), Vec::new()),
    };
    let missing = command::missing_programs(&PROGRAMS, &outs[0].stdout);
    let Some(node) = outs[1]
        .success()
        .then(|| command::kvm_node(&outs[1].stdout))
        .flatten()
    else {
        return (KvmAccess::NoDevice, missing);
    };
    let (user, _group) = preflight::qemu_conf_identity(&outs[2].stdout);
    // Debian's and Ubuntu's libvirt run QEMU as libvirt-qemu unless qemu.conf says otherwise.
    let user = user.unwrap_or_else(|| "libvirt-qemu".into());
    let ids = link
        .run(&HostCommand::UserIds(user.clone()))
        .ok()
        .filter(|o| o.success())
        .and_then(|o| command::user_ids(&o.stdout));
    let Some((uid, gids)) = ids else {
        return (
            KvmAccess::Unknown(format!("no user {user} to judge by")),
            missing,
        );
    };
    let who = QemuUser {
        name: user.clone(),
        uid,
        gids,
    };
    let access = if preflight::can_read_write(node, &who) {
        KvmAccess::Usable
    } else {
        KvmAccess::NotOpenable(format!(
            "mode {:04o}, uid {} gid {}: {user} cannot open it, so every libvirt call there \
             is slow; on that host run `chgrp kvm /dev/kvm && chmod 0660 /dev/kvm`",
            node.mode, node.uid, node.gid
        ))
    };
    (access, missing)
}

/// `/dev/kvm` and a probe boot, on the host, over SSH.
struct RemoteProbe<'a> {
    link: &'a HostLink,
}

impl KvmProbe for RemoteProbe<'_> {
    fn device_exists(&self) -> bool {
        self.link
            .run(&HostCommand::KvmNode)
            .is_ok_and(|o| o.success())
    }

    fn kernel_boots(&self, kernel: &Path) -> bool {
        let probe = HostCommand::KvmProbe {
            kernel: kernel.to_string_lossy().into_owned(),
            seconds: accel::PROBE_TIMEOUT.as_secs() as u32,
        };
        self.link
            .run(&probe)
            .is_ok_and(|o| o.stdout.contains("Kernel panic") || o.stdout.contains("VFS:"))
    }
}

/// The accelerator for guests on the host with kernel `kernel` there: as the lab sets it, or
/// probed there once and cached here per host name, host kernel and guest kernel.
pub fn choose_accel(link: &HostLink, setting: Accel, kernel: &str) -> Choice {
    let release = link
        .run(&HostCommand::KernelRelease)
        .map(|o| o.stdout.trim().to_string())
        .unwrap_or_default();
    let key = format!("host {} {release}:{kernel}", link.name());
    let cache = accel::cache_file(&image::cache_dir());
    let mut choice = accel::choose_with(
        setting,
        &RemoteProbe { link },
        Path::new(kernel),
        &key,
        &cache,
    );
    choice.reason = format!("host {}: {}", link.name(), choice.reason);
    choice
}

/// Everything `hosts check` shows of a reachable host; `image` with this machine's checksums
/// of its files, `lab` to count its copies.
pub fn survey(
    link: &HostLink,
    image: Option<(&Image, &[String; 3])>,
    lab: Option<&Lab>,
) -> Result<Reached, String> {
    let fail = |e: virt::error::Error| e.message().to_string();
    let version = libvirt_version(link).map_err(fail)?;
    let load = host_load(link).map_err(fail)?;
    let (kvm, missing) = kvm_and_programs(link);
    let image_state = match image {
        Some((i, sums)) => image_state(link, i, sums),
        None => ImageState::Unknown("no image named".into()),
    };
    let image = image.map(|(i, _)| i);
    let setting = lab.map_or(Accel::Auto, |l| l.libvirt.accel);
    let accel = match image.and_then(|i| kernel_path(link, i)) {
        Some(k) => {
            let c = choose_accel(link, setting, &k);
            let short = if c.is_tcg() { "tcg" } else { "kvm" };
            (short.to_string(), c.reason)
        }
        None => ("?".into(), "the image's kernel is not on the host".into()),
    };
    let fit = lab.map(|l| {
        let memory: Vec<u64> = l.guests.iter().map(|g| g.memory_mib).collect();
        let tcg = accel.0 != "kvm";
        match capacity::plan_class(&l.name, &memory, tcg, 0, &load) {
            Ok(p) => Fit {
                copies: p.fit,
                cost_mib: p.copy_cost_mib,
                // The class's size is not known here: how many the host boots at once.
                width: capacity::boot_width(memory.len(), tcg, &load),
                served: p.served,
            },
            Err(e) => Fit {
                copies: e.fit,
                cost_mib: e.cost,
                width: 1,
                served: 1,
            },
        }
    });
    Ok(Reached {
        libvirt: version,
        cpus: load.cores,
        busy_cores: load.load,
        available_mib: load.available_mib,
        accel,
        image: image_state,
        kvm,
        missing,
        fit,
    })
}
