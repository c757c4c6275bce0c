//! A hypervisor of a class bigger than one host, reached as libvirt itself reaches it: a remote
//! connection (`qemu+ssh://root@host/system`). Everything vxlab does there goes through that
//! connection where libvirt offers a way: the lab's bridge is a libvirt network ([`network`]),
//! overlays, seed disks and the image are storage volumes written through streams
//! ([`storage`]). What libvirt has no call for (the guests' SSH, a capture, a checksum) goes
//! over one SSH connection to the same host ([`jump`]), with commands as typed as the
//! guests' ([`command`]).
//!
//! Each host has one [`HostLink`]: its libvirt connection and its SSH connection, shared by
//! every copy and every guest on it within one vxlab process. Nothing here compares two hosts:
//! two URIs are two hosts, even when they lead to one machine.

pub mod capture;
pub mod command;
pub mod facts;
pub mod guest;
pub mod host;
pub mod jump;
pub mod network;
pub mod storage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use virt::connect::Connect;

use self::command::HostCommand;
use self::jump::{Jump, JumpError};
use crate::host::process::Output;
use crate::hosts::HostSpec;

/// A host of the inventory cannot be reached: its name, its URI and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("host {host} ({uri}) cannot be reached: {why}")]
pub struct HostUnreachable {
    /// The host's name.
    pub host: String,
    /// Its URI.
    pub uri: String,
    /// Why, as libvirt or SSH said it.
    pub why: String,
}

/// A call on a reachable host failed.
#[derive(Debug, thiserror::Error)]
#[error("host {host}: {what}")]
pub struct HostCallError {
    /// The host's name.
    pub host: String,
    /// What was being done.
    pub what: String,
    /// Why it failed.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// One hypervisor: its libvirt connection and its SSH connection.
pub struct HostLink {
    spec: HostSpec,
    conn: Connect,
    jump: Jump,
}

impl HostLink {
    /// Opens both connections (at once); either failing makes the host unreachable.
    pub fn connect(spec: &HostSpec) -> Result<HostLink, HostUnreachable> {
        let unreachable = |why: String| HostUnreachable {
            host: spec.name.clone(),
            uri: spec.uri.clone(),
            why,
        };
        let login = spec.login().map_err(unreachable)?;
        // libvirt prints every error itself by default; vxlab says the ones that matter.
        virt::error::clear_error_callback();
        let (conn, jump) = std::thread::scope(|s| {
            let jump = s.spawn(|| Jump::connect(&login));
            let conn = Connect::open(Some(&spec.uri));
            (conn, jump.join().expect("SSH connect thread panicked"))
        });
        // When both fail, SSH's own reason comes first ("connection refused"): libvirt, which
        // talks through an ssh process, often sees only that process's pipe break.
        let jump = jump.map_err(|e| unreachable(e.to_string()))?;
        let conn = conn.map_err(|e| unreachable(format!("libvirt: {}", e.message())))?;
        Ok(HostLink {
            spec: spec.clone(),
            conn,
            jump,
        })
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// How it is reached.
    pub fn spec(&self) -> &HostSpec {
        &self.spec
    }

    /// Its libvirt connection.
    pub fn conn(&self) -> &Connect {
        &self.conn
    }

    /// Its SSH connection.
    pub fn jump(&self) -> &Jump {
        &self.jump
    }

    /// Why the host is no longer reachable, when it is not.
    pub fn lost(&self) -> Option<String> {
        if let Some(why) = self.jump.lost() {
            return Some(why);
        }
        match self.conn.is_alive() {
            Ok(true) => None,
            _ => Some("the libvirt connection was closed".into()),
        }
    }

    /// The failure of `what` on this host.
    pub fn error(
        &self,
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> HostCallError {
        HostCallError {
            host: self.spec.name.clone(),
            what: what.into(),
            source: source.into(),
        }
    }

    /// Runs `cmd` on the host and waits for it.
    pub fn run(&self, cmd: &HostCommand) -> Result<Output, HostCallError> {
        let (status, stdout, stderr) = self
            .jump
            .run(&cmd.line())
            .map_err(|e| self.error(format!("running `{cmd}`"), e))?;
        Ok(Output {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
        })
    }

    /// Runs `cmds` in one SSH channel, one after the other: each one's output.
    pub fn run_batch(&self, cmds: &[HostCommand]) -> Result<Vec<Output>, HostCallError> {
        let argvs: Vec<Vec<String>> = cmds.iter().map(HostCommand::argv).collect();
        let script = super::ssh::batch_script(&argvs, false);
        let (_, stdout, _) = self
            .jump
            .run(&script)
            .map_err(|e| self.error(format!("running {} commands", cmds.len()), e))?;
        Ok(super::ssh::parse_batch(&stdout))
    }
}

/// The error of an SSH connection that was lost, for callers that name the host.
pub fn lost(e: &JumpError) -> bool {
    matches!(e, JumpError::Lost { .. })
}

type Slot = Arc<Mutex<Option<Arc<HostLink>>>>;

static LINKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process connected to a remote host. Its links' threads are then still inside
/// libssh2 and libvirt when `main` returns, and the C libraries' exit handlers (OpenSSL's
/// cleanup frees what those threads use) crash it with SIGSEGV: such a process ends with
/// [`exit_now`] instead.
pub fn linked() -> bool {
    LINKED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Flushes standard output and error and ends the process with `code`, running no exit
/// handler (see [`linked`]).
pub fn exit_now(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; everything vxlab wrote is flushed above, and
    // state files are written whole (renamed into place) before commands return.
    unsafe { libc::_exit(i32::from(code)) }
}

/// The hosts this process is connected to, by name and URI: every copy and guest on a host
/// shares its connections, and `vxlab serve` keeps them for all the labs it serves.
fn registry() -> &'static Mutex<HashMap<String, Slot>> {
    static LINKS: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    LINKS.get_or_init(Default::default)
}

/// The link to `spec`'s host: the one this process has, or a new one when there is none or
/// it was lost. Hosts are connected in parallel; one host's callers wait for its connection.
pub fn link(spec: &HostSpec) -> Result<Arc<HostLink>, HostUnreachable> {
    // libvirt's ssh transport writes to a pipe to its `ssh` child, which goes when the host
    // does: that must be an error libvirt reports, not a SIGPIPE that kills vxlab (vxlab's
    // main restores the default action, for `vxlab ... | head`).
    LINKED.store(true, std::sync::atomic::Ordering::SeqCst);
    static IGNORE_SIGPIPE: std::sync::Once = std::sync::Once::new();
    // SAFETY: setting a signal's disposition to ignore; no handler runs.
    IGNORE_SIGPIPE.call_once(|| unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    });
    let key = format!("{}\n{}\n{:?}", spec.name, spec.uri, spec.ssh);
    let slot = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default()
        .clone();
    let mut held = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(l) = held.as_ref().filter(|l| l.lost().is_none()) {
        return Ok(l.clone());
    }
    let l = Arc::new(HostLink::connect(spec)?);
    *held = Some(l.clone());
    Ok(l)
}
