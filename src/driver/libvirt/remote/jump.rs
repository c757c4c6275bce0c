//! One SSH connection to a hypervisor, shared by everything vxlab does there beside libvirt:
//! `direct-tcpip` channels to the guests' sshd (a ProxyJump: the guests' underlay is
//! reachable only from the hypervisor's bridge) and the few commands libvirt has no call for.
//!
//! libssh2 serialises everything on a session, and one blocking read would stall every guest
//! on the host. So one thread (the pump) owns the session in non-blocking mode and moves bytes
//! between each channel and a local socket pair, waiting in `poll` on the SSH socket and the
//! local ends. A caller gets the other end of the pair: a guest's own SSH session runs over it
//! as over TCP, a host command's output is read from it. Channels are opened one at a time
//! (libssh2 keeps one channel-open in progress per session), in the order asked.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::driver::libvirt::pump::{self, progress, would_block};

pub use crate::hosts::inventory::SshLogin;

/// Why the connection to a hypervisor's sshd failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum JumpError {
    /// TCP, the handshake, the host key or the login failed.
    #[error("{login}: {what}")]
    Connect {
        /// Where.
        login: String,
        /// What failed, with the cause in words.
        what: String,
    },
    /// The connection is gone (the host went away, sshd stopped).
    #[error("{login}: the connection was lost: {why}")]
    Lost {
        /// Where.
        login: String,
        /// Why, as far as known.
        why: String,
    },
    /// The hypervisor refused to open a channel (for a tunnel: nothing listens there yet).
    #[error("{login}: {what}: {why}")]
    Refused {
        /// Where.
        login: String,
        /// What was asked.
        what: String,
        /// The answer.
        why: String,
    },
}

/// What a channel is for.
enum Open {
    /// A TCP connection from the hypervisor to `host:port`.
    Tunnel { host: String, port: u16 },
    /// A command line run by the login user's shell.
    Exec { command: String },
}

impl Open {
    fn describe(&self) -> String {
        match self {
            Open::Tunnel { host, port } => format!("a tunnel to {host}:{port}"),
            Open::Exec { command } => format!("running `{command}`"),
        }
    }
}

/// An open channel as the caller sees it.
pub struct Opened {
    /// Both directions of the channel (for a command: its input and its output).
    pub stream: UnixStream,
    /// A command's errors.
    pub stderr: Option<UnixStream>,
    /// A command's exit status, sent when its channel closes.
    pub status: Option<mpsc::Receiver<i32>>,
}

struct Request {
    open: Open,
    reply: mpsc::Sender<Result<Opened, String>>,
}

/// One authenticated SSH connection to a hypervisor and the thread that drives it.
pub struct Jump {
    login: SshLogin,
    requests: Mutex<mpsc::Sender<Request>>,
    wake: Mutex<UnixStream>,
    lost: Arc<Mutex<Option<String>>>,
}

/// How long a caller waits for a channel to open: a tunnel to a guest whose address does not
/// answer ARP yet fails in about 3 s on the hypervisor.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Commands running at once over one host's connection; more wait their turn. OpenSSH's sshd
/// allows 10 sessions per connection unless told otherwise (`MaxSessions`); tunnels are not
/// sessions and are never held back.
const MAX_SESSIONS: usize = 8;

/// How often an idle connection is checked with a keepalive, so a host that went away is
/// noticed without a command.
const KEEPALIVE_SECS: u32 = 10;

