//! Guests as QEMU/KVM virtual machines through libvirt, reached over SSH.
//!
//! Each guest boots the image's kernel directly from a copy-on-write overlay of the base image,
//! with a seed disk that gives it its own SSH host key and root's authorized key, and, for
//! images vxlab built, its name, machine-id and address on the kernel command line (see
//! [`seed`]). Everything per guest lives in `<lab state dir>/guests/<guest>/`, which the lab
//! state records before it is written.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

pub mod accel;
mod boot;
pub mod capacity;
pub mod checksums;
pub mod console;
pub mod image;
pub mod kernel;
pub mod preflight;
mod pump;
pub mod remote;
pub mod seed;
pub mod shell;
pub mod ssh;

use self::accel::Choice;
use self::image::Image;
use self::preflight::KvmNotOpenable;
use self::remote::HostLink;
use self::seed::{GuestKeys, Seeding};
use self::ssh::{Connection, KeyPair};
use crate::driver::{Driver, DriverError};
use crate::guest_command::GuestCommand;
use crate::host::process::{self, Output};
use crate::iproute2::Tools;
use crate::lab::{Accel, Lab};
use crate::plan::{GuestPlan, Plan};
use crate::state::Resource;
use crate::templates::render;

/// How many more times a failed SSH connection is tried, half a second apart.
const SSH_RETRIES: u32 = 20;

/// The TCG translation cache per guest, all of it resident once a boot has filled it. QEMU's
/// default, 1 GiB, was most of a guest's host memory. Measured here (QEMU's CPU time to
/// port 22): 128, 64 and 48 MiB boot alike, 32 MiB costs 5 % more. 48 keeps an idle guest
/// under 250 MB RSS; compiler-heavy work pays a little (the VM test, whose iproute2 builds
/// run in both guests, took 328 s against 308 s with 64 MiB).
pub const TB_CACHE_MIB: u64 = 48;

/// The libvirt driver.
pub struct LibvirtDriver {
    conn: Connect,
    dir: PathBuf,
    image: Option<Image>,
    accel: Accel,
    guests: HashMap<String, (u64, u64)>,
    choice: OnceLock<Choice>,
    client: Mutex<Option<KeyPair>>,
    sessions: Mutex<HashMap<String, Arc<Mutex<Connection>>>>,
    say: Box<dyn Fn(&str) + Send + Sync>,
    /// The host of a class the lab runs on, when it is not this machine: disks are volumes
    /// there and guests are reached through it.
    remote: Option<Arc<HostLink>>,
}

/// Where a guest's domain finds its disks, kernel and console log.
struct GuestDisks {
    /// The image as the domain reads it: its kernel and initrd.
    image: Image,
    /// The guest's overlay.
    disk: PathBuf,
    /// Its seed disk.
    seed: PathBuf,
    /// Where its console is logged.
    console_log: PathBuf,
}

/// Why the driver could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// libvirtd does not answer.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// The host would make every libvirt call slow.
    #[error(transparent)]
    Kvm(#[from] KvmNotOpenable),
}

/// Cannot reach libvirt.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot connect to libvirt at {uri}; is libvirtd running? Start it with \
         `systemctl start libvirtd`, or `virtlogd -d; libvirtd -d` where there is no systemd"
)]
pub struct Unreachable {
    /// The URI.
    pub uri: String,
    /// libvirt's answer.
    #[source]
    pub source: virt::error::Error,
}

/// Lets other users (libvirt's qemu user) pass through directory `d`, adding only the
/// search bits.
fn searchable(d: &Path) -> std::io::Result<()> {
    let mode = std::fs::metadata(d)?.permissions().mode();
    if mode & 0o011 != 0o011 {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode((mode | 0o011) & 0o7777))?;
    }
    Ok(())
}

