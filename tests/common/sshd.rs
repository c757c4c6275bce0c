//! An sshd the test starts, standing in for a hypervisor's: listening only on one loopback
//! address, letting root in with a key the test generates, with its own config, host key and
//! log (LogLevel DEBUG1 logs every direct-tcpip request) in a directory of the test's.

use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sshd; stopped (with every session it started) on drop.
pub struct Sshd {
    pub address: IpAddr,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
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

/// A port free on every loopback address the tests use, 22 when it is free.
pub fn free_port() -> u16 {
    let free = |p: u16| {
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
            .iter()
            .all(|a| std::net::TcpListener::bind((*a, p)).is_ok())
    };
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
        std::fs::write(
            own.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress {address}\nHostKey {d}/host\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPidFile {d}/sshd.pid\nLogLevel DEBUG1\n\
                 MaxStartups 100\n",
                d = own.display()
            ),
        )
        .unwrap();
        let mut s = Sshd {
            address,
            port,
            dir: own,
            child: None,
        };
        s.restart();
        s
    }

    /// Starts it again (after [`Sshd::stop`]), with the same keys, address and port.
    pub fn restart(&mut self) {
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-f"])
            .arg(self.dir.join("sshd_config"))
            .arg("-E")
            .arg(self.dir.join("sshd.log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((self.address, self.port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
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