impl Jump {
    /// Connects and logs in, checking the host key as `login` says.
    pub fn connect(login: &SshLogin) -> Result<Jump, JumpError> {
        let fail = |what: String| JumpError::Connect {
            login: login.to_string(),
            what,
        };
        let addrs: Vec<SocketAddr> = (login.host.as_str(), login.port)
            .to_socket_addrs()
            .map_err(|e| fail(format!("cannot resolve {}: {e}", login.host)))?
            .collect();
        let mut last = None;
        let tcp = addrs
            .iter()
            .find_map(
                |a| match TcpStream::connect_timeout(a, Duration::from_secs(10)) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        last = Some(e);
                        None
                    }
                },
            )
            .ok_or_else(|| {
                fail(format!(
                    "cannot connect: {}",
                    last.map_or("no address".to_string(), |e| e.to_string())
                ))
            })?;
        let mut session = ssh2::Session::new().map_err(|e| fail(e.to_string()))?;
        session.set_tcp_stream(tcp);
        session.set_timeout(30_000);
        session
            .handshake()
            .map_err(|e| fail(format!("SSH handshake: {e}")))?;
        check_host_key(&session, login).map_err(fail)?;
        log_in(&session, login).map_err(fail)?;
        session.set_keepalive(true, KEEPALIVE_SECS);
        session.set_blocking(false);

        let (tx, rx) = mpsc::channel();
        let (wake_ours, wake_theirs) = UnixStream::pair().map_err(|e| fail(e.to_string()))?;
        // Neither end ever blocks: a caller's wake-up never waits on a full buffer, and the
        // pump drains every wake-up and goes on.
        for end in [&wake_ours, &wake_theirs] {
            end.set_nonblocking(true).map_err(|e| fail(e.to_string()))?;
        }
        let lost = Arc::new(Mutex::new(None));
        let pump = Pump {
            session,
            requests: rx,
            wake: wake_ours,
            pending: VecDeque::new(),
            opening: None,
            pipes: Vec::new(),
            lost: lost.clone(),
            next_keepalive: Instant::now(),
        };
        std::thread::Builder::new()
            .name(format!("ssh-jump-{}", login.host))
            .spawn(move || pump.run())
            .map_err(|e| fail(e.to_string()))?;
        Ok(Jump {
            login: login.clone(),
            requests: Mutex::new(tx),
            wake: Mutex::new(wake_theirs),
            lost,
        })
    }

    /// Why the connection ended, when it did.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn open(&self, open: Open) -> Result<Opened, JumpError> {
        let lost = |why: String| JumpError::Lost {
            login: self.login.to_string(),
            why,
        };
        if let Some(why) = self.lost() {
            return Err(lost(why));
        }
        let what = open.describe();
        let (reply, answer) = mpsc::channel();
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Request { open, reply })
            .map_err(|_| lost("the connection's thread ended".into()))?;
        // A full buffer already wakes the pump.
        let _ = send(&self.wake.lock().unwrap_or_else(|p| p.into_inner()), &[0]);
        match answer.recv_timeout(OPEN_TIMEOUT) {
            Ok(Ok(opened)) => Ok(opened),
            Ok(Err(why)) => match self.lost() {
                Some(l) => Err(lost(l)),
                None => Err(JumpError::Refused {
                    login: self.login.to_string(),
                    what,
                    why,
                }),
            },
            Err(_) => Err(lost(self.lost().unwrap_or_else(|| {
                format!("no answer to {what} in {} s", OPEN_TIMEOUT.as_secs())
            }))),
        }
    }

    /// A TCP connection from the hypervisor to `addr`, as a local socket.
    pub fn tunnel(&self, addr: SocketAddr) -> Result<UnixStream, JumpError> {
        self.open(Open::Tunnel {
            host: addr.ip().to_string(),
            port: addr.port(),
        })
        .map(|o| o.stream)
    }

    /// Starts `command` (a shell command line, every word already quoted) on the hypervisor.
    pub fn start(&self, command: &str) -> Result<Opened, JumpError> {
        self.open(Open::Exec {
            command: command.to_string(),
        })
    }

    /// Runs `command` and waits for it: its exit status, output and errors.
    pub fn run(&self, command: &str) -> Result<(i32, Vec<u8>, String), JumpError> {
        let opened = self.start(command)?;
        let lost = |why: String| JumpError::Lost {
            login: self.login.to_string(),
            why,
        };
        let Opened {
            stream,
            stderr,
            status,
        } = opened;
        // The command reads nothing.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let errors = stderr.map(|mut e| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                s
            })
        });
        let mut out = Vec::new();
        (&stream)
            .read_to_end(&mut out)
            .map_err(|e| lost(e.to_string()))?;
        let errors = errors.and_then(|t| t.join().ok()).unwrap_or_default();
        let status = status
            .and_then(|s| s.recv().ok())
            .ok_or_else(|| lost(self.lost().unwrap_or_else(|| "no exit status".into())))?;
        Ok((status, out, errors))
    }
}

