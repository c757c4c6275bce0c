//! `vxlab serve`: the class server. The instructor's page shows every running lab (every
//! workshop copy) live, with its health; each student reaches their own copy by its secret
//! link: the topology, each guest's `show` tables as they change, a terminal per guest, and
//! the Check, Capture and Reset buttons.
//!
//! The server is a thin layer: what it shows comes from [`crate::views`] and
//! [`crate::explain`], what it does from the same [`crate::engine::Engine`] calls as the
//! command line, reached through [`Labs`]. [`tokens`] is the one place that decides what a
//! request may open; [`live`] follows each lab's guests (`ip monitor` in each guest, so a
//! change shows within a fraction of a second and an idle class costs nothing); [`terminal`]
//! connects a browser terminal to a guest process; [`pages`] renders the pages with tera from
//! typed contexts.

pub mod live;
pub mod pages;
mod routes;
pub mod terminal;
pub mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::driver::Driver;
use crate::engine::Engine;
use crate::iproute2::Tools;
use crate::plan::Plan;
use crate::state::{Stamp, StateDir};

/// What the server needs from the rest of vxlab: the running labs, and for each its plan, an
/// engine and a driver, made as the command line makes them.
pub trait Labs: Send + Sync + 'static {
    /// The state directory: the labs, and the tokens kept beside them.
    fn state(&self) -> StateDir;
    /// Names of the running labs.
    fn running(&self) -> Vec<String>;
    /// Which run of lab `lab` this is, and which write of its state; `None` when it is not
    /// running.
    fn stamp(&self, lab: &str) -> Option<Stamp> {
        self.state().stamp(lab)
    }
    /// A running lab's plan.
    fn plan(&self, lab: &str) -> anyhow::Result<Plan>;
    /// An engine for a running lab.
    fn engine(&self, lab: &str) -> anyhow::Result<Engine>;
    /// A driver for a running lab's guests.
    fn driver(&self, lab: &str) -> anyhow::Result<Box<dyn Driver>>;
    /// The `ip` and `bridge` each guest of a running lab was configured with.
    fn tools(&self, lab: &str) -> BTreeTools {
        self.state().read(lab).map(|s| s.tools).unwrap_or_default()
    }
    /// The lab's topology as SVG.
    fn graph_svg(&self, plan: &Plan) -> anyhow::Result<Vec<u8>>;
}

/// Tools by guest name.
pub type BTreeTools = std::collections::BTreeMap<String, Tools>;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Certificate chain and private key (PEM) for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Terminals one token may have open at once.
    pub terminals_per_token: usize,
    /// A terminal with no input and no output for this long is closed.
    pub terminal_idle: Duration,
    /// How often each lab's fence (host firewall rules, which change by no event) is read
    /// again when nothing else happens.
    pub fence_every: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            terminals_per_token: 8,
            terminal_idle: Duration::from_secs(15 * 60),
            fence_every: Duration::from_secs(30),
        }
    }
}

/// Everything the handlers share.
pub struct Class {
    backend: Arc<dyn Labs>,
    tokens: RwLock<tokens::Tokens>,
    watch: live::Watchers,
    options: ServeOptions,
    /// What each token holds open (a lab's terminals, a page's event streams): see [`Slot`].
    held: Mutex<HashMap<(String, String), usize>>,
    /// One action at a time per lab: a second click waits for the first instead of finding
    /// the lab busy (with this server as the "other vxlab").
    actions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Class {
    /// The class over `backend`, its tokens made or read for the labs running now.
    pub fn new(backend: Arc<dyn Labs>, options: ServeOptions) -> std::io::Result<Arc<Class>> {
        let labs = backend.running();
        let tokens = tokens::Tokens::load(&backend.state(), &labs)?;
        Ok(Arc::new(Class {
            watch: live::Watchers::new(backend.clone(), options.fence_every),
            backend,
            tokens: RwLock::new(tokens),
            options,
            held: Mutex::new(HashMap::new()),
            actions: Mutex::new(HashMap::new()),
        }))
    }

    /// The lock that keeps this server's actions on `lab` one at a time.
    fn action_lock(&self, lab: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.actions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(lab.to_string())
            .or_default()
            .clone()
    }

    /// The instructor's token.
    pub fn instructor_token(&self) -> String {
        self.tokens().instructor().to_string()
    }

    fn tokens(&self) -> std::sync::RwLockReadGuard<'_, tokens::Tokens> {
        self.tokens.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the labs that came up, went down, were brought up again or changed since the
    /// last call.
    fn rescan(&self) {
        let labs: Vec<(String, Stamp)> = self
            .backend
            .running()
            .into_iter()
            .filter_map(|l| {
                let stamp = self.backend.stamp(&l)?;
                Some((l, stamp))
            })
            .collect();
        let runs: Vec<(String, String)> = labs
            .iter()
            .map(|(l, s)| (l.clone(), s.made.clone()))
            .collect();
        if let Err(e) = self
            .tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .refresh(&self.backend.state(), &runs)
        {
            eprintln!("vxlab serve: cannot keep tokens: {e}");
        }
        self.watch.follow(&labs);
    }
}

/// One of a token's open terminals (or event streams) in a lab; the count goes down when it
/// is dropped.
pub struct Slot {
    class: Arc<Class>,
    /// The token, and what it holds open (a lab's terminals, a page's events).
    key: (String, String),
}

impl Slot {
    /// A slot for `token` among its `what` (a lab's terminals, say), unless it already holds
    /// `limit` of them. (A student's token opens one lab; the instructor's has as many in
    /// each lab.)
    pub fn take(class: &Arc<Class>, token: &str, what: &str, limit: usize) -> Option<Slot> {
        let key = (token.to_string(), what.to_string());
        let mut open = class.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            class: class.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.class.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Runs the server until Ctrl-C or SIGTERM; `announce` gets the instructor's URL once the
/// socket listens.
pub fn serve(class: Arc<Class>, announce: impl FnOnce(&str)) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(routes::run(class, announce))
}
