//! SSH to libvirt guests with `ssh2`. vxlab generates the lab's client key and every guest's
//! host key itself and gives both to the guest through cloud-init, so the host key is checked
//! strictly from the first connection: no trust on first use.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::host::process::{self, Output};
use crate::plan::shell_words;

/// SSH failures.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// `ssh-keygen` failed.
    #[error("cannot generate an SSH key at {}: {reason}", path.display())]
    Keygen {
        /// Key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The guest did not answer on port 22 in time.
    #[error("timed out after {} s waiting for ssh on {addr}", timeout.as_secs())]
    Timeout {
        /// Address.
        addr: SocketAddr,
        /// How long vxlab waited.
        timeout: Duration,
    },
    /// The guest presented another host key than the one vxlab gave it.
    #[error("{addr} presented a host key that is not the one vxlab generated for it; refusing")]
    HostKeyMismatch {
        /// Address.
        addr: SocketAddr,
    },
    /// Any other SSH or I/O failure.
    #[error("ssh {addr}: {what}")]
    Session {
        /// Address.
        addr: SocketAddr,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SshError {
    /// Whether the guest let a connection to port 22 time out, or has no route: a guest that
    /// is stopped, frozen or off the network. Retrying cannot help; a refused connection
    /// (sshd not listening yet) can.
    pub fn unanswered(&self) -> bool {
        let SshError::Session {
            what: "connecting",
            source,
            ..
        } = self
        else {
            return false;
        };
        source.downcast_ref::<std::io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::HostUnreachable
            )
        })
    }
}

/// An ed25519 key pair in OpenSSH files: `path` and `path.pub`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// Private key file (0600).
    pub private: PathBuf,
    /// Public key line, `ssh-ed25519 AAAA... comment`.
    pub public: String,
}

impl KeyPair {
    /// Generates a key pair at `path` unless one is there already.
    pub fn ensure(path: &Path, comment: &str) -> Result<KeyPair, SshError> {
        let fail = |reason: String| SshError::Keygen {
            path: path.to_path_buf(),
            reason,
        };
        let pub_path = path.with_extension("pub");
        if !path.exists() || !pub_path.exists() {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(&pub_path);
            let argv: Vec<String> = [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                comment,
                "-f",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([path.to_string_lossy().into_owned()])
            .collect();
            let out = process::run(&argv, None).map_err(|e| fail(e.to_string()))?;
            if !out.success() {
                return Err(fail(out.stderr));
            }
        }
        let public = std::fs::read_to_string(&pub_path).map_err(|e| fail(e.to_string()))?;
        Ok(KeyPair {
            private: path.to_path_buf(),
            public: public.trim().to_string(),
        })
    }

    /// The private key file's text.
    pub fn private_text(&self) -> std::io::Result<String> {
        std::fs::read_to_string(&self.private)
    }

    /// The raw public key blob (the base64 field of the public key line).
    pub fn public_blob(&self) -> Option<Vec<u8>> {
        let b64 = self.public.split_whitespace().nth(1)?;
        base64::engine::general_purpose::STANDARD.decode(b64).ok()
    }
}

/// How often a guest's sshd is tried while it boots.
const POLL: Duration = Duration::from_millis(100);

/// Tries `attempt` until it gives `Some`, fails, or `timeout` has passed (`Ok(None)`), at
/// most ten times a second: a refused connection returns at once, and sshd is then found
/// within a tenth of a second of listening.
pub fn retry_until<T, E>(
    timeout: Duration,
    attempt: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    let deadline = Instant::now() + timeout;
    retry_until_deadline(|| deadline, attempt)
}

/// [`retry_until`], the deadline asked for again after every attempt: it may move.
pub fn retry_until_deadline<T, E>(
    mut deadline: impl FnMut() -> Instant,
    mut attempt: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    loop {
        let started = Instant::now();
        if let Some(t) = attempt()? {
            return Ok(Some(t));
        }
        if Instant::now() >= deadline() {
            return Ok(None);
        }
        let spent = started.elapsed();
        if spent < POLL {
            std::thread::sleep(POLL - spent);
        }
    }
}

/// Whether `addr` accepts a TCP connection now. Probing the port is cheaper than retrying
/// whole SSH handshakes against a guest that is still booting.
pub fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// An authenticated SSH session to one guest, as root.
pub struct Connection {
    session: ssh2::Session,
    addr: SocketAddr,
}

impl Connection {
    /// Connects to `ip:22`, checks the host key against `host_key`, logs in with `client`.
    pub fn open(ip: IpAddr, host_key: &KeyPair, client: &KeyPair) -> Result<Self, SshError> {
        let addr = SocketAddr::new(ip, 22);
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(15)).map_err(|e| {
            SshError::Session {
                addr,
                what: "connecting",
                source: Box::new(e),
            }
        })?;
        Self::over(tcp, addr, host_key, client)
    }

