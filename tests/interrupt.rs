//! Ctrl-C during `up`: vxlab stops between steps, says what is left, and one `down` removes
//! every trace. Real namespaces; needs root.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Lab;

/// A lab of `n` namespace guests on one vxlan: enough work that a signal lands mid-way.
fn big_lab(name: &str, n: usize) -> Lab {
    let mut text = format!(
        "name: {name}\ndriver: netns\nunderlay:\n  bridge: vxbr-{name}\n  subnet: 10.81.0.0/16\n\
         guests:\n"
    );
    for i in 0..n {
        text.push_str(&format!(
            "  g{i}: {{ address: 10.81.{}.{} }}\n",
            i / 200,
            i % 200 + 2
        ));
    }
    text.push_str(
        "vxlans:\n  - name: vxlan0\n    vni: 81\n    group: 239.1.1.81\n    addresses:\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "      g{i}: 10.181.{}.{}/16\n",
            i / 200,
            i % 200 + 2
        ));
    }
    Lab::from_text(&text)
}

#[test]
fn ctrl_c_during_up_stops_between_steps_and_down_removes_everything() {
    let lab = big_lab("t-int", 60);
    let child = Command::new(env!("CARGO_BIN_EXE_vxlab"))
        .args(["up", lab.file.to_str().unwrap()])
        .env("VXLAB_STATE_DIR", lab.state.path())
        .env("VXLAB_CACHE_DIR", lab.cache.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // As soon as the first namespace is recorded, the lab is part-way: interrupt it there.
    let state = lab.state.path().join(&lab.name).join("state.json");
    let start = Instant::now();
    while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"netns\"")) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "up never recorded a guest"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
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