/// The names of the vxlab domains running in the local system libvirt, whichever lab they
/// belong to; none when libvirt is not there.
pub fn running_guests() -> Vec<String> {
    if !Path::new("/run/libvirt/libvirt-sock").exists() {
        return Vec::new();
    }
    virt::error::clear_error_callback();
    let Ok(conn) = Connect::open(Some(crate::lab::defaults::LIBVIRT_URI)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = conn
        .list_all_domains(0)
        .unwrap_or_default()
        .iter()
        .filter_map(|d| d.get_name().ok())
        .filter(|n| n.starts_with("vxlab-"))
        .collect();
    out.sort();
    out
}

fn err(
    guest: &str,
    what: impl Into<String>,
) -> impl FnOnce(virt::error::Error) -> DriverError + '_ {
    let what = what.into();
    move |e| DriverError::new(guest, what, e)
}

impl LibvirtDriver {
    /// Connects to the lab's libvirt. `image` is needed only to create guests, and with it
    /// the host is checked first (see [`preflight`]); `dir` is the lab's state directory;
    /// `say` prints a line for the user.
    pub fn open(
        lab: &Lab,
        dir: &Path,
        image: Option<Image>,
        say: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Result<Self, OpenError> {
        // The local system daemon runs QEMU as its own user; a remote host or a session
        // daemon is another matter.
        if image.is_some() && lab.libvirt.uri == crate::lab::defaults::LIBVIRT_URI {
            preflight::check_kvm(Path::new("/dev/kvm"), Path::new("/etc/libvirt/qemu.conf"))?;
        }
        // libvirt prints every error itself by default, expected ones ("no such domain") too;
        // vxlab reports the ones that matter.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(&lab.libvirt.uri)).map_err(|source| Unreachable {
            uri: lab.libvirt.uri.clone(),
            source,
        })?;
        if image.is_some() {
            if let Some(warning) = timed_capabilities(&conn) {
                say(&warning);
            }
        }
        Ok(Self::with(lab, dir, image, conn, None, say))
    }

    /// The driver for lab `lab` placed on another host: every libvirt call goes over that
    /// host's connection, the guests are reached through its sshd. `up` has checked the host
    /// (`remote::facts`) before.
    pub fn on_host(
        lab: &Lab,
        dir: &Path,
        image: Option<Image>,
        link: Arc<HostLink>,
        say: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Self {
        let conn = link.conn().clone();
        Self::with(lab, dir, image, conn, Some(link), say)
    }

    fn with(
        lab: &Lab,
        dir: &Path,
        image: Option<Image>,
        conn: Connect,
        remote: Option<Arc<HostLink>>,
        say: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Self {
        LibvirtDriver {
            conn,
            dir: dir.to_path_buf(),
            image,
            accel: lab.libvirt.accel,
            guests: lab
                .guests
                .iter()
                .map(|g| (g.name.clone(), (g.memory_mib, g.vcpus)))
                .collect(),
            choice: OnceLock::new(),
            client: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            say,
            remote,
        }
    }

    /// The host the guests run on, by name; `None` for this machine.
    fn host_name(&self) -> Option<String> {
        self.remote.as_ref().map(|l| l.name().to_string())
    }

    fn guest_dir(&self, g: &GuestPlan) -> PathBuf {
        self.dir.join("guests").join(&g.name)
    }

    /// The lab's client key, generated once.
    fn client_key(&self, guest: &str) -> Result<KeyPair, DriverError> {
        let mut k = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = &*k {
            return Ok(k.clone());
        }
        let key = KeyPair::ensure(&self.dir.join("id_ed25519"), "vxlab")
            .map_err(|e| DriverError::new(guest, "generating the lab's SSH key", e))?;
        *k = Some(key.clone());
        Ok(key)
    }

    fn host_key(&self, g: &GuestPlan) -> Result<KeyPair, DriverError> {
        std::fs::create_dir_all(self.guest_dir(g))
            .map_err(|e| DriverError::new(&g.name, "writing its files", e))?;
        KeyPair::ensure(&self.guest_dir(g).join("ssh_host_ed25519_key"), &g.name)
            .map_err(|e| DriverError::new(&g.name, "generating its SSH host key", e))
    }

    fn run(&self, guest: &str, argv: &[&str]) -> Result<(), DriverError> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let out = process::run(&argv, None)
            .map_err(|e| DriverError::new(guest, format!("running {}", argv[0]), e))?;
        if out.success() {
            Ok(())
        } else {
            Err(DriverError::new(
                guest,
                format!("running {}", argv[0]),
                out.stderr.trim().to_string(),
            ))
        }
    }

    /// The keys guest `g` is given: its own host key and the lab's client key.
    fn guest_keys(&self, g: &GuestPlan) -> Result<GuestKeys, DriverError> {
        let host_key = self.host_key(g)?;
        let client = self.client_key(&g.name)?;
        let host_private = host_key
            .private_text()
            .map_err(|e| DriverError::new(&g.name, "reading its host key", e))?;
        Ok(GuestKeys {
            host_private,
            host_public: host_key.public,
            authorized: client.public,
        })
    }

    /// Writes the overlay and the seed disk: a tar archive for images vxlab built, a NoCloud
    /// `cidata` disk for others.
    fn prepare_disks(
        &self,
        g: &GuestPlan,
        image: &Image,
        keys: &GuestKeys,
    ) -> Result<GuestDisks, DriverError> {
        if let Some(link) = &self.remote {
            return remote::guest::disks(self, link, g, image, keys);
        }
        let dir = self.guest_dir(g);
        let io = |e: std::io::Error| DriverError::new(&g.name, "writing its files", e);
        std::fs::create_dir_all(&dir).map_err(io)?;
        // libvirt's qemu user must reach the disks through directories that are root's alone
        // (0700): they may be searched by others (0711), never listed or written, and the
        // files in them stay 0600 (libvirt gives the disks to its qemu user itself).
        let state_root = self.dir.parent().map(Path::to_path_buf);
        for d in state_root
            .iter()
            .chain([&self.dir, &self.dir.join("guests"), &dir])
        {
            searchable(d).map_err(io)?;
        }
        let overlay = dir.join("disk.qcow2");
        if !overlay.exists() {
            let base = image.disk.to_string_lossy();
            let o = overlay.to_string_lossy();
            self.run(
                &g.name,
                &[
                    "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base, &o,
                ],
            )?;
        }
        // The seed carries the guest's private host key: it is made 0600 before the key
        // goes in (libvirt relabels the disk for the qemu process itself).
        let seed = dir.join("seed.img");
        let _ = std::fs::remove_file(&seed);
        match image.seeding {
            Seeding::Cmdline => {
                let data = seed::tar_seed(keys).map_err(io)?;
                write_private(&seed, &data).map_err(io)?;
            }
            Seeding::NoCloud => self.nocloud_disk(g, keys, &dir, &seed)?,
        }
        Ok(GuestDisks {
            image: image.clone(),
            disk: overlay,
            seed,
            console_log: dir.join("console.log"),
        })
    }

    /// A vfat disk labelled `cidata` with the NoCloud documents, for cloud-init.
    fn nocloud_disk(
        &self,
        g: &GuestPlan,
        keys: &GuestKeys,
        dir: &Path,
        seed: &Path,
    ) -> Result<(), DriverError> {
        let io = |e: std::io::Error| DriverError::new(&g.name, "writing its files", e);
        let docs_dir = dir.join("seed");
        std::fs::create_dir_all(&docs_dir).map_err(io)?;
        std::fs::set_permissions(&docs_dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        let mut files = Vec::new();
        for (name, text) in seed::nocloud_documents(g, keys) {
            let p = docs_dir.join(name);
            std::fs::write(&p, text).map_err(io)?;
            files.push(p.to_string_lossy().into_owned());
        }
        let s = seed.to_string_lossy().into_owned();
        self.run(&g.name, &["mkfs.vfat", "-n", "cidata", "-C", &s, "1024"])?;
        std::fs::set_permissions(seed, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let mut mcopy = vec!["mcopy", "-i", &s];
        mcopy.extend(files.iter().map(String::as_str));
        mcopy.push("::");
        self.run(&g.name, &mcopy)
    }

    fn domain_xml(
        &self,
        plan: &Plan,
        g: &GuestPlan,
        keys: &GuestKeys,
        disks: &GuestDisks,
    ) -> Result<String, DriverError> {
        let image = &disks.image;
        let (memory_mib, vcpus) = self.guests.get(&g.name).copied().unwrap_or((
            crate::lab::defaults::MEMORY_MIB,
            crate::lab::defaults::VCPUS,
        ));
        let cmdline = seed::kernel_cmdline(g, image.seeding, &seed::machine_id(&keys.host_public))
            .map_err(|e| DriverError::new(&g.name, "writing its kernel command line", e))?;
        Ok(DomainSpec {
            plan,
            guest: g,
            image,
            disk: &disks.disk,
            seed: &disks.seed,
            console_log: &disks.console_log,
            memory_mib,
            vcpus,
            domain_type: self.choice().domain_type,
            cmdline: &cmdline,
        }
        .render())
    }

    fn choice(&self) -> &Choice {
        self.choice.get_or_init(|| {
            if let (Some(link), Some(image)) = (&self.remote, &self.image) {
                let kernel = remote::facts::kernel_path(link, image).unwrap_or_default();
                let c = remote::facts::choose_accel(link, self.accel, &kernel);
                (self.say)(&c.reason);
                return c;
            }
            let kernel = self
                .image
                .as_ref()
                .map(|i| i.kernel.clone())
                .unwrap_or_default();
            let cache = accel::cache_file(&self::image::cache_dir());
            let c = accel::choose(self.accel, &kernel, &cache);
            (self.say)(&c.reason);
            c
        })
    }

    fn session(&self, g: &GuestPlan) -> Result<Arc<Mutex<Connection>>, DriverError> {
        if let Some(s) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&g.name)
        {
            return Ok(s.clone());
        }
        let (host_key, client) = (self.host_key(g)?, self.client_key(&g.name)?);
        // Right after boot sshd may answer before cloud-init has put root's key in place, and
        // a guest busy under software emulation can be slow to complete a handshake: retry
        // briefly before giving up. A wrong host key is never retried, nor a guest that lets
        // the connection time out (stopped or frozen: `reset` recreates it).
        let mut tries = 0;
        let conn = loop {
            match self.connect_guest(g, &host_key, &client) {
                Ok(c) => break c,
                Err(e)
                    if tries >= SSH_RETRIES
                        || e.unanswered()
                        || matches!(e, ssh::SshError::HostKeyMismatch { .. }) =>
                {
                    return Err(DriverError::new(&g.name, "connecting over SSH", e));
                }
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        let conn = Arc::new(Mutex::new(conn));
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(g.name.clone(), conn.clone());
        Ok(conn)
    }

    /// Waits for a guest on this machine to answer on port 22, following its console log:
    /// its stages are said, and a kernel that panics is restarted once, then is a failure.
    fn wait_for_boot(&self, g: &GuestPlan, progress: &dyn Fn(&str)) -> Result<(), DriverError> {
        let log = self.guest_dir(g).join("console.log");
        let mut deadline = capacity::BootDeadline::start(
            None,
            self.choice().is_tcg(),
            capacity::HostLoad::read(),
            self.guests.len(),
        );
        let addr = SocketAddr::new(g.underlay.addr(), 22);
        let log_name = log.display().to_string();
        let mut watch = boot::BootWatch::default();
        let open = ssh::retry_until_deadline(
            || deadline.now(),
            || {
                if ssh::port_open(addr) {
                    return Ok(Some(()));
                }
                let console = std::fs::read_to_string(&log).unwrap_or_default();
                self.act_on(g, watch.look(&console), &log_name, progress)?;
                Ok(None)
            },
        )?;
        let timeout = deadline.timeout();
        open.map(drop)
            .ok_or_else(|| self.boot_failed(g, &log_name, ssh::SshError::Timeout { addr, timeout }))
    }

    /// Does what a look at a booting guest's console calls for: says a new stage, restarts a
    /// guest whose kernel panicked, or gives up on it.
    pub(in crate::driver::libvirt) fn act_on(
        &self,
        g: &GuestPlan,
        look: boot::Look,
        log: &str,
        progress: &dyn Fn(&str),
    ) -> Result<(), DriverError> {
        let on = self
            .host_name()
            .map_or_else(String::new, |h| format!(" on {h}"));
        match look {
            boot::Look::Same => Ok(()),
            boot::Look::Stage(stage) => {
                progress(&format!("{stage}{on}"));
                Ok(())
            }
            boot::Look::Restart(why) => {
                (self.say)(&format!("{}: {why}; starting it again", g.name));
                progress(&format!("restarting{on}"));
                let dom = Domain::lookup_by_name(&self.conn, &g.instance)
                    .map_err(err(&g.name, "looking up its domain"))?;
                dom.reset()
                    .map_err(err(&g.name, "restarting it after its kernel panicked"))?;
                Ok(())
            }
            boot::Look::Failed(why) => Err(self.boot_failed(g, log, why)),
        }
    }

    /// A guest that did not come up, with the end of its console.
    pub(in crate::driver::libvirt) fn boot_failed(
        &self,
        g: &GuestPlan,
        log: &str,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> DriverError {
        DriverError::new(
            &g.name,
            format!(
                "waiting for it to boot; its console ({log}) ends with:\n{}",
                self.console_tail(g)
            ),
            e,
        )
    }

    /// A new SSH connection to guest `g`: straight to its underlay address on this machine,
    /// through its host's sshd (a `direct-tcpip` channel) on another host.
    fn connect_guest(
        &self,
        g: &GuestPlan,
        host_key: &KeyPair,
        client: &KeyPair,
    ) -> Result<Connection, ssh::SshError> {
        match &self.remote {
            None => Connection::open(g.underlay.addr(), host_key, client),
            Some(link) => remote::guest::connect(link, g, host_key, client),
        }
    }

    /// The last lines of the guest's serial console.
    fn console_tail(&self, g: &GuestPlan) -> String {
        if let Some(link) = &self.remote {
            return remote::guest::console_tail(link, g);
        }
        boot::last_lines(
            &std::fs::read_to_string(self.guest_dir(g).join("console.log")).unwrap_or_default(),
        )
    }
}

/// Everything one guest's domain XML says.
pub struct DomainSpec<'a> {
    /// The lab's plan: the bridge.
    pub plan: &'a Plan,
    /// The guest: name, tap, MAC.
    pub guest: &'a GuestPlan,
    /// Kernel and initrd.
    pub image: &'a Image,
    /// The guest's overlay.
    pub disk: &'a Path,
    /// The guest's seed disk.
    pub seed: &'a Path,
    /// Where its serial console is logged (the console itself is a pty that libvirt streams
    /// to `vxlab console`).
    pub console_log: &'a Path,
    /// Guest memory.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u64,
    /// `kvm` or `qemu` (TCG).
    pub domain_type: &'a str,
    /// The kernel command line.
    pub cmdline: &'a str,
}

impl DomainSpec<'_> {
    /// Renders `templates/domain.xml`.
    pub fn render(&self) -> String {
        render(
            "domain.xml",
            &json!({
                "domain_type": self.domain_type,
                "name": self.guest.instance,
                "memory_mib": self.memory_mib,
                "vcpus": self.vcpus,
                "kernel": self.image.kernel,
                "initrd": self.image.initrd,
                "cmdline": self.cmdline,
                "disk": self.disk,
                "seed": self.seed,
                "bridge": self.plan.bridge,
                "tap": self.guest.host_link,
                "mac": self.guest.underlay_mac.to_string(),
                "console_log": self.console_log,
                "tb_cache_mib": TB_CACHE_MIB,
            }),
        )
    }
}

/// Writes `data` to a new file only root can read.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(data)
}

/// Times libvirt's answer to a capability query, twice when the first is slow; a warning
/// when they were slow.
fn timed_capabilities(conn: &Connect) -> Option<String> {
    let time = || {
        let t = Instant::now();
        let _ = conn.get_domain_capabilities(None, None, None, None, 0);
        t.elapsed()
    };
    let first = time();
    if first <= Duration::from_secs(1) {
        return None;
    }
    preflight::explain_slow_capabilities(first, time())
}

impl Driver for LibvirtDriver {
    fn guest_resources(&self, g: &GuestPlan) -> Vec<Resource> {
        let mut out = vec![Resource::Path {
            path: self.guest_dir(g),
        }];
        // On another host the disks and the console log are volumes there.
        if let Some(host) = self.host_name() {
            out.extend(
                remote::storage::guest_volumes(&g.instance)
                    .into_iter()
                    .map(|name| Resource::Volume {
                        host: host.clone(),
                        pool: remote::storage::POOL.into(),
                        name,
                    }),
            );
        }
        out.push(Resource::Domain {
            name: g.instance.clone(),
            host: self.host_name(),
        });
        out
    }

    fn create_guest(
        &self,
        plan: &Plan,
        g: &GuestPlan,
        progress: &dyn Fn(&str),
    ) -> Result<(), DriverError> {
        let image = self
            .image
            .as_ref()
            .ok_or_else(|| DriverError::new(&g.name, "creating it", "no image was given"))?;
        let running = match Domain::lookup_by_name(&self.conn, &g.instance) {
            Ok(d) => d.is_active().unwrap_or(false).then_some(d),
            Err(_) => None,
        };
        if running.is_none() {
            progress("preparing disks");
            let keys = self.guest_keys(g)?;
            let disks = self.prepare_disks(g, image, &keys)?;
            progress("defining");
            let xml = self.domain_xml(plan, g, &keys, &disks)?;
            let dom = Domain::define_xml(&self.conn, &xml)
                .map_err(err(&g.name, "defining its domain"))?;
            progress("booting");
            dom.create().map_err(err(&g.name, "starting its domain"))?;
        }
        match &self.remote {
            None => self.wait_for_boot(g, progress)?,
            Some(link) => remote::guest::wait_for_ssh(self, link, g, progress)?,
        }
        progress("SSH port open");
        self.session(g)?;
        progress("SSH up");
        Ok(())
    }

    fn exec(&self, g: &GuestPlan, argv: &[String]) -> Result<Output, DriverError> {
        let s = self.session(g)?;
        let s = s.lock().unwrap_or_else(|p| p.into_inner());
        s.exec(argv)
            .map_err(|e| DriverError::new(&g.name, format!("running {}", argv[0]), e))
    }

    fn exec_batch(
        &self,
        g: &GuestPlan,
        tools: &Tools,
        cmds: &[GuestCommand],
        stop_on_failure: bool,
    ) -> Result<Vec<Output>, DriverError> {
        let argvs: Vec<Vec<String>> = cmds.iter().map(|c| c.argv(tools)).collect();
        let s = self.session(g)?;
        let s = s.lock().unwrap_or_else(|p| p.into_inner());
        s.exec_batch(&argvs, stop_on_failure)
            .map_err(|e| DriverError::new(&g.name, format!("running {} commands", cmds.len()), e))
    }

    fn upload(&self, g: &GuestPlan, local: &Path, remote: &Path) -> Result<(), DriverError> {
        let s = self.session(g)?;
        let s = s.lock().unwrap_or_else(|p| p.into_inner());
        s.upload(local, remote).map_err(|e| {
            DriverError::new(
                &g.name,
                format!("copying {} to {}", local.display(), remote.display()),
                e,
            )
        })
    }

    fn remove(&self, r: &Resource) -> Result<bool, DriverError> {
        if let (Resource::Volume { name, .. }, Some(link)) = (r, &self.remote) {
            return remote::guest::remove_volume(link, name);
        }
        let Resource::Domain { name, .. } = r else {
            return Ok(false);
        };
        let dom = match Domain::lookup_by_name(&self.conn, name) {
            Ok(d) => d,
            Err(e) if e.code() == ErrorNumber::NoDomain => return Ok(false),
            Err(e) => return Err(err(name, "looking up its domain")(e)),
        };
        if dom.is_active().unwrap_or(false) {
            // Guests mask nothing that would make a shutdown quick; a lab guest has no state
            // worth a clean shutdown.
            dom.destroy().map_err(err(name, "stopping its domain"))?;
        }
        dom.undefine().map_err(err(name, "undefining its domain"))?;
        Ok(true)
    }

    fn guest_exists(&self, g: &GuestPlan) -> bool {
        Domain::lookup_by_name(&self.conn, &g.instance)
            .is_ok_and(|d| d.is_active().unwrap_or(false))
    }

    fn parallel_commands(&self) -> usize {
        self.guests.len().max(1)
    }

    fn spawn(
        &self,
        g: &GuestPlan,
        launch: &crate::terminal::Launch,
    ) -> Result<crate::terminal::GuestProcess, DriverError> {
        shell::spawn(self, g, launch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_yaml::Value;

    fn seed_plan() -> Plan {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/labs/two-vm.yaml"))
                .unwrap();
        crate::plan::plan(&crate::lab::parse(&text, Path::new("two-vm.yaml")).unwrap())
    }

    fn image(dir: &str) -> Image {
        Image {
            disk: PathBuf::from(dir).join("base.qcow2"),
            kernel: PathBuf::from(dir).join("vmlinuz"),
            initrd: PathBuf::from(dir).join("initrd.img"),
            seeding: Seeding::Cmdline,
        }
    }

    fn render_vm_a(dir: &str, domain_type: &str) -> String {
        let p = seed_plan();
        let g = p.guest("vm-a").unwrap();
        let d = PathBuf::from(dir);
        let cmdline = seed::kernel_cmdline(g, Seeding::Cmdline, "0123").unwrap();
        DomainSpec {
            plan: &p,
            guest: g,
            image: &image(dir),
            disk: &d.join("disk.qcow2"),
            seed: &d.join("seed.img"),
            console_log: &d.join("console.log"),
            memory_mib: 768,
            vcpus: 2,
            domain_type,
            cmdline: &cmdline,
        }
        .render()
    }

    fn attr<'a>(doc: &'a roxmltree::Document, parent: &str, tag: &str, name: &str) -> Vec<&'a str> {
        doc.descendants()
            .filter(|n| n.has_tag_name(tag) && n.parent().is_some_and(|p| p.has_tag_name(parent)))
            .filter_map(|n| n.attribute(name))
            .collect()
    }

    #[test]
    fn the_domain_xml_carries_what_the_lab_says() {
        let xml = render_vm_a("/var/lib/vxlab/two-vm/guests/vm-a", "qemu");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("type"), Some("qemu"));
        let text = |tag: &str| {
            doc.descendants()
                .find(|n| n.has_tag_name(tag))
                .and_then(|n| n.text())
                .unwrap()
        };
        assert_eq!(text("name"), "vxlab-two-vm.vm-a");
        assert_eq!(text("memory"), "768");
        assert_eq!(text("vcpu"), "2");
        assert!(text("cmdline").contains("net.ifnames=0"));
        assert!(text("cmdline").contains("systemd.hostname=vm-a"));
        assert_eq!(text("tb-cache"), TB_CACHE_MIB.to_string());
        // A throwaway overlay skips host flushes; freed guest pages go back to the host.
        assert_eq!(attr(&doc, "disk", "driver", "cache"), ["unsafe"]);
        assert_eq!(
            attr(&doc, "devices", "memballoon", "freePageReporting"),
            ["on"]
        );
        assert_eq!(
            attr(&doc, "disk", "source", "file"),
            [
                "/var/lib/vxlab/two-vm/guests/vm-a/disk.qcow2",
                "/var/lib/vxlab/two-vm/guests/vm-a/seed.img"
            ]
        );
        assert_eq!(attr(&doc, "interface", "source", "bridge"), ["vbr0"]);
        let plan = seed_plan();
        let g = plan.guest("vm-a").unwrap();
        assert_eq!(
            attr(&doc, "interface", "mac", "address"),
            [g.underlay_mac.to_string()]
        );
        assert_eq!(
            attr(&doc, "interface", "target", "dev"),
            [g.host_link.as_str()]
        );
        assert!(doc.descendants().any(|n| n.has_tag_name("tb-cache")));
        // KVM guests get no TCG tuning.
        let kvm = render_vm_a("/x", "kvm");
        assert!(!kvm.contains("tb-cache") && kvm.contains("<domain type='kvm'>"));
    }

    #[test]
    fn paths_that_could_break_the_xml_are_escaped() {
        let evil = "/tmp/a'b<c>&d\"e";
        let xml = render_vm_a(evil, "qemu");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(
            attr(&doc, "disk", "source", "file")[0],
            format!("{evil}/disk.qcow2")
        );
        let kernel = doc
            .descendants()
            .find(|n| n.has_tag_name("kernel"))
            .unwrap();
        assert_eq!(kernel.text(), Some(format!("{evil}/vmlinuz").as_str()));
    }

    #[test]
    fn cloud_init_documents_carry_keys_and_address_and_survive_hostile_values() {
        let key = "ssh-ed25519 AAAAC3Nza vxlab";
        let hostile =
            "-----BEGIN KEY-----\nline: 1 # not a comment\n\"quoted\" 'single' {flow: [x]}\n";
        let user: Value = serde_yaml::from_str(&render(
            "user-data",
            &json!({"hostname": "vm-a", "authorized_key": key, "host_key_private": hostile, "host_key_public": "ssh-ed25519 BBBB vm-a"}),
        ))
        .unwrap();
        assert_eq!(user["hostname"], "vm-a");
        assert_eq!(user["disable_root"], false);
        assert_eq!(user["locale"], false);
        assert_eq!(user["ssh_authorized_keys"][0], key);
        assert_eq!(user["ssh_keys"]["ed25519_private"], hostile);
        assert_eq!(user["ssh_keys"]["ed25519_public"], "ssh-ed25519 BBBB vm-a");

        let g = seed_plan().guest("vm-b").unwrap().clone();
        let net: Value = serde_yaml::from_str(&render(
            "network-config",
            &json!({"interface": g.interface, "mac": g.underlay_mac.to_string(), "address": g.underlay.to_string()}),
        ))
        .unwrap();
        assert_eq!(net["version"], 2);
        assert_eq!(net["ethernets"]["eth0"]["addresses"][0], "192.168.10.3/24");
        assert_eq!(
            net["ethernets"]["eth0"]["match"]["macaddress"],
            g.underlay_mac.to_string()
        );
        let meta: Value = serde_yaml::from_str(&render(
            "meta-data",
            &json!({"instance_id": g.instance, "hostname": "vm-b"}),
        ))
        .unwrap();
        assert_eq!(meta["instance-id"], "vxlab-two-vm.vm-b");
    }
}
