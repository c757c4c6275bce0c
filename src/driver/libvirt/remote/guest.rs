//! The libvirt driver's guest work where the guest runs on another host: its disks as volumes
//! there (the seed uploaded through a stream), its boot awaited and its SSH reached through
//! the host's sshd, its console log read through a volume download stream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{facts, lost, storage, HostLink};
use crate::driver::libvirt::boot::{last_lines, BootWatch};
use crate::driver::libvirt::image::Image;
use crate::driver::libvirt::seed::{self, GuestKeys, Seeding};
use crate::driver::libvirt::ssh::{self, Connection, KeyPair, SshError};
use crate::driver::libvirt::{capacity, GuestDisks, LibvirtDriver};
use crate::driver::DriverError;
use crate::plan::GuestPlan;

fn on_host(
    link: &HostLink,
    g: &GuestPlan,
    what: &str,
) -> impl Fn(virt::error::Error) -> DriverError {
    let what = format!("{what} on host {}", link.name());
    let guest = g.name.clone();
    move |e| DriverError::new(&guest, what.clone(), e)
}

/// The guest's overlay of the image volume, its seed disk uploaded through a stream, and the
/// place of its console log, all in vxlab's pool on the host.
pub(in crate::driver::libvirt) fn disks(
    driver: &LibvirtDriver,
    link: &HostLink,
    g: &GuestPlan,
    image: &Image,
    keys: &GuestKeys,
) -> Result<GuestDisks, DriverError> {
    let prepare = || {
        format!(
            "the image is not on host {}: run `vxlab hosts prepare` with the inventory",
            link.name()
        )
    };
    let pool = storage::pool(link.conn())
        .map_err(on_host(link, g, "finding vxlab's storage pool"))?
        .ok_or_else(|| DriverError::new(&g.name, "preparing its disks", prepare()))?;
    let [disk, kernel, initrd] = storage::image_files(image);
    let path_of =
        |f: &storage::ImageFile| -> Result<(virt::storage_vol::StorageVol, String), DriverError> {
            let v = storage::volume(&pool, &f.volume)
                .map_err(on_host(link, g, "finding the image"))?
                .ok_or_else(|| DriverError::new(&g.name, "preparing its disks", prepare()))?;
            let p = v
                .get_path()
                .map_err(on_host(link, g, "finding the image"))?;
            Ok((v, p))
        };
    let (base, base_path) = path_of(&disk)?;
    let (_, kernel_path) = path_of(&kernel)?;
    let (_, initrd_path) = path_of(&initrd)?;
    let [overlay_name, seed_name, log_name] = storage::guest_volumes(&g.instance);
    let overlay = storage::ensure_overlay(&pool, &overlay_name, &base).map_err(on_host(
        link,
        g,
        "creating its overlay",
    ))?;
    let data = match image.seeding {
        Seeding::Cmdline => {
            seed::tar_seed(keys).map_err(|e| DriverError::new(&g.name, "writing its seed", e))?
        }
        Seeding::NoCloud => {
            // The vfat disk is made here as for a guest on this machine, then uploaded.
            let dir = driver.guest_dir(g);
            std::fs::create_dir_all(&dir)
                .map_err(|e| DriverError::new(&g.name, "writing its files", e))?;
            let local = dir.join("seed.img");
            let _ = std::fs::remove_file(&local);
            driver.nocloud_disk(g, keys, &dir, &local)?;
            std::fs::read(&local).map_err(|e| DriverError::new(&g.name, "reading its seed", e))?
        }
    };
    let seed = storage::upload(
        link.conn(),
        &pool,
        &seed_name,
        data.len() as u64,
        &mut data.as_slice(),
        &mut |_| {},
    )
    .map_err(|e| {
        DriverError::new(
            &g.name,
            format!("uploading its seed disk to host {}", link.name()),
            e,
        )
    })?;
    let console_log = Path::new(&overlay)
        .parent()
        .unwrap_or(Path::new(storage::POOL_PATH))
        .join(log_name);
    Ok(GuestDisks {
        image: Image {
            disk: PathBuf::from(base_path),
            kernel: PathBuf::from(kernel_path),
            initrd: PathBuf::from(initrd_path),
            seeding: image.seeding,
        },
        disk: PathBuf::from(overlay),
        seed: PathBuf::from(seed),
        console_log,
    })
}