    /// The same over `stream`, a connection to the guest's sshd at `addr` made another way
    /// (a tunnel through its hypervisor).
    pub fn over<S: AsRawFd + 'static>(
        stream: S,
        addr: SocketAddr,
        host_key: &KeyPair,
        client: &KeyPair,
    ) -> Result<Self, SshError> {
        let err = |what: &'static str| {
            move |e: ssh2::Error| SshError::Session {
                addr,
                what,
                source: Box::new(e),
            }
        };
        let mut session = ssh2::Session::new().map_err(err("starting a session"))?;
        session.set_tcp_stream(stream);
        session.set_timeout(120_000);
        session.handshake().map_err(err("handshake"))?;
        let presented = session.host_key().map(|(k, _)| k.to_vec());
        if presented.is_none() || presented != host_key.public_blob() {
            return Err(SshError::HostKeyMismatch { addr });
        }
        session
            .userauth_pubkey_file("root", None, &client.private, None)
            .map_err(err("logging in as root"))?;
        Ok(Connection { session, addr })
    }

    /// The authenticated session, for a caller that drives its own channel (the terminals of
    /// `shell.rs`).
    pub fn into_session(self) -> ssh2::Session {
        self.session
    }

    /// Runs `argv` (each word quoted for the guest's shell) and waits for it.
    pub fn exec(&self, argv: &[String]) -> Result<Output, SshError> {
        self.run_script(&shell_words(argv))
    }

    /// Runs `cmds` in one channel, one after the other, and returns each one's output; with
    /// `stop_on_failure` nothing runs after the first that fails. Under software emulation a
    /// channel costs sshd and a login shell starting in the guest, several times a command;
    /// one channel per batch keeps `up` close to the bare boot time.
    pub fn exec_batch(
        &self,
        cmds: &[Vec<String>],
        stop_on_failure: bool,
    ) -> Result<Vec<Output>, SshError> {
        let (_, stdout, _) = self.run_raw(&batch_script(cmds, stop_on_failure))?;
        Ok(parse_batch(&stdout))
    }

    /// Copies the local file `local` to `remote` (SCP), mode 0644.
    pub fn upload(&self, local: &Path, remote: &Path) -> Result<(), SshError> {
        let addr = self.addr;
        let err = |what: &'static str| {
            move |e: Box<dyn std::error::Error + Send + Sync>| SshError::Session {
                addr,
                what,
                source: e,
            }
        };
        let data = std::fs::read(local).map_err(|e| err("reading the file to copy")(e.into()))?;
        let mut ch = self
            .session
            .scp_send(remote, 0o644, data.len() as u64, None)
            .map_err(|e| err("starting a copy")(e.into()))?;
        ch.write_all(&data).map_err(|e| err("copying")(e.into()))?;
        ch.send_eof()
            .map_err(|e| err("finishing a copy")(e.into()))?;
        ch.wait_eof()
            .map_err(|e| err("finishing a copy")(e.into()))?;
        ch.close().map_err(|e| err("finishing a copy")(e.into()))?;
        ch.wait_close()
            .map_err(|e| err("finishing a copy")(e.into()))?;
        Ok(())
    }

    /// Runs a shell command line and waits for it.
    fn run_script(&self, script: &str) -> Result<Output, SshError> {
        let (status, stdout, stderr) = self.run_raw(script)?;
        Ok(Output {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
        })
    }

    /// Runs a shell command line; its exit status, output as bytes, and errors.
    fn run_raw(&self, script: &str) -> Result<(i32, Vec<u8>, String), SshError> {
        let err = |what: &'static str| {
            let addr = self.addr;
            move |e: Box<dyn std::error::Error + Send + Sync>| SshError::Session {
                addr,
                what,
                source: e,
            }
        };
        let mut ch = self
            .session
            .channel_session()
            .map_err(|e| err("opening a channel")(e.into()))?;
        ch.exec(script)
            .map_err(|e| err("running a command")(e.into()))?;
        let mut stdout = Vec::new();
        let mut stderr = String::new();
        ch.read_to_end(&mut stdout)
            .map_err(|e| err("reading output")(e.into()))?;
        ch.stderr()
            .read_to_string(&mut stderr)
            .map_err(|e| err("reading errors")(e.into()))?;
        ch.wait_close()
            .map_err(|e| err("closing a channel")(e.into()))?;
        let status = ch
            .exit_status()
            .map_err(|e| err("reading exit status")(e.into()))?;
        Ok((status, stdout, stderr))
    }
}