impl Drop for Jump {
    fn drop(&mut self) {
        // Dropping the request channel ends the pump at its next turn; wake it for that.
        let _ = send(&self.wake.lock().unwrap_or_else(|p| p.into_inner()), &[0]);
    }
}

/// Checks the server's host key: anything with `no_verify`, else the known hosts file.
fn check_host_key(session: &ssh2::Session, login: &SshLogin) -> Result<(), String> {
    if login.no_verify {
        return Ok(());
    }
    let (key, _) = session
        .host_key()
        .ok_or_else(|| "the server sent no host key".to_string())?;
    let file = match &login.known_hosts {
        Some(f) => f.clone(),
        None => home().join(".ssh/known_hosts"),
    };
    let mut known = session.known_hosts().map_err(|e| e.to_string())?;
    known
        .read_file(&file, ssh2::KnownHostFileKind::OpenSSH)
        .map_err(|e| format!("cannot read the known hosts file {}: {e}", file.display()))?;
    match known.check_port(&login.host, login.port, key) {
        ssh2::CheckResult::Match => Ok(()),
        ssh2::CheckResult::Mismatch => Err(format!(
            "its host key is not the one {} lists; refusing (the host was reinstalled, or \
             someone is in between)",
            file.display()
        )),
        _ => Err(format!(
            "its host key is not in {}; add it (`ssh-keyscan -p {} {}`), or name another file \
             with `known_hosts=` in the URI",
            file.display(),
            login.port,
            login.host
        )),
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Logs in with the key file the URI names, else the agent, else the usual key files.
fn log_in(session: &ssh2::Session, login: &SshLogin) -> Result<(), String> {
    if let Some(k) = &login.keyfile {
        return session
            .userauth_pubkey_file(&login.user, None, k, None)
            .map_err(|e| format!("logging in as {} with {}: {e}", login.user, k.display()));
    }
    if session.userauth_agent(&login.user).is_ok() {
        return Ok(());
    }
    for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
        let k = home().join(".ssh").join(name);
        if k.exists()
            && session
                .userauth_pubkey_file(&login.user, None, &k, None)
                .is_ok()
        {
            return Ok(());
        }
    }
    Err(format!(
        "logging in as {}: no key was accepted (give `keyfile=` in the URI)",
        login.user
    ))
}

/// A channel being opened.
struct Opening {
    open: Open,
    reply: mpsc::Sender<Result<Opened, String>>,
    /// A session channel made, its command not yet started.
    channel: Option<ssh2::Channel>,
}

/// One open channel and its local socket pair.
struct Pipe {
    channel: ssh2::Channel,
    /// A session channel (a command), which sshd counts against `MaxSessions`.
    session: bool,
    local: UnixStream,
    err: Option<UnixStream>,
    status: Option<mpsc::Sender<i32>>,
    /// Read from the channel, not yet written to `local`.
    to_local: Vec<u8>,
    /// Read from the channel's error stream, not yet written to `err`.
    to_err: Vec<u8>,
    /// Read from `local`, not yet written to the channel.
    to_remote: Vec<u8>,
    /// The remote end sent its end of file.
    remote_eof: bool,
    /// `local` ended (the caller shut its writing side or went away).
    local_eof: bool,
    eof_sent: bool,
    /// The caller is gone: close the channel.
    closing: bool,
}

struct Pump {
    session: ssh2::Session,
    requests: mpsc::Receiver<Request>,
    wake: UnixStream,
    pending: VecDeque<Request>,
    opening: Option<Opening>,
    pipes: Vec<Pipe>,
    lost: Arc<Mutex<Option<String>>>,
    next_keepalive: Instant,
}

impl Pump {
    fn run(mut self) {
        let why = self.drive();
        *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        // Every caller learns it: open requests get the reason, open channels their end.
        if let Some(o) = self.opening.take() {
            let _ = o.reply.send(Err(why.clone()));
        }
        for r in self.pending.drain(..).chain(self.requests.try_iter()) {
            let _ = r.reply.send(Err(why.clone()));
        }
    }

    /// Moves bytes until the connection ends or every user is gone; returns why it ended.
    fn drive(&mut self) -> String {
        let mut buf = vec![0u8; 32 * 1024];
        let mut quiet_turns = 0;
        loop {
            // New requests; a closed request channel means the Jump was dropped.
            loop {
                match self.requests.try_recv() {
                    Ok(r) => self.pending.push_back(r),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        if self.pipes.is_empty() && self.opening.is_none() {
                            return "closed".into();
                        }
                        break;
                    }
                }
            }
            while matches!((&self.wake).read(&mut buf[..64]), Ok(n) if n > 0) {}
            let mut moved = match self.open_next() {
                Ok(m) => m,
                Err(e) => return e,
            };
            let mut busy = self.opening.is_some();
            let mut i = 0;
            while i < self.pipes.len() {
                match turn(&mut self.pipes[i], &mut buf) {
                    Ok(Turn {
                        moved: m,
                        busy: b,
                        done,
                    }) => {
                        moved |= m;
                        busy |= b;
                        if done {
                            self.pipes.swap_remove(i);
                            continue;
                        }
                    }
                    Err(e) if session_gone(&e) => return e.to_string(),
                    // One channel's failure ends that channel only.
                    Err(_) => {
                        self.pipes.swap_remove(i);
                        continue;
                    }
                }
                i += 1;
            }
            if Instant::now() >= self.next_keepalive {
                match progress(self.session.keepalive_send()) {
                    Ok(Some(secs)) => {
                        self.next_keepalive =
                            Instant::now() + Duration::from_secs(u64::from(secs.max(1)));
                    }
                    Ok(None) => busy = true,
                    Err(e) => return format!("keepalive: {e}"),
                }
            }
            // libssh2 may have read packets for one channel while serving another, where
            // poll cannot see them: sleep only after two turns that moved nothing.
            if moved {
                quiet_turns = 0;
                continue;
            }
            quiet_turns += 1;
            if quiet_turns < 2 {
                continue;
            }
            if let Err(e) = self.wait(busy) {
                return e;
            }
        }
    }

    /// Advances the channel being opened, or starts the next; whether anything happened.
    fn open_next(&mut self) -> Result<bool, String> {
        if self.opening.is_none() {
            let sessions = self.pipes.iter().filter(|p| p.session).count();
            let next = self
                .pending
                .iter()
                .position(|r| sessions < MAX_SESSIONS || !matches!(r.open, Open::Exec { .. }));
            let Some(r) = next.and_then(|i| self.pending.remove(i)) else {
                return Ok(false);
            };
            self.opening = Some(Opening {
                open: r.open,
                reply: r.reply,
                channel: None,
            });
        }
        let o = self.opening.as_mut().expect("set above");
        let step: Result<Option<ssh2::Channel>, io::Error> = match &o.open {
            Open::Tunnel { host, port } => progress(self.session.channel_direct_tcpip(
                host,
                *port,
                Some(("127.0.0.1", 0)),
            )),
            Open::Exec { command } => {
                if o.channel.is_none() {
                    match progress(self.session.channel_session()) {
                        Ok(Some(c)) => o.channel = Some(c),
                        Ok(None) => return Ok(false),
                        Err(e) => return self.refuse(e),
                    }
                }
                let ch = o.channel.as_mut().expect("set above");
                match progress(ch.exec(command)) {
                    Ok(Some(())) => Ok(o.channel.take()),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        };
        match step {
            Ok(None) => Ok(false),
            Ok(Some(channel)) => {
                let o = self.opening.take().expect("set above");
                let exec = matches!(o.open, Open::Exec { .. });
                match new_pipe(channel, exec) {
                    Ok((pipe, opened)) => {
                        if o.reply.send(Ok(opened)).is_ok() {
                            self.pipes.push(pipe);
                        }
                    }
                    Err(e) => {
                        let _ = o.reply.send(Err(e.to_string()));
                    }
                }
                Ok(true)
            }
            Err(e) => self.refuse(e),
        }
    }

    /// The channel being opened failed: the session is gone, or the opener hears why.
    fn refuse(&mut self, e: io::Error) -> Result<bool, String> {
        if session_gone(&e) {
            return Err(e.to_string());
        }
        if let Some(o) = self.opening.take() {
            let _ = o.reply.send(Err(e.to_string()));
        }
        Ok(true)
    }

    /// Sleeps until the SSH socket, a local end or the wake socket has something; with `busy`,
    /// for at most 20 ms, to retry what libssh2 could not do yet.
    fn wait(&self, busy: bool) -> Result<(), String> {
        // POLLRDHUP: a server that went away shows as a half-closed socket.
        let mut fds = vec![
            pump::session_fd(&self.session, libc::POLLIN | libc::POLLRDHUP),
            pump::readable(&self.wake, true),
        ];
        for p in &self.pipes {
            let mut events = 0;
            if p.to_remote.is_empty() && !p.local_eof {
                events |= libc::POLLIN;
            }
            if !p.to_local.is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: p.local.as_raw_fd(),
                events,
                revents: 0,
            });
            if let Some(e) = &p.err {
                fds.push(libc::pollfd {
                    fd: e.as_raw_fd(),
                    events: if p.to_err.is_empty() {
                        0
                    } else {
                        libc::POLLOUT
                    },
                    revents: 0,
                });
            }
        }
        // Even when idle, wake now and then: for the keepalive, and as a net under data that
        // libssh2 buffered unseen.
        let timeout = if busy {
            20
        } else if self.pipes.is_empty() {
            1000
        } else {
            100
        };
        pump::wait(&mut fds, timeout).map_err(|e| e.to_string())?;
        if fds[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL | libc::POLLRDHUP) != 0
        {
            return Err("the server closed the connection".into());
        }
        Ok(())
    }
}

