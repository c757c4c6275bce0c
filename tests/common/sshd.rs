//! An sshd the test starts, standing in for a hypervisor's: listening only on one loopback
//! address, letting root in with a key the test generates, with its own config, host key and
//! log (LogLevel DEBUG1 logs every direct-tcpip request) in a directory of the test's.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sshd; stopped (with every session it started) on drop.
pub struct Sshd {
    pub address: IpAddr,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// The `cgroup.procs` file of the cgroup its processes start in, if one was given.
    cgroup: Option<std::ffi::CString>,
}

fn keygen(path: &Path) {
    if path.exists() {
        return;
    }
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen failed");
}

/// A port free on every loopback address the tests use, 22 when it is free; never the same
/// one twice in a test binary, whose tests start their sshds at once.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let free = |p: u16| {
        !given.contains(&p)
            && ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
                .iter()
                .all(|a| std::net::TcpListener::bind((*a, p)).is_ok())
    };
    let port = find(free);
    given.push(port);
    port
}

fn find(free: impl Fn(u16) -> bool) -> u16 {
    if free(22) {
        return 22;
    }
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if free(p) {
            return p;
        }
    }
}

impl Sshd {
    /// Starts sshd on `address` (port `port`, or a free one), its files in `dir/<address>`;
    /// the client key is `dir/client`, shared by every sshd started with the same `dir`.
    pub fn start(dir: &Path, address: IpAddr, port: Option<u16>) -> Sshd {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "sshd is missing: install openssh-server"
        );
        keygen(&dir.join("client"));
        let own = dir.join(address.to_string());
        std::fs::create_dir_all(&own).unwrap();
        keygen(&own.join("host"));
        keygen(&own.join("other"));
        std::fs::copy(dir.join("client.pub"), own.join("authorized_keys")).unwrap();
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = port.unwrap_or_else(free_port);
        // MaxSessions stays at OpenSSH's default (10), as on a host nobody tuned for vxlab.
        // HOME is the sshd's own directory: the shell that runs each command reads no dotfile
        // of this machine's root (a shell killed in a pyenv rehash there leaves a lock that
        // made every later command wait 60 s).
        std::fs::write(
            own.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress {address}\nHostKey {d}/host\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPidFile {d}/sshd.pid\nLogLevel DEBUG1\n\
                 MaxStartups 100\nSetEnv HOME={d}\n",
                d = own.display()
            ),
        )
        .unwrap();
        let mut s = Sshd {
            address,
            port,
            dir: own,
            child: None,
            cgroup: None,
        };
        s.restart();
        s
    }

    /// Starts it again (after [`Sshd::stop`]), with the same keys, address and port.
    pub fn restart(&mut self) {
        let listening = format!("Server listening on {} port {}", self.address, self.port);
        let before = self.log().matches(&listening).count();
        let mut command = Command::new("/usr/sbin/sshd");
        if let Some(procs) = self.cgroup.clone() {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec the child only opens, writes and closes a file
            // (async-signal-safe calls, nothing allocated): it moves itself into the cgroup
            // before sshd runs, so every session it forks is there too.
            unsafe {
                command.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                    Ok(())
                });
            }
        }
        let mut child = command
            .args(["-D", "-f"])
            .arg(self.dir.join("sshd_config"))
            .arg("-E")
            .arg(self.dir.join("sshd.log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Ready when this sshd says it listens (its log is appended to at every start), not
        // when anything answers on the port.
        let listening = format!("Server listening on {} port {}", self.address, self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(&listening).count() <= before {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("sshd ended ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Starts it again in the cgroup whose directory is `cgroup` (on a cgroup2 hierarchy), it
    /// and every session it starts from then on.
    pub fn confine(&mut self, cgroup: &Path) {
        let procs = cgroup.join("cgroup.procs");
        self.cgroup = Some(std::ffi::CString::new(procs.to_str().unwrap()).unwrap());
        self.stop();
        self.restart();
    }

    /// Stops the listener and every session it started, as a host that goes away.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as i32;
        let sessions = descendants(pid);
        // SAFETY: signals to processes this test started (sshd and the sessions it forked).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            for p in sessions {
                libc::kill(p, libc::SIGKILL);
            }
        }
        let _ = child.wait();
    }

    /// The client's private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.parent().unwrap().join("client")
    }

    /// What sshd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// A known_hosts line for this sshd's host key.
    pub fn known_hosts_line(&self) -> String {
        self.line_for("host.pub")
    }

    /// A known_hosts line naming this sshd with a key that is not its own.
    pub fn wrong_known_hosts_line(&self) -> String {
        self.line_for("other.pub")
    }

    fn line_for(&self, key: &str) -> String {
        let public = std::fs::read_to_string(self.dir.join(key)).unwrap();
        let mut words = public.split_whitespace();
        let (kind, blob) = (words.next().unwrap(), words.next().unwrap());
        let name = if self.port == 22 {
            self.address.to_string()
        } else {
            format!("[{}]:{}", self.address, self.port)
        };
        format!("{name} {kind} {blob}\n")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every process below `pid`, by the parent each names in /proc.
fn descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // The parent is the second field after the command name, which ends with ')'.
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (c, _) in parents.iter().filter(|(_, pp)| *pp == p) {
            out.push(*c);
            frontier.push(*c);
        }
    }
    out
}