/// A script that runs each command with its standard output and errors in files, then prints
/// the exit statuses on one line, the files' sizes (`wc -c`), a NUL, and the files one after
/// the other (one `cat`). Under software emulation every process costs tens of milliseconds,
/// so the whole batch adds three (`wc`, `cat`, `rm`), not two per command. Commands read
/// /dev/null; the files are root's (umask) and never follow a planted link (noclobber).
pub(crate) fn batch_script(cmds: &[Vec<String>], stop_on_failure: bool) -> String {
    let mut s = String::from("umask 077; set -C; t=/tmp/vxlab-batch.$$; s=''; f=''; stop=''\n");
    for (i, argv) in cmds.iter().enumerate() {
        let (o, e) = (format!("\"$t.{i}.o\""), format!("\"$t.{i}.e\""));
        s.push_str(&format!(
            "[ -n \"$stop\" ] || {{ {} </dev/null >{o} 2>{e}; r=$?; s=\"$s $r\"; f=\"$f $t.{i}.o $t.{i}.e\"; }}\n",
            shell_words(argv)
        ));
        if stop_on_failure {
            s.push_str("[ \"$r\" = 0 ] || stop=1\n");
        }
    }
    // `$f` is split into the file names on purpose: they hold no spaces.
    s.push_str("echo \"$s\"\n[ -z \"$f\" ] || { wc -c $f; printf '\\0'; cat $f; rm -f $f; }\n");
    s
}

/// Splits a batch script's output into one [`Output`] per command that ran.
pub(crate) fn parse_batch(stdout: &[u8]) -> Vec<Output> {
    let (head, body) = match stdout.iter().position(|b| *b == 0) {
        Some(i) => (&stdout[..i], &stdout[i + 1..]),
        None => (stdout, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let statuses: Vec<i32> = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(-1))
        .collect();
    let sizes: Vec<usize> = lines
        .take(2 * statuses.len())
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    let mut rest = body;
    let mut take = |n: usize| {
        let n = n.min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        String::from_utf8_lossy(piece).into_owned()
    };
    statuses
        .iter()
        .zip(sizes.chunks(2))
        .map(|(status, size)| Output {
            status: *status,
            stdout: take(size[0]),
            stderr: take(size.get(1).copied().unwrap_or(0)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_locally(cmds: &[Vec<String>], stop: bool) -> Vec<Output> {
        let out =
            process::run(&["sh".into(), "-c".into(), batch_script(cmds, stop)], None).unwrap();
        parse_batch(out.stdout.as_bytes())
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn a_batch_keeps_each_commands_status_output_and_errors_apart() {
        let outs = run_locally(
            &[
                argv(&["echo", "one two"]),
                argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
                argv(&["printf", "%s", "it's"]),
            ],
            false,
        );
        assert_eq!(outs.len(), 3);
        assert_eq!((outs[0].status, outs[0].stdout.as_str()), (0, "one two\n"));
        assert_eq!(
            (
                outs[1].status,
                outs[1].stdout.as_str(),
                outs[1].stderr.as_str()
            ),
            (3, "out\n", "err\n")
        );
        assert_eq!(outs[2].stdout, "it's");
    }

    #[test]
    fn outputs_keep_every_byte_even_nuls_and_missing_final_newlines() {
        let outs = run_locally(
            &[
                argv(&["printf", "a\\0b\\nc"]),
                argv(&["sh", "-c", "printf 'x\\n\\n' >&2"]),
                argv(&["true"]),
            ],
            false,
        );
        assert_eq!(outs[0].stdout, "a\0b\nc");
        assert_eq!(outs[1].stderr, "x\n\n");
        assert_eq!((outs[2].status, outs[2].stdout.as_str()), (0, ""));
    }

    #[test]
    fn commands_read_nothing_and_an_empty_batch_is_empty() {
        let outs = run_locally(&[argv(&["cat"])], false);
        assert_eq!((outs[0].status, outs[0].stdout.as_str()), (0, ""));
        assert!(run_locally(&[], false).is_empty());
    }

    #[test]
    fn a_batch_that_stops_on_failure_runs_nothing_after_it() {
        let outs = run_locally(
            &[argv(&["true"]), argv(&["false"]), argv(&["echo", "never"])],
            true,
        );
        assert_eq!(outs.iter().map(|o| o.status).collect::<Vec<_>>(), [0, 1]);
    }
}
