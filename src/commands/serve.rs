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
}

/// Where a running server records its process and address, in the state directory.
const SERVER_FILE: &str = "server";

/// The server record: the process and the address it printed.
fn record(state: &StateDir) -> Option<(u32, String)> {
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut crate::host::files::open_no_follow(&state.root().join(SERVER_FILE)).ok()?,
        &mut text,
    )
    .ok()?;
    let (pid, url) = text.trim().split_once(' ')?;
    Some((pid.parse().ok()?, url.to_string()))
}

/// The address of the class server running for `state`'s labs, as it printed it: recorded
/// by the server, and only while its process lives.
pub fn running_server(state: &StateDir) -> Option<String> {
    let (pid, url) = record(state)?;
    let ours = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .zip(std::env::current_exe().ok())
        .is_some_and(|(theirs, mine)| theirs.file_name() == mine.file_name());
    let url_ok = (url.starts_with("http://") || url.starts_with("https://"))
        && !url.contains(|c: char| c.is_whitespace() || c == '"' || c == '<');
    (ours && url_ok).then_some(url)
}

/// `vxlab serve [--listen ADDR] [--tls-cert FILE --tls-key FILE]`
pub fn serve(args: &ServeArgs) -> Result<u8> {
    require_root("serve")?;
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
    };
    let class = Class::new(Arc::new(LocalLabs), options)?;
    let state = StateDir::from_env();
    let served = web::serve(class, |url| {
        let base = url.split("/t/").next().unwrap_or(url);
        // `vxlab sheet` prints links to this server while it runs.
        let record = format!("{} {base}\n", std::process::id());
        let _ = crate::host::files::write_replacing(
            &state.root().join(SERVER_FILE),
            record.as_bytes(),
            crate::host::files::PRIVATE,
        );
        println!(
            "vxlab class server for the labs in {}",
            state.root().display()
        );
        println!("instructor: {url}");
        println!(
            "students: `vxlab sheet LAB` prints each copy's own link to this server \
             (`--url` when students reach it by another address)"
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
    });
    // The server has stopped: its record goes with it (one left by a killed server names a
    // process that is gone, and is not believed).
    if record(&state).is_some_and(|(pid, _)| pid == std::process::id()) {
        let _ = std::fs::remove_file(state.root().join(SERVER_FILE));
    }
    served?;
    Ok(exit::OK)
}