/// Waits until the guest's sshd accepts a connection made from its host: a tunnel opens.
pub(in crate::driver::libvirt) fn wait_for_ssh(
    driver: &LibvirtDriver,
    link: &HostLink,
    g: &GuestPlan,
    progress: &dyn Fn(&str),
) -> Result<(), DriverError> {
    let lost_host = |e: super::JumpError| {
        DriverError::new(
            &g.name,
            format!("waiting for it to boot: host {} was lost", link.name()),
            e,
        )
    };
    // The host's load, not this machine's: a host that cannot say is a host lost.
    let load = facts::host_load(link).map_err(on_host(link, g, "reading the host's load"))?;
    let mut deadline = capacity::BootDeadline::start(
        Some(link.name()),
        driver.choice().is_tcg(),
        load,
        driver.guests.len(),
    );
    let addr = SocketAddr::new(g.underlay.addr(), 22);
    progress(&format!("booting on {}", link.name()));
    // The console log on the host is looked at once a second while sshd does not answer
    // yet: its stage is said, a kernel that panicked is restarted once.
    let log = format!(
        "{} on host {}",
        storage::guest_volumes(&g.instance)[2],
        link.name()
    );
    let mut watch = BootWatch::default();
    let mut look_at = Instant::now() + CONSOLE_LOOK;
    let mut last = None;
    let open = ssh::retry_until_deadline(
        || deadline.now(),
        || match link.jump().tunnel(addr) {
            Ok(_) => Ok(Some(())),
            Err(e) if lost(&e) => Err(lost_host(e)),
            Err(e) => {
                last = Some(e);
                if Instant::now() >= look_at {
                    look_at = Instant::now() + CONSOLE_LOOK;
                    // Only the log's end is read; a log that cannot be read says nothing.
                    let tail = tail(link, g).unwrap_or_default();
                    driver.act_on(g, watch.look(&tail), &log, progress)?;
                }
                Ok(None)
            }
        },
    )?;
    if open.is_none() {
        let timeout = deadline.timeout();
        let why = last.map_or_else(String::new, |e| format!(": {e}"));
        return Err(driver.boot_failed(
            g,
            &log,
            format!(
                "timed out after {} s waiting for ssh on {addr} through host {}{why}",
                timeout.as_secs(),
                link.name()
            ),
        ));
    }
    Ok(())
}

/// An SSH connection to the guest through a `direct-tcpip` channel of its host's sshd, with
/// the guest's pinned host key checked as for any guest.
pub(in crate::driver::libvirt) fn connect(
    link: &HostLink,
    g: &GuestPlan,
    host_key: &KeyPair,
    client: &KeyPair,
) -> Result<Connection, SshError> {
    let addr = SocketAddr::new(g.underlay.addr(), 22);
    let tunnel = link.jump().tunnel(addr).map_err(|e| SshError::Session {
        addr,
        what: "opening a tunnel through its host",
        source: Box::new(e),
    })?;
    Connection::over(tunnel, addr, host_key, client)
}

/// How often a booting guest's console log is looked at on its host.
const CONSOLE_LOOK: Duration = Duration::from_secs(1);

/// How much of the end of a console log is read: more than its last lines take.
const CONSOLE_END: u64 = 4096;

/// The last lines of the guest's console log on its host, read through libvirt (the log is
/// a volume of vxlab's pool there).
fn tail(link: &HostLink, g: &GuestPlan) -> Result<String, virt::error::Error> {
    let log = &storage::guest_volumes(&g.instance)[2];
    let Some(pool) = storage::pool(link.conn())? else {
        return Ok(String::new());
    };
    let bytes = storage::read_end(link.conn(), &pool, log, CONSOLE_END)?.unwrap_or_default();
    Ok(last_lines(&String::from_utf8_lossy(&bytes)))
}

/// The last lines of the guest's console log on its host.
pub(in crate::driver::libvirt) fn console_tail(link: &HostLink, g: &GuestPlan) -> String {
    tail(link, g).unwrap_or_else(|e| format!("(cannot read it: {e})"))
}

/// Deletes a volume of the guest's on its host; false when it was gone.
pub(in crate::driver::libvirt) fn remove_volume(
    link: &HostLink,
    name: &str,
) -> Result<bool, DriverError> {
    let fail = |e: virt::error::Error| {
        DriverError::new(
            name,
            format!("removing volume {name} on host {}", link.name()),
            e,
        )
    };
    match storage::pool(link.conn()).map_err(fail)? {
        None => Ok(false),
        Some(pool) => storage::delete(&pool, name).map_err(fail),
    }
}
