//! Ctrl-C during `up`: vxlab stops between steps, says what is left, and one `down` removes
//! every trace. Real namespaces; needs root.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Lab;

/// A lab of `n` namespace guests on one vxlan, underlay 10.`net`.0.0/16: enough work that a
/// signal lands mid-way.
fn big_lab(name: &str, n: usize, net: u8) -> Lab {
    let mut text = format!(
        "name: {name}\ndriver: netns\nunderlay:\n  bridge: vxbr-{name}\n  subnet: 10.{net}.0.0/16\n\
         guests:\n"
    );
    for i in 0..n {
        text.push_str(&format!(
            "  g{i}: {{ address: 10.{net}.{}.{} }}\n",
            i / 200,
            i % 200 + 2
        ));
    }
    text.push_str(
        "vxlans:\n  - name: vxlan0\n    vni: 81\n    group: 239.1.1.81\n    addresses:\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "      g{i}: 10.{}.{}.{}/16\n",
            net + 100,
            i / 200,
            i % 200 + 2
        ));
    }
    Lab::from_text(&text)
}

#[test]
fn ctrl_c_during_up_stops_between_steps_and_down_removes_everything() {
    interrupt_up(big_lab("t-int", 60, 81), libc::SIGINT);
}

#[test]
fn sigterm_during_up_stops_it_the_same_way() {
    interrupt_up(big_lab("t-term", 60, 83), libc::SIGTERM);
}

