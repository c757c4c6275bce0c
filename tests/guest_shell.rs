//! `vxlab exec` and `vxlab shell` on a real namespace lab: output as it comes, exit statuses,
//! a real terminal, and a student's shell that reaches its own guest and nothing else on the
//! host. Needs root; run inside `/work/tools/isolated.sh` on a shared machine.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Lab;

fn seed(name: &str, subnet: &str) -> Lab {
    let lab = Lab::shipped("two-netns.yaml", name, &[("192.168.10.", subnet)]);
    let (code, r) = lab.up();
    assert_eq!(code, 0, "{:#}", r["failures"]);
    lab
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn exec_needs_no_dashes_keeps_streams_apart_and_returns_the_status() {
    let lab = seed("t-exec", "192.168.71.");
    let out = lab.run(&["exec", "vm-a", "ip", "-br", "addr", "show", "dev", "vxlan0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("192.168.42.2/24"),
        "{}",
        text(&out.stdout)
    );

    let out = lab.run(&["exec", "vm-b", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    // A namespace guest is called by its name, as a VM is.
    let out = lab.run(&["exec", "vm-b", "hostname"]);
    assert_eq!(text(&out.stdout), "vm-b\n", "{}", text(&out.stderr));
    // A command that is not there, or cannot be run, exits as a shell says it: 127, 126.
    let out = lab.run(&["exec", "vm-a", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("`no-such-command` is not installed in the guest"));
    let out = lab.run(&["exec", "vm-a", "/etc"]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));

    // -t: the command runs on a terminal.
    let out = lab.run(&["exec", "-t", "vm-a", "tty"]);
    assert!(
        text(&out.stdout).starts_with("/dev/pts/"),
        "{}",
        text(&out.stdout)
    );
    lab.down_leaves_nothing();
}

#[test]
fn exec_output_arrives_while_the_command_still_runs() {
    let lab = seed("t-stream", "192.168.72.");
    let mut child = lab
        .vxlab()
        .args([
            "exec",
            "vm-a",
            "sh",
            "-c",
            "echo first; sleep 5; echo second",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the first line waited for the command to end"
    );
    // Ctrl-C loses nothing that was printed (the first line is already here) and ends the
    // command in the guest, with everything it started: no "second", nothing left running.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(rest, Vec::<String>::new());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the command ran on after Ctrl-C"
    );
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let left = Command::new("ip")
        .args(["netns", "pids", "vxlab-t-stream.vm-a"])
        .output()
        .unwrap();
    assert_eq!(text(&left.stdout), "", "processes left in the guest");
    lab.down_leaves_nothing();
}

#[test]
fn a_students_shell_changes_its_own_guest_and_sees_nothing_of_the_host() {
    let lab = seed("t-shell", "192.168.73.");
    let other = seed("t-other", "192.168.74.");
    let secret = lab.state.path().join("t-shell").join("state.json");
    assert!(secret.exists());
    // A service of the host's on every address (as sshd is), and the fence vxlab put up.
    let service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    service.set_nonblocking(true).unwrap();
    let port = service.local_addr().unwrap().port();
    assert_eq!(common::fence_rules("t-shell").len(), common::fence_size());
    let script = format!(
        "echo uid=$(id -u)\n\
         ip link set vxlan0 mtu 1400 && echo changed-own-mtu\n\
         echo namespaces=$(ls /run/netns | wc -l)\n\
         cat {} >/dev/null 2>&1 || echo no-state\n\
         ip netns exec vxlab-t-other.vm-a true 2>/dev/null || echo no-other-netns\n\
         nsenter --net=/proc/1/ns/net true 2>/dev/null || echo no-host-netns\n\
         touch /etc/vxlab-student 2>/dev/null || echo no-host-files\n\
         ping -c 1 -W 1 192.168.42.3 >/dev/null && echo ping-ok\n\
         ip link add stv0 type veth peer name stv1 netns {host_pid} 2>/dev/null || echo no-move-by-pid\n\
         echo processes=$(ls /proc | grep -c '^[0-9]')\n\
         touch /dev/shm/vxlab-student /var/tmp/vxlab-student /run/lock/vxlab-student && echo scratch-private\n\
         ipcmk -M 4096 >/dev/null && echo ipc-made\n\
         timeout 2 bash -c 'echo in >/dev/tcp/192.168.73.1/{port}' 2>/dev/null && echo reached-the-host || echo no-host-service\n\
         ip route add 192.168.74.0/24 via 192.168.73.1 && echo routed-via-the-host\n\
         timeout 2 bash -c 'echo in >/dev/tcp/192.168.74.1/{port}' 2>/dev/null && echo reached-the-host || echo no-host-service-via-other\n\
         exit 3\n",
        secret.display(),
        host_pid = std::process::id(),
    );
    let out = lab.typed(&["shell", "--lab", "t-shell", "vm-a"], &script);
    // Without bash's bracketed-paste switches around each command line.
    let shown = text(&out.stdout)
        .replace("\x1b[?2004h", "")
        .replace("\x1b[?2004l", "")
        .replace('\r', "");
    assert_eq!(out.status.code(), Some(3), "{shown}");
    assert!(
        shown.contains("t-shell/vm-a# "),
        "no prompt naming lab and guest: {shown}"
    );
    for word in [
        "changed-own-mtu",
        "no-state",
        "no-other-netns",
        "no-host-netns",
        "no-host-files",
        "ping-ok",
        "no-move-by-pid",
        "scratch-private",
        "ipc-made",
        "no-host-service",
        "routed-via-the-host",
        "no-host-service-via-other",
    ] {
        assert!(
            shown.contains(&format!("\n{word}")),
            "{word} missing in: {shown}"
        );
    }
    // Not root on the host, and no namespace of the host is in sight.
    assert!(
        shown.contains("\nuid=") && !shown.contains("\nuid=0\n"),
        "{shown}"
    );
    assert!(shown.contains("\nnamespaces=0\n"), "{shown}");
    // Its own processes only (the shell, and what it runs): no host process to name a
    // namespace by, and nothing written to the host's scratch directories.
    let processes: usize = shown
        .split("\nprocesses=")
        .nth(1)
        .and_then(|r| r.lines().next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(processes <= 4, "{processes} processes in sight: {shown}");
    let moved = std::path::Path::new("/sys/class/net/stv1").exists();
    if moved {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", "stv1"])
            .status();
    }
    assert!(!moved, "a student's veth reached the host's namespace");
    for f in [
        "/dev/shm/vxlab-student",
        "/var/tmp/vxlab-student",
        "/run/lock/vxlab-student",
    ] {
        assert!(!std::path::Path::new(f).exists(), "{f} reached the host");
    }
    // The shared memory it made is in an IPC namespace of its own, gone with the shell:
    // none of the host's segments belongs to the student's uid.
    let uid = shown
        .split("\nuid=")
        .nth(1)
        .and_then(|r| r.lines().next())
        .unwrap()
        .trim()
        .to_string();
    let segments = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    assert!(
        !segments
            .lines()
            .any(|l| l.split_whitespace().any(|f| f == uid)),
        "the student's shared memory reached the host: {segments}"
    );
    // Nothing came in to the host's service; the host's own connections still get answers.
    assert!(
        service.accept().is_err() && !shown.contains("\nreached-the-host"),
        "a student's guest reached a service of the host: {shown}"
    );
    let ping = Command::new("ping")
        .args(["-c", "1", "-W", "2", "192.168.73.2"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "the host cannot reach its guest");
    let mtu = lab.ip("vm-a", &["-j", "link", "show", "dev", "vxlan0"]);
    assert!(text(&mtu.stdout).contains("\"mtu\":1400"));
    assert!(!std::path::Path::new("/etc/vxlab-student").exists());
    other.down_leaves_nothing();
    lab.down_leaves_nothing();
}

#[test]
fn exec_takes_the_command_with_or_without_dashes() {
    use clap::Parser;
    use vxlab::cli::{Cli, Command};
    for args in [
        &["vxlab", "exec", "vm-a", "ip", "-br", "a"][..],
        &["vxlab", "exec", "vm-a", "--", "ip", "-br", "a"][..],
        &["vxlab", "exec", "-t", "vm-a", "ip", "-br", "a"][..],
    ] {
        let Command::Exec { guest, command, .. } = Cli::try_parse_from(args).unwrap().command
        else {
            panic!("not exec");
        };
        assert_eq!(
            (guest.as_str(), command),
            ("vm-a", vec!["ip".to_string(), "-br".into(), "a".into()]),
            "{args:?}"
        );
    }
}

/// A pseudo-terminal of `rows` by `cols`, as a student's terminal window: (master, slave).
fn window(rows: u16, cols: u16) -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors and reads the winsize it is given.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here alone.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    }
}

#[test]
fn a_shell_follows_its_windows_size_when_the_student_resizes_it() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let lab = seed("t-winsz", "192.168.75.");
    let (mut master, slave) = window(40, 100);
    let mut cmd = lab.vxlab();
    cmd.args(["shell", "vm-a"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    // SAFETY: between fork and exec, only system calls: a session of its own, with the
    // window as its controlling terminal, as a terminal emulator starts a shell.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (mut reader, gathered) = (master.try_clone().unwrap(), seen.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            gathered
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seen.lock().unwrap().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} in the window:\n{}",
                seen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("t-winsz/vm-a#");
    // `stty size` prints rows and columns; the marker keeps the typed line apart from the
    // answer.
    master.write_all(b"echo size=$(stty size)\r").unwrap();
    wait_for("size=40 100");
    // The student makes the window bigger: the kernel tells vxlab (SIGWINCH), and vxlab the
    // guest's terminal.
    let bigger = libc::winsize {
        ws_row: 50,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    assert_eq!(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &bigger) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut asked = 0;
    while !seen.lock().unwrap().contains("size=50 120") {
        assert!(
            Instant::now() < deadline,
            "the guest's terminal kept its size:\n{}",
            seen.lock().unwrap()
        );
        // The resize travels on its own; ask again until the guest's terminal has it.
        if asked < 20 {
            master.write_all(b"echo size=$(stty size)\r").unwrap();
            asked += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    master.write_all(b"exit 4\r").unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(4));
    lab.down_leaves_nothing();
}

#[test]
fn down_ends_what_still_runs_in_the_lab_and_shell_ends_with_its_input() {
    let lab = seed("t-endall", "192.168.92.");
    // A command still running in a guest when the lab is taken down ends with it: it does not
    // go on in a namespace that is gone (keeping it, and its devices, alive).
    let mut running = lab
        .vxlab()
        .args(["exec", "vm-a", "sleep", "600"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ns = "vxlab-t-endall.vm-a";
    let deadline = Instant::now() + Duration::from_secs(10);
    while text(
        &Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .unwrap()
            .stdout,
    )
    .is_empty()
    {
        assert!(Instant::now() < deadline, "sleep never started in vm-a");
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.down_leaves_nothing();
    let status = running.wait().unwrap();
    assert!(!status.success(), "{status}");

    // A shell whose input ends (not a terminal) ends too, as bash at the end of a script.
    let lab = seed("t-endall", "192.168.92.");
    let started = Instant::now();
    let out = lab.typed(&["shell", "--lab", "t-endall", "vm-a"], "echo hi\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the shell waited after its input ended"
    );
    assert!(text(&out.stdout).contains("hi"), "{}", text(&out.stdout));
    lab.down_leaves_nothing();
}
