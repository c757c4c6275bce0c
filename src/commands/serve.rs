//! `vxlab serve`: the class server over the labs running in this state directory. The server
//! reaches the labs through [`LocalLabs`], which makes plans, engines and drivers exactly as
//! the other commands do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

use super::{engine, exit, image_for, require_root, resolve, teach};
use crate::driver::Driver;
use crate::engine::Engine;
use crate::host::netlink::Netlink;
use crate::plan::{self, Plan};
use crate::state::StateDir;
use crate::web::{self, Class, Labs, ServeOptions};

/// The labs running on this host, in the state directory of the environment.
pub struct LocalLabs;

impl Labs for LocalLabs {
    fn state(&self) -> StateDir {
        StateDir::from_env()
    }

    fn running(&self) -> Vec<String> {
        StateDir::from_env().labs()
    }

    fn plan(&self, lab: &str) -> Result<Plan> {
        Ok(plan::plan(&resolve(Some(Path::new(lab)))?.0))
    }

    fn engine(&self, lab: &str) -> Result<Engine> {
        let (lab, _) = resolve(Some(Path::new(lab)))?;
        // Without its image a libvirt lab is still checked and reset; only a guest that must
        // be created anew then fails, and says why.
        let image = image_for(&lab).ok().flatten();
        engine(&lab, image)
    }

    fn driver(&self, lab: &str) -> Result<Box<dyn Driver>> {
        let (lab, _) = resolve(Some(Path::new(lab)))?;
        super::driver(&lab, &Arc::new(Netlink::open()?), None)
    }

    fn graph_svg(&self, plan: &Plan) -> Result<Vec<u8>> {
        teach::svg(plan)
    }
}

/// Options of `vxlab serve`, as given on the command line.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Terminals per token.
    pub terminals: usize,
    /// Seconds after which an idle terminal is closed.
    pub idle_secs: u64,
    /// Seconds between two reads of each lab's fence when nothing else happens.
    pub fence_secs: u64,
}

/// Where a running server records its process and address: in vxlab's runtime directory
/// (gone at reboot, never in the labs' state), one file per state directory, named by a hash
/// of its path.
fn record_path(state: &StateDir) -> PathBuf {
    use sha2::{Digest, Sha256};
    let root = std::fs::canonicalize(state.root()).unwrap_or_else(|_| state.root().to_path_buf());
    let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Path::new(crate::host::lock::RUN_DIR)
        .join("servers")
        .join(name)
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat`, field 22): with
/// the pid it names one process, never a later one that reused the number.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count fields after its end.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Records this server's process and address for `sheet`.
fn write_record(state: &StateDir, base: &str) -> std::io::Result<()> {
    let path = record_path(state);
    if let Some(dir) = path.parent() {
        crate::host::files::private_dir(dir)?;
    }
    let me = std::process::id();
    let record = format!("{me} {} {base}\n", start_time(me).unwrap_or_default());
    crate::host::files::write_replacing(&path, record.as_bytes(), crate::host::files::PRIVATE)
}

/// The server record: the process, when it started, and the address it printed.
fn record(state: &StateDir) -> Option<(u32, u64, String)> {
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut crate::host::files::open_no_follow(&record_path(state)).ok()?,
        &mut text,
    )
    .ok()?;
    let mut words = text.split_whitespace();
    let (pid, started, url) = (words.next()?, words.next()?, words.next()?);
    Some((pid.parse().ok()?, started.parse().ok()?, url.to_string()))
}

/// The address of the class server running for `state`'s labs, as it printed it: recorded
/// by the server, and only while that very process lives.
pub fn running_server(state: &StateDir) -> Option<String> {
    let (pid, started, url) = record(state)?;
    let alive = start_time(pid).is_some_and(|t| t == started);
    let url_ok = (url.starts_with("http://") || url.starts_with("https://"))
        && !url.contains(|c: char| c.is_whitespace() || c == '"' || c == '<');
    (alive && url_ok).then_some(url)
}

/// `vxlab serve [--listen ADDR] [--tls-cert FILE --tls-key FILE]`
pub fn serve(args: &ServeArgs) -> Result<u8> {
    require_root("serve")?;
    // One server per state directory: the sheet's links and the tokens' one reader.
    if let Some(url) = running_server(&StateDir::from_env()) {
        bail!(
            "a class server already serves the labs of this state directory, at {url}; stop it \
             first (or set VXLAB_STATE_DIR for other labs)"
        );
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    if !args.listen.ip().is_loopback() && tls.is_none() {
        eprintln!(
            "warning: serving plain HTTP on {}: the secret links cross the network in the \
             clear; --tls-cert and --tls-key serve HTTPS",
            args.listen
        );
    }
    let options = ServeOptions {
        listen: args.listen,
        tls,
        terminals_per_token: args.terminals.max(1),
        terminal_idle: Duration::from_secs(args.idle_secs.max(1)),
        fence_every: Duration::from_secs(args.fence_secs.max(1)),
    };
    let class = Class::new(Arc::new(LocalLabs), options)?;
    let state = StateDir::from_env();
    let listen = args.listen;
    let served = web::serve(class, |url| {
        // `vxlab sheet` prints links to this server while it runs, when students can use
        // the address as it is (not 0.0.0.0: the students' way here is not known).
        let base = url.split("/t/").next().unwrap_or(url);
        let students = if listen.ip().is_unspecified() {
            let scheme = base.split("://").next().unwrap_or("http");
            format!(
                "students: `vxlab sheet LAB --url {scheme}://THIS-HOST:{}` prints each copy's \
                 own link, THIS-HOST being this machine's name or address as students reach it",
                listen.port()
            )
        } else {
            if let Err(e) = write_record(&state, base) {
                eprintln!(
                    "vxlab serve: `vxlab sheet` will need --url: cannot record this server: {e}"
                );
            }
            "students: `vxlab sheet LAB` prints each copy's own link to this server (`--url` \
             when students reach it by another address)"
                .to_string()
        };
        println!(
            "vxlab class server for the labs in {}",
            state.root().display()
        );
        println!("instructor: {url}");
        println!("{students}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    });
    // The server has stopped: its record goes with it (one left by a killed server names a
    // process that is gone, and is not believed).
    if record(&state).is_some_and(|(pid, _, _)| pid == std::process::id()) {
        let _ = std::fs::remove_file(record_path(&state));
    }
    served?;
    Ok(exit::OK)
}