/// Starts `up` of `lab`, sends `signal` once its first guest is recorded, and checks that it
/// stopped between steps, said so, and that `down` leaves nothing.
/// `vxlab up` of `lab` started, its errors piped to the test.
fn start_up(lab: &Lab) -> std::process::Child {
    lab.vxlab()
        .args(["up", lab.file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn interrupt_up(lab: Lab, signal: libc::c_int) {
    let child = start_up(&lab);
    // As soon as the first namespace is recorded, the lab is part-way: interrupt it there.
    let state = lab.state.path().join(&lab.name).join("state.json");
    signal_when(
        &child,
        signal,
        Duration::from_secs(30),
        "up never recorded a guest",
        || std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"netns\"")),
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        stderr.contains(&format!("vxlab down {}", lab.name)),
        "{stderr}"
    );
    lab.down_leaves_nothing();
}

#[test]
fn ctrl_c_during_ups_check_stops_it_without_calling_guests_unreachable() {
    let lab = big_lab("t-intc", 60, 82);
    let child = lab
        .vxlab()
        .args(["up", lab.file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every guest is configured once their tools are recorded: up is into its check (a mesh
    // of 60 guests' pings, then the reads). Interrupt it there.
    let state = lab.state.path().join(&lab.name).join("state.json");
    let configured = || {
        std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["tools"].as_object().map(|t| t.len()))
            == Some(60)
    };
    signal_when(
        &child,
        libc::SIGINT,
        Duration::from_secs(30),
        "up never configured its guests",
        configured,
    );
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // Stopped, and said so; no guest called unreachable for a read it never made.
    assert_eq!(out.status.code(), Some(130), "{stdout}{stderr}");
    assert!(!stdout.contains("not reachable"), "{stdout}");
    let (code, report) = lab.check();
    assert_eq!(code, 0, "{report:#}");
    lab.down_leaves_nothing();
}

/// Sends `signal` to `child` once `ready` holds (checked every millisecond or two), failing
/// with `never` after `within`.
fn signal_when(
    child: &std::process::Child,
    signal: libc::c_int,
    within: Duration,
    never: &str,
    ready: impl Fn() -> bool,
) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < within, "{never}");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

/// Whether process `pid` catches `signal` (its handler is installed): from /proc.
fn catches(pid: u32, signal: libc::c_int) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

#[test]
fn ctrl_c_during_down_is_answered_and_down_goes_on_to_the_end() {
    let lab = big_lab("t-intd", 60, 85);
    assert_eq!(lab.up().0, 0);
    let child = lab
        .vxlab()
        .args(["down", &lab.name])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once down listens for Ctrl-C (it does before it touches anything), press it.
    signal_when(
        &child,
        libc::SIGINT,
        Duration::from_secs(10),
        "down never listened",
        || catches(child.id(), libc::SIGINT),
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("down goes on to the end") && stderr.contains("Ctrl-C again stops it"),
        "{stderr}"
    );
    assert!(stderr.contains("lab t-intd removed"), "{stderr}");
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn ctrl_c_at_any_moment_of_up_stops_it_as_interrupted_never_with_a_false_finding() {
    // Ctrl-C at a terminal signals the whole foreground process group: vxlab and the `ip`
    // and `bridge` it runs. A child killed half-way printed nothing or failed; that must read
    // as the interruption (130, "interrupted"), never as a finding about the guest ("kernel
    // is too old", "no vxlan module", a command that failed: 69 or 70), and never as a
    // SIGPIPE death without a word (141). The delays spread over the time a whole `up` of
    // the seed lab takes on this machine.
    let lab = Lab::shipped(
        "two-netns.yaml",
        "t-intr",
        &[("192.168.10.", "192.168.89.")],
    );
    let file = lab.file.to_str().unwrap().to_string();
    let started = Instant::now();
    let (code, _) = lab.up();
    let whole = started.elapsed();
    assert_eq!(code, 0);
    lab.down_leaves_nothing();
    let mut seen = Vec::new();
    for k in 1..=40u32 {
        let ms = (whole * k / 40).as_millis() as u64;
        let child = lab
            .vxlab()
            .args(["up", &file])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        // SAFETY: kill(2) on the child's own process group.
        unsafe {
            libc::kill(-(child.id() as libc::pid_t), libc::SIGINT);
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code();
        // Before vxlab has set up its handler, the signal ends it as it ends any program.
        let before_handler = out.status.signal() == Some(libc::SIGINT);
        assert!(
            before_handler
                || code == Some(0)
                || (code == Some(130) && stderr.contains("interrupted")),
            "after {ms} ms: {:?}\n{stderr}",
            out.status
        );
        seen.push(code);
        lab.down_leaves_nothing();
    }
    // The signal did land mid-way, in a fair number of runs (how many depends on the load).
    assert!(
        seen.iter().filter(|c| **c == Some(130)).count() >= 5,
        "{seen:?}"
    );
}

#[test]
fn up_waiting_for_another_vxlab_says_who_and_stops_at_ctrl_c_having_made_nothing() {
    use std::io::{BufRead, BufReader};
    // Another vxlab (here `flock`) holds the host-wide lock that names are checked under.
    std::fs::create_dir_all("/run/vxlab").unwrap();
    let mut holder = std::process::Command::new("flock")
        .args(["/run/vxlab/host.lock", "sleep", "60"])
        .spawn()
        .unwrap();
    let holding = || {
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("FLOCK") && l.contains(&format!(" {} ", holder.id())))
    };
    let start = Instant::now();
    while !holding() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "flock never held"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let lab = big_lab("t-hostwait", 2, 86);
    let mut child = start_up(&lab);
    // Said at once, with who holds it.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(first.contains("waiting for `flock"), "{first}");
    assert!(first.contains(&format!("(pid {})", holder.id())), "{first}");
    let asked = Instant::now();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    let stopped_in = asked.elapsed();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(stopped_in < Duration::from_secs(5), "{stopped_in:?}");
    assert!(rest.contains("nothing was created or changed"), "{rest}");
    assert!(!rest.contains("part-way"), "{rest}");
    assert!(std::fs::read_dir(lab.state.path())
        .unwrap()
        .next()
        .is_none());
    assert!(!std::path::Path::new("/sys/class/net/vxbr-t-hostwait").exists());
}
