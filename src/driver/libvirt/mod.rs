//! Guests as QEMU/KVM virtual machines through libvirt, reached over SSH.
//!
//! Each guest boots the image's kernel directly from a copy-on-write overlay of the base image,
//! with a NoCloud seed disk (label `cidata`) that gives it its address, hostname, root's
//! authorized key and its own SSH host key. Everything per guest lives in
//! `<lab state dir>/guests/<guest>/`, which the lab state records before it is written.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

pub mod accel;
pub mod image;
pub mod preflight;
pub mod ssh;

use self::accel::Choice;
use self::image::Image;
use self::preflight::KvmNotOpenable;
use self::ssh::{Connection, KeyPair};
use crate::driver::{Driver, DriverError};
use crate::host::process::{self, Output};
use crate::lab::{Accel, Lab};
use crate::plan::{GuestPlan, Plan};
use crate::state::Resource;
use crate::templates::render;

/// How many more times a failed SSH connection is tried, half a second apart.
const SSH_RETRIES: u32 = 20;

/// How long a guest may take from start to SSH: software emulation is slow.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

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
        if image.is_some() {
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
        Ok(LibvirtDriver {
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
        })
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

    /// Writes the overlay and the NoCloud seed disk.
    fn prepare_disks(
        &self,
        g: &GuestPlan,
        image: &Image,
    ) -> Result<(PathBuf, PathBuf), DriverError> {
        let dir = self.guest_dir(g);
        let io = |e: std::io::Error| DriverError::new(&g.name, "writing its files", e);
        std::fs::create_dir_all(dir.join("seed")).map_err(io)?;
        // libvirt's qemu user must reach the disks; the state directory is root's.
        for d in [&self.dir, &self.dir.join("guests"), &dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
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
        let host_key = self.host_key(g)?;
        let client = self.client_key(&g.name)?;
        let private = host_key.private_text().map_err(io)?;
        let docs = [
            (
                "user-data",
                render(
                    "user-data",
                    &json!({
                        "hostname": g.name,
                        "authorized_key": client.public,
                        "host_key_private": private,
                        "host_key_public": host_key.public,
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
                    &json!({"interface": g.interface, "mac": g.underlay_mac.to_string(), "address": g.underlay.to_string()}),
                ),
            ),
        ];
        // The same facts as plain files, for images vxlab builds: their vxlab-seed service
        // applies them in a fraction of cloud-init's time.
        let plain = [
            ("vxlab-hostname", format!("{}\n", g.name)),
            (
                "vxlab-authorized_keys",
                format!("{}\n", client.public.trim()),
            ),
            ("vxlab-ssh_host_ed25519_key", private.clone()),
            (
                "vxlab-ssh_host_ed25519_key.pub",
                format!("{}\n", host_key.public.trim()),
            ),
            ("vxlab-mac", format!("{}\n", g.underlay_mac)),
            ("vxlab-interface", format!("{}\n", g.interface)),
            ("vxlab-address", format!("{}\n", g.underlay)),
        ];
        let docs: Vec<(&str, String)> = docs.into_iter().chain(plain).collect();
        let mut files = Vec::new();
        // user-data carries the guest's private host key: its directory is root's alone, and
        // the seed disk is made 0600 before the documents go in (libvirt relabels the disk
        // for the qemu process itself).
        std::fs::set_permissions(dir.join("seed"), std::fs::Permissions::from_mode(0o700))
            .map_err(io)?;
        for (name, text) in docs {
            let p = dir.join("seed").join(name);
            std::fs::write(&p, text).map_err(io)?;
            files.push(p.to_string_lossy().into_owned());
        }
        let seed = dir.join("seed.img");
        let _ = std::fs::remove_file(&seed);
        let s = seed.to_string_lossy().into_owned();
        self.run(&g.name, &["mkfs.vfat", "-n", "cidata", "-C", &s, "1024"])?;
        std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let mut mcopy = vec!["mcopy", "-i", &s];
        mcopy.extend(files.iter().map(String::as_str));
        mcopy.push("::");
        self.run(&g.name, &mcopy)?;
        Ok((overlay, seed))
    }

    fn domain_xml(
        &self,
        plan: &Plan,
        g: &GuestPlan,
        image: &Image,
        disk: &Path,
        seed: &Path,
    ) -> String {
        let (memory, vcpus) = self.guests.get(&g.name).copied().unwrap_or((512, 1));
        domain_xml(
            plan,
            g,
            image,
            disk,
            seed,
            &self.guest_dir(g).join("console.log"),
            memory,
            vcpus,
            self.choice().domain_type,
        )
    }

    fn choice(&self) -> &Choice {
        self.choice.get_or_init(|| {
            let kernel = self
                .image
                .as_ref()
                .map(|i| i.kernel.clone())
                .unwrap_or_default();
            let cache = self::image::cache_dir().join("accel-probe");
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
        // briefly before giving up. A wrong host key is never retried.
        let mut tries = 0;
        let conn = loop {
            match Connection::open(g.underlay.addr(), &host_key, &client) {
                Ok(c) => break c,
                Err(e)
                    if tries >= SSH_RETRIES
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

    /// The last lines of the guest's serial console.
    fn console_tail(&self, g: &GuestPlan) -> String {
        let text =
            std::fs::read_to_string(self.guest_dir(g).join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(15).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// Renders the domain XML of one guest.
#[allow(clippy::too_many_arguments)]
pub fn domain_xml(
    plan: &Plan,
    g: &GuestPlan,
    image: &Image,
    disk: &Path,
    seed: &Path,
    console_log: &Path,
    memory_mib: u64,
    vcpus: u64,
    domain_type: &str,
) -> String {
    render(
        "domain.xml",
        &json!({
            "domain_type": domain_type,
            "name": g.instance,
            "memory_mib": memory_mib,
            "vcpus": vcpus,
            "kernel": image.kernel,
            "initrd": image.initrd,
            "cmdline": "root=/dev/vda rw console=ttyS0 net.ifnames=0 biosdevname=0 quiet",
            "disk": disk,
            "seed": seed,
            "bridge": plan.bridge,
            "tap": g.host_link,
            "mac": g.underlay_mac.to_string(),
            "console_log": console_log,
        }),
    )
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
        vec![
            Resource::Path {
                path: self.guest_dir(g),
            },
            Resource::Domain {
                name: g.instance.clone(),
            },
        ]
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
            let (disk, seed) = self.prepare_disks(g, image)?;
            progress("defining");
            let xml = self.domain_xml(plan, g, image, &disk, &seed);
            let dom = Domain::define_xml(&self.conn, &xml)
                .map_err(err(&g.name, "defining its domain"))?;
            progress("booting");
            dom.create().map_err(err(&g.name, "starting its domain"))?;
        }
        let log = self.guest_dir(g).join("console.log");
        let mut stage = "booting";
        ssh::wait_for_port(g.underlay.addr(), BOOT_TIMEOUT, &mut || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let now = if text.contains("vxlab-seed") {
                "seeded, starting SSH"
            } else if text.contains("Cloud-init") || text.contains("cloud-init") {
                "cloud-init"
            } else {
                "booting"
            };
            if now != stage {
                stage = now;
                progress(now);
            }
        })
        .map_err(|e| {
            DriverError::new(
                &g.name,
                format!(
                    "waiting for it to boot; its console ({}) ends with:\n{}",
                    log.display(),
                    self.console_tail(g)
                ),
                e,
            )
        })?;
        progress("SSH up");
        self.session(g).map(|_| ())
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
        cmds: &[Vec<String>],
        stop_on_failure: bool,
    ) -> Result<Vec<Output>, DriverError> {
        let s = self.session(g)?;
        let s = s.lock().unwrap_or_else(|p| p.into_inner());
        s.exec_batch(cmds, stop_on_failure)
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
        let Resource::Domain { name } = r else {
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
        }
    }

    fn render_vm_a(dir: &str, domain_type: &str) -> String {
        let p = seed_plan();
        let g = p.guest("vm-a").unwrap();
        let d = PathBuf::from(dir);
        domain_xml(
            &p,
            g,
            &image(dir),
            &d.join("disk.qcow2"),
            &d.join("seed.img"),
            &d.join("console.log"),
            768,
            2,
            domain_type,
        )
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
        assert_eq!(text("name"), "vxlab-two-vm-vm-a");
        assert_eq!(text("memory"), "768");
        assert_eq!(text("vcpu"), "2");
        assert!(text("cmdline").contains("net.ifnames=0"));
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
        assert_eq!(meta["instance-id"], "vxlab-two-vm-vm-b");
    }
}