/// Whether an error from libssh2 means the session, not one channel, is gone.
fn session_gone(e: &io::Error) -> bool {
    let text = e.to_string();
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    ) || text.contains("Unable to send")
        || text.contains("socket disconnect")
        || text.contains("Error waiting on socket")
        || text.contains("Failed getting banner")
        || text.contains("connection closed")
        || text.contains("Timed out waiting")
}

fn new_pipe(channel: ssh2::Channel, exec: bool) -> io::Result<(Pipe, Opened)> {
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let (err_ours, err_theirs) = if exec {
        let (a, b) = UnixStream::pair()?;
        a.set_nonblocking(true)?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let (status_tx, status_rx) = if exec {
        let (t, r) = mpsc::channel();
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    Ok((
        Pipe {
            channel,
            session: exec,
            local: ours,
            err: err_ours,
            status: status_tx,
            to_local: Vec::new(),
            to_err: Vec::new(),
            to_remote: Vec::new(),
            remote_eof: false,
            local_eof: false,
            eof_sent: false,
            closing: false,
        },
        Opened {
            stream: theirs,
            stderr: err_theirs,
            status: status_rx,
        },
    ))
}

struct Turn {
    moved: bool,
    busy: bool,
    done: bool,
}

/// Writes `buf` to a local socket without SIGPIPE: a reader that went away (a guest session
/// dropped, a pump that ended) is an error here, never a signal that kills vxlab.
fn send(to: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send on a socket this process owns, from a buffer of the length given.
    let n = unsafe {
        libc::send(
            to.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes what `pending` holds to `to`; false when the reader is gone.
fn flush_local(pending: &mut Vec<u8>, to: &mut UnixStream, moved: &mut bool) -> bool {
    while !pending.is_empty() {
        match send(to, pending) {
            Ok(0) => return false,
            Ok(n) => {
                pending.drain(..n);
                *moved = true;
            }
            Err(e) if would_block(&e) => return true,
            Err(_) => return false,
        }
    }
    true
}

/// Moves what can be moved for one channel without blocking.
fn turn(p: &mut Pipe, buf: &mut [u8]) -> io::Result<Turn> {
    let mut moved = false;
    let mut busy = false;
    // From the channel: standard output (only when the last piece is delivered, so a slow
    // reader slows the channel's window, not memory), and the errors, which are small.
    if p.to_local.is_empty() && !p.remote_eof && !p.closing {
        match p.channel.read(buf) {
            Ok(0) => {
                if p.channel.eof() {
                    p.remote_eof = true;
                    moved = true;
                }
            }
            Ok(n) => {
                p.to_local.extend_from_slice(&buf[..n]);
                moved = true;
            }
            Err(e) if would_block(&e) => {}
            Err(e) => return Err(e),
        }
    }
    loop {
        match p.channel.stderr().read(buf) {
            Ok(0) => break,
            Ok(n) => {
                if p.err.is_some() {
                    p.to_err.extend_from_slice(&buf[..n]);
                }
                moved = true;
            }
            Err(e) if would_block(&e) => break,
            Err(e) => return Err(e),
        }
    }
    if !flush_local(&mut p.to_local, &mut p.local, &mut moved) {
        p.closing = true;
    }
    if let Some(err) = &mut p.err {
        if !flush_local(&mut p.to_err, err, &mut moved) {
            p.to_err.clear();
        }
    }
    if p.remote_eof && p.to_local.is_empty() {
        // The caller reads its end of file; a command's errors end with it.
        let _ = p.local.shutdown(std::net::Shutdown::Write);
        if p.to_err.is_empty() {
            p.err = None;
        }
    }
    // To the channel.
    if p.to_remote.is_empty() && !p.local_eof && !p.closing {
        match p.local.read(buf) {
            Ok(0) => {
                p.local_eof = true;
                moved = true;
            }
            Ok(n) => {
                p.to_remote.extend_from_slice(&buf[..n]);
                moved = true;
            }
            Err(e) if would_block(&e) => {}
            Err(_) => {
                p.local_eof = true;
                p.closing = true;
            }
        }
    }
    while !p.to_remote.is_empty() && !p.closing {
        match p.channel.write(&p.to_remote) {
            Ok(n) => {
                p.to_remote.drain(..n);
                moved = true;
            }
            Err(e) if would_block(&e) => {
                busy = true;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    if p.local_eof && p.to_remote.is_empty() && !p.eof_sent && !p.closing {
        match progress(p.channel.send_eof())? {
            Some(()) => {
                p.eof_sent = true;
                moved = true;
            }
            None => busy = true,
        }
    }
    // A tunnel is done when both sides ended; a command when its channel ended and its
    // output was delivered (its input may never be closed); either when the caller left.
    let finished = match p.status {
        Some(_) => p.remote_eof && p.to_local.is_empty() && p.to_err.is_empty(),
        None => p.remote_eof && p.to_local.is_empty() && p.local_eof,
    };
    if finished || p.closing {
        match progress(p.channel.close())? {
            None => busy = true,
            Some(()) => match progress(p.channel.wait_close())? {
                None => busy = true,
                Some(()) => {
                    if let Some(s) = p.status.take() {
                        let _ = s.send(p.channel.exit_status().unwrap_or(255));
                    }
                    return Ok(Turn {
                        moved: true,
                        busy,
                        done: true,
                    });
                }
            },
        }
    }
    Ok(Turn {
        moved,
        busy,
        done: false,
    })
}
