//! The SSH connection vxlab keeps to each hypervisor of a class (`driver::libvirt::remote::jump`)
//! against a real sshd the test starts on loopback, without libvirt or VMs: commands with
//! their streams and exit status, more commands at once than sshd allows sessions, many
//! tunnels at once over the one connection (as every guest on a host shares it), the host key
//! checked, and a host that goes away noticed.
//! Needs root and openssh-server.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use vxlab::driver::libvirt::remote::jump::{Jump, JumpError, SshLogin};

fn login(sshd: &Sshd, no_verify: bool, known_hosts: Option<PathBuf>) -> SshLogin {
    SshLogin {
        user: "root".into(),
        host: sshd.address.to_string(),
        port: sshd.port,
        keyfile: Some(sshd.client_key()),
        known_hosts,
        no_verify,
    }
}

/// A TCP server on loopback that echoes every connection back, as a guest's sshd stands in
/// for here.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    addr
}

#[test]
fn one_connection_carries_commands_and_many_tunnels_and_notices_a_lost_host() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut sshd = Sshd::start(dir.path(), "127.0.0.1".parse().unwrap(), None);
    let jump = Jump::connect(&login(&sshd, true, None)).unwrap();

    // A command: its output, its errors and its status, apart.
    let (status, out, err) = jump.run("echo out; echo err >&2; exit 3").unwrap();
    assert_eq!(
        (status, out.as_slice(), err.as_str()),
        (3, &b"out\n"[..], "err\n")
    );
    // Output larger than any SSH window (libssh2's and OpenSSH's are 2 MiB) arrives whole:
    // the window must be given back as the output is read.
    let (status, out, _) = jump.run("seq 1 1000000").unwrap();
    assert_eq!(status, 0);
    assert_eq!(out.len(), 6_888_896);

    // Eight tunnels at once, each carrying 4 MiB both ways, past the window.
    let echo = echo_server();
    let moved: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let jump = &jump;
                s.spawn(move || {
                    let t = jump.tunnel(echo).unwrap();
                    let data = vec![i; 4 << 20];
                    let mut w = t.try_clone().unwrap();
                    let writer = std::thread::spawn(move || {
                        w.write_all(&data).unwrap();
                        w.shutdown(std::net::Shutdown::Write).unwrap();
                    });
                    let mut back = Vec::new();
                    (&t).read_to_end(&mut back).unwrap();
                    writer.join().unwrap();
                    assert!(back.iter().all(|b| *b == i));
                    back.len()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(moved, vec![4 << 20; 8]);
    // sshd itself made the connections: they are direct-tcpip requests in its log, all over
    // the one login.
    let log = sshd.log();
    assert_eq!(log.matches("Accepted publickey").count(), 1, "{log}");
    assert_eq!(
        log.matches(&format!("target 127.0.0.1 port {}", echo.port()))
            .count(),
        8,
        "{log}"
    );
    // Twenty commands at once, each holding its session a moment, on an sshd that allows
    // ten sessions per connection (OpenSSH's default): every one runs, none is refused.
    let ran: Vec<(i32, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let jump = &jump;
                s.spawn(move || {
                    // (The login shell's own start-up may write to stderr; only the
                    // command's output and status are its own.)
                    let (status, out, _) = jump.run(&format!("sleep 0.3; echo {i}")).unwrap();
                    (status, out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, out)) in ran.iter().enumerate() {
        assert_eq!((*status, out.as_slice()), (0, format!("{i}\n").as_bytes()));
    }

    // Nothing listens there: the host's refusal comes back as such.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(matches!(
        jump.tunnel(closed),
        Err(JumpError::Refused { .. })
    ));

    // The host's key: listed in a known_hosts file, accepted; another key, refused.
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, sshd.known_hosts_line()).unwrap();
    Jump::connect(&login(&sshd, false, Some(known.clone()))).unwrap();
    std::fs::write(&known, sshd.wrong_known_hosts_line()).unwrap();
    let e = Jump::connect(&login(&sshd, false, Some(known)))
        .err()
        .unwrap();
    assert!(e.to_string().contains("not the one"), "{e}");

    // The host goes away: the connection notices without being used, and says so.
    sshd.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    while jump.lost().is_none() {
        assert!(Instant::now() < deadline, "a lost host was not noticed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(matches!(jump.tunnel(echo), Err(JumpError::Lost { .. })));
    assert!(Jump::connect(&login(&sshd, true, None)).is_err());
}
