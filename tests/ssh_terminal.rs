//! The libvirt driver's guest processes over SSH, without a VM: a real sshd on loopback,
//! started by the test, and the same channel pump the driver uses (`driver::libvirt::shell`).
//! A shell on a pty that follows window-size changes and returns its exit status; a command
//! on pipes with its streams apart and its input passed on. Needs root and openssh-server.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use vxlab::driver::libvirt::shell::start;
use vxlab::terminal::{self, GuestProcess, Launch, WinSize};

/// An authenticated session to the test's sshd, as root.
fn session(sshd: &Sshd) -> ssh2::Session {
    let mut s = ssh2::Session::new().unwrap();
    s.set_tcp_stream(TcpStream::connect((sshd.address, sshd.port)).unwrap());
    s.handshake().unwrap();
    s.userauth_pubkey_file("root", None, &sshd.client_key(), None)
        .unwrap();
    s
}

/// Reads the process's output until it shows `want`; everything read.
fn read_until(p: &mut GuestProcess, want: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let text = |b: &[u8]| String::from_utf8_lossy(b).replace('\r', "");
    while !text(&seen).contains(want) {
        let n = p.stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "output ended before {want:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    text(&seen)
}

#[test]
fn a_shell_over_ssh_has_a_terminal_that_follows_its_window_and_returns_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path(), "127.0.0.1".parse().unwrap(), None);
    let launch = Launch {
        argv: ["bash", "--noprofile", "--norc", "-i"]
            .map(String::from)
            .to_vec(),
        env: vec![("PS1".into(), "lab/vm-a# ".into())],
        tty: Some(WinSize { cols: 80, rows: 24 }),
        confined: true,
        uid: 0,
    };
    let mut p = start(session(&sshd), &launch).unwrap();
    read_until(&mut p, "lab/vm-a# ");
    p.stdin.write_all(b"stty size\n").unwrap();
    assert!(read_until(&mut p, "24 80\n").contains("24 80"));
    p.control
        .resize(WinSize {
            cols: 120,
            rows: 40,
        })
        .unwrap();
    // The size reaches sshd asynchronously: ask until it shows.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        p.stdin.write_all(b"stty size\n").unwrap();
        if read_until(&mut p, "lab/vm-a# ").contains("40 120") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new window size never arrived"
        );
    }
    p.stdin.write_all(b"exit 3\n").unwrap();
    let mut rest = Vec::new();
    p.stdout.read_to_end(&mut rest).unwrap();
    assert_eq!(p.control.wait().unwrap(), 3);
}

#[test]
fn a_command_over_ssh_keeps_its_streams_apart_reads_its_input_and_returns_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path(), "127.0.0.1".parse().unwrap(), None);
    let argv: Vec<String> = [
        "sh",
        "-c",
        "read line; echo \"got $line\"; echo err >&2; exit 5",
    ]
    .map(String::from)
    .to_vec();
    let mut p = start(session(&sshd), &terminal::command(&argv, None)).unwrap();
    p.stdin.write_all(b"hello\n").unwrap();
    drop(p.stdin);
    let mut out = String::new();
    p.stdout.read_to_string(&mut out).unwrap();
    let mut err = String::new();
    p.stderr.unwrap().read_to_string(&mut err).unwrap();
    assert_eq!((out.as_str(), err.as_str()), ("got hello\n", "err\n"));
    assert_eq!(p.control.wait().unwrap(), 5);
}
