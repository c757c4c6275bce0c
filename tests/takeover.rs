//! Labs never take over each other: `up` refuses a name or a subnet that is another's, naming
//! the owner, before anything is created; two labs started at once on one bridge or subnet
//! cannot both win; and the host's neighbour-table settings are handed over between labs.
//! Real namespaces; needs root.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Lab;

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A two-guest lab named `name` on bridge `bridge` and underlay `192.168.NET.0/24`.
fn lab(name: &str, bridge: &str, net: u8) -> Lab {
    Lab::from_text(&format!(
        "name: {name}\ndriver: netns\nunderlay:\n  bridge: {bridge}\n  subnet: 192.168.{net}.0/24\n\
         guests:\n  vm-a: {{ address: 192.168.{net}.2 }}\n  vm-b: {{ address: 192.168.{net}.3 }}\n\
         vxlans:\n  - name: vxlan0\n    vni: 42\n    group: 239.1.1.1\n    addresses:\n\
         \x20     vm-a: 10.{net}.0.2/24\n      vm-b: 10.{net}.0.3/24\n"
    ))
}

/// Deletes the named network namespace the test made, however the test ends.
struct DelNs(String);

impl Drop for DelNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_namespace_up_did_not_record_is_refused_with_nothing_created_and_kept_by_down() {
    let l = lab("t-adopt", "vxbr-t-adopt", 151);
    // Someone else's namespace under the name this lab would give vm-b.
    let ns = vxlab::plan::instance_name("t-adopt", "vm-b");
    assert!(Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success());
    let _del = DelNs(ns.clone());
    let out = l.run(&["up", l.file.to_str().unwrap()]);
    let err = text(&out);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(err.contains(&format!("namespace {ns}")), "{err}");
    assert!(
        err.contains("made by another lab named t-adopt, guest vm-b: one brought up with"),
        "{err}"
    );
    assert!(err.contains("nothing was created"), "{err}");
    assert!(!err.contains("vxlab down"), "{err}");
    // Nothing of the lab exists, not even its state; the other namespace is untouched.
    assert!(std::fs::read_dir(l.state.path()).unwrap().next().is_none());
    assert!(!Path::new("/sys/class/net/vxbr-t-adopt").exists());
    assert!(Path::new("/run/netns").join(&ns).exists());
}

#[test]
fn a_directory_where_a_namespace_would_go_is_refused_before_anything_and_left_alone() {
    let l = lab("t-nsdir", "vxbr-t-nsdir", 158);
    let dir = Path::new("/run/netns").join(vxlab::plan::instance_name("t-nsdir", "vm-b"));
    std::fs::create_dir_all(dir.join("keep")).unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let out = l.run(&["up", l.file.to_str().unwrap()]);
    let err = text(&out);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(
        err.contains(&format!(
            "namespace {}",
            dir.file_name().unwrap().to_str().unwrap()
        )),
        "{err}"
    );
    assert!(err.contains("nothing was created"), "{err}");
    assert!(std::fs::read_dir(l.state.path()).unwrap().next().is_none());
    assert!(!Path::new("/sys/class/net/vxbr-t-nsdir").exists());
    assert!(dir.join("keep").is_dir());
}

#[test]
fn a_copy_never_merges_into_a_standalone_lab_of_the_same_name() {
    let standalone = lab("t-w-1", "vxbr-t-w1", 152);
    assert_eq!(standalone.up().0, 0);
    // Copy 1 of lab `t-w` is also called `t-w-1`; it shares the standalone lab's state dir.
    let base_text = std::fs::read_to_string(&standalone.file)
        .unwrap()
        .replace("name: t-w-1", "name: t-w")
        .replace("vxbr-t-w1", "vxbr-t-w");
    let base_file = standalone.file.with_file_name("t-w.yaml");
    std::fs::write(&base_file, base_text).unwrap();
    let out = standalone.run(&["up", base_file.to_str().unwrap(), "--instance", "1"]);
    let err = text(&out);
    assert_eq!(out.status.code(), Some(73), "{err}");
    // Said once, with what was done (nothing) and what to do; no advice about a subnet the
    // copy did not choose.
    assert_eq!(
        err.matches("already running from the lab file").count(),
        1,
        "{err}"
    );
    assert!(err.contains("nothing was created or changed"), "{err}");
    assert!(err.contains("`vxlab down t-w-1`"), "{err}");
    assert!(
        !err.contains("part-way") && !err.contains("underlay.subnet"),
        "{err}"
    );
    // The standalone lab is whole and still its file's.
    assert_eq!(standalone.check().0, 0);
    let copy = std::fs::read_to_string(standalone.state.path().join("t-w-1/lab.yaml")).unwrap();
    assert!(
        copy.contains("name: t-w-1"),
        "the copy overwrote the lab's file: {copy}"
    );
    // The report's own steps: a class of two, whose copy 1 is the standalone lab's name.
    // Copy 1 is refused, copy 2 comes up; the standalone lab is untouched.
    let out = standalone.run(&[
        "up",
        base_file.to_str().unwrap(),
        "--count",
        "2",
        "--pool",
        "10.236.0.0/22",
    ]);
    let err = text(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("t-w-1"), "{err}");
    assert_eq!(standalone.check().0, 0);
    let copy = std::fs::read_to_string(standalone.state.path().join("t-w-1/lab.yaml")).unwrap();
    assert!(copy.contains("name: t-w-1"), "{copy}");
    // `down t-w --all` takes the copies down, and only them: the standalone lab stays.
    let out = standalone.run(&["down", "t-w", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!standalone.state.path().join("t-w-2").exists());
    assert!(!Path::new("/run/netns/vxlab-t-w-2.vm-a").exists());
    assert_eq!(
        standalone.check().0,
        0,
        "down --all of the copies took the lab"
    );
    // `down t-w-1` then removes the standalone lab, all of it.
    standalone.down_leaves_nothing();
}

#[test]
fn a_running_labs_guests_are_not_renamed_or_removed_under_it() {
    let l = lab("t-shape", "vxbr-t-shape", 157);
    assert_eq!(l.up().0, 0);
    let text_of = |f: &Path| std::fs::read_to_string(f).unwrap();
    let original = text_of(&l.file);
    // vm-a renamed vm-x: it would take vm-a's host link, whose alias names vm-a.
    for (changed, wanted) in [
        (original.replace("vm-a", "vm-x"), "vm-x, vm-b:"),
        (
            original
                .replace("vm-a:", "vm-0:")
                .replace("vm-b:", "vm-a:")
                .replace("vm-0:", "vm-b:"),
            "vm-b, vm-a:",
        ),
        (
            original
                .replace("  vm-b: { address: 192.168.157.3 }\n", "")
                .replace("      vm-b: 10.157.0.3/24\n", ""),
            "vm-a:",
        ),
    ] {
        std::fs::write(&l.file, &changed).unwrap();
        let out = l.run(&["up", l.file.to_str().unwrap()]);
        let err = text(&out);
        assert_eq!(out.status.code(), Some(65), "{err}");
        assert!(err.contains("running with guests vm-a, vm-b"), "{err}");
        assert!(err.contains(&format!("file now has {wanted}")), "{err}");
        assert!(err.contains("Nothing was changed"), "{err}");
        assert!(!err.contains("part-way"), "{err}");
        assert_eq!(l.check().0, 0, "the refused up changed the running lab");
    }
    // A guest added at the end joins the running lab.
    let grown = original
        .replace(
            "  vm-b: { address: 192.168.157.3 }\n",
            "  vm-b: { address: 192.168.157.3 }\n  vm-c: { address: 192.168.157.4 }\n",
        )
        .replace(
            "      vm-b: 10.157.0.3/24\n",
            "      vm-b: 10.157.0.3/24\n      vm-c: 10.157.0.4/24\n",
        );
    assert_ne!(grown, original);
    std::fs::write(&l.file, &grown).unwrap();
    assert_eq!(l.up().0, 0);
    assert_eq!(l.check().0, 0);
    assert!(Path::new("/run/netns/vxlab-t-shape.vm-c").exists());
    l.down_leaves_nothing();
}

#[test]
fn a_subnet_held_by_a_bridge_set_down_is_still_taken() {
    let a = lab("t-sub-a", "vxbr-t-suba", 159);
    let b = lab("t-sub-b", "vxbr-t-subb", 159);
    assert_eq!(a.up().0, 0);
    // Down, the bridge has no route to its subnet; its address still holds it.
    assert!(Command::new("ip")
        .args(["link", "set", "vxbr-t-suba", "down"])
        .status()
        .unwrap()
        .success());
    let out = b.run(&["up", b.file.to_str().unwrap()]);
    let err = text(&out);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(
        err.contains("192.168.159.0/24") && err.contains("vxbr-t-suba"),
        "{err}"
    );
    assert!(err.contains("nothing was created"), "{err}");
    assert!(!Path::new("/sys/class/net/vxbr-t-subb").exists());
    // Lab A's own `up` repairs its bridge: its own subnet is no obstacle.
    assert_eq!(a.up().0, 0);
    assert_eq!(a.check().0, 0);
    a.down_leaves_nothing();
}

#[test]
fn two_classes_of_two_state_dirs_started_at_once_get_disjoint_subnets() {
    // Two instructors, each with a state directory of their own, one pool.
    let a = lab("t-cls-a", "vxbr-tca", 160);
    let b = lab("t-cls-b", "vxbr-tcb", 161);
    let start = |l: &Lab| {
        l.vxlab()
            .args([
                "up",
                l.file.to_str().unwrap(),
                "--count",
                "2",
                "--pool",
                "10.237.0.0/22",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (start(&a), start(&b));
    let (oa, ob) = (
        ca.wait_with_output().unwrap(),
        cb.wait_with_output().unwrap(),
    );
    assert!(oa.status.success(), "{}", text(&oa));
    assert!(ob.status.success(), "{}", text(&ob));
    let underlays = |l: &Lab| -> Vec<String> {
        let out = l.run(&["status", "--json"]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        s["labs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["underlay"].as_str().unwrap().to_string())
            .collect()
    };
    let (ua, ub) = (underlays(&a), underlays(&b));
    assert_eq!((ua.len(), ub.len()), (2, 2), "{ua:?} {ub:?}");
    assert!(ua.iter().all(|u| !ub.contains(u)), "{ua:?} {ub:?}");
    for l in [&a, &b] {
        let out = l.run(&["down", &l.name, "--all"]);
        assert!(out.status.success(), "{}", text(&out));
    }
}

/// Starts `a` and `b` at once and returns their exit statuses.
fn race(a: &Lab, b: &Lab) -> (Option<i32>, Option<i32>, String) {
    let start = |l: &Lab| {
        l.vxlab()
            .args(["up", l.file.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (start(a), start(b));
    let (oa, ob) = (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    );
    (oa.status.code(), ob.status.code(), text(&oa) + &text(&ob))
}

#[test]
fn two_labs_started_at_once_on_one_bridge_or_one_subnet_never_both_win() {
    // Same bridge, other subnets; then other bridges, same subnet. Before the host-wide lock,
    // both came up sharing the bridge 8 times in 15, the subnet 11 times in 15.
    // Five of each: without the lock, the bridge race passed unnoticed about 2 times in 100.
    for trial in 0..10u8 {
        let same_bridge = trial % 2 == 0;
        let (a, b) = if same_bridge {
            (
                lab("t-race-a", "vxbr-t-race", 153),
                lab("t-race-b", "vxbr-t-race", 154),
            )
        } else {
            (
                lab("t-race-c", "vxbr-t-rc", 155),
                lab("t-race-d", "vxbr-t-rd", 155),
            )
        };
        let (ca, cb, err) = race(&a, &b);
        let won: Vec<&Lab> = [(ca, &a), (cb, &b)]
            .into_iter()
            .filter(|(c, _)| *c == Some(0))
            .map(|(_, l)| l)
            .collect();
        assert_eq!(won.len(), 1, "trial {trial}: {ca:?} {cb:?}: {err}");
        assert!(err.contains("nothing was created"), "trial {trial}: {err}");
        // The loser left nothing; taking it down does not touch the winner.
        let lost = if ca == Some(0) { &b } else { &a };
        let out = lost.run(&["down", &lost.name]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(won[0].check().0, 0, "trial {trial}: the winner broke");
        won[0].down_leaves_nothing();
    }
}

#[test]
fn a_state_dir_holding_only_a_lock_is_removed_by_down() {
    let l = lab("t-lockonly", "vxbr-t-lo", 156);
    let dir = l.state.path().join("t-lockonly");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("lock"), "12345\n").unwrap();
    let out = l.run(&["down", "t-lockonly"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("had no state left, only files of a vxlab stopped part-way"),
        "{}",
        text(&out)
    );
    assert!(!dir.exists());
    // What a `down` killed while it removed the directory leaves (the state file goes
    // first): the lab file and the lock. The next `down` removes it.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("lab.yaml"), l.text()).unwrap();
    std::fs::write(dir.join("lock"), "12345\n").unwrap();
    let out = l.run(&["down", "t-lockonly"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dir.exists(), "{}", text(&out));
    // Named by its lab file, as `up` was.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("lock"), "12345\n").unwrap();
    let out = l.run(&["down", l.file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dir.exists(), "{}", text(&out));
    // A directory that is not vxlab's, under a name that is no lab's or with no lock, stays.
    let mine = l.state.path().join("My_Data");
    std::fs::create_dir_all(mine.join("sub")).unwrap();
    let _ = l.run(&["down", "My_Data"]);
    assert!(mine.join("sub").is_dir());
    let photos = l.state.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::write(photos.join("cat.jpg"), "x").unwrap();
    let out = l.run(&["down", "photos"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no vxlab lock"), "{}", text(&out));
    assert!(photos.join("cat.jpg").exists());
}

/// The IPv4 neighbour-table thresholds, as the kernel has them now.
fn thresholds() -> (u64, u64) {
    let read = |k: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/neigh/default/{k}"))
            .expect(
                "gc_thresh is shown only in the host's own network namespace: run this test there",
            )
            .trim()
            .parse()
            .unwrap()
    };
    (read("gc_thresh2"), read("gc_thresh3"))
}

/// A lab of `n` guests on one vxlan: a full mesh needs room in the neighbour table.
fn mesh(name: &str, n: usize, net: u8) -> Lab {
    let mut t = format!(
        "name: {name}\ndriver: netns\nunderlay:\n  bridge: vxbr-{name}\n  subnet: 10.{net}.0.0/16\nguests:\n"
    );
    for i in 0..n {
        t.push_str(&format!("  g{i}: {{ address: 10.{net}.0.{} }}\n", i + 2));
    }
    t.push_str("vxlans:\n  - name: vxlan0\n    vni: 9\n    group: 239.1.1.9\n    addresses:\n");
    for i in 0..n {
        t.push_str(&format!("      g{i}: 10.{}.0.{}/24\n", net + 1, i + 2));
    }
    Lab::from_text(&t)
}

#[test]
fn neighbour_tables_are_handed_over_between_labs_and_restored_by_the_last() {
    let before = thresholds();
    // Two labs in two state dirs, both needing more than the default.
    let (a, b) = (mesh("t-nb-a", 30, 160), mesh("t-nb-b", 40, 170));
    assert_eq!(a.up().0, 0);
    let raised_by_a = thresholds();
    assert!(raised_by_a.1 > before.1, "{raised_by_a:?} vs {before:?}");
    assert_eq!(b.up().0, 0);
    let both = thresholds();
    assert!(both.1 >= raised_by_a.1);
    // A goes: B still needs its room.
    a.down_leaves_nothing();
    let b_alone = thresholds();
    assert!(b_alone.1 >= b.plan_needs_v4() * 4, "{b_alone:?}");
    assert_eq!(b.check().0, 0);
    // The last one restores what the host had.
    b.down_leaves_nothing();
    assert_eq!(thresholds(), before);
}

#[test]
fn vxlab_in_another_network_namespace_says_what_the_host_must_raise() {
    // There /proc/sys holds no neighbour limits (the host's namespace keeps them, for all):
    // `up` cannot raise them, and says what to run on the host instead of staying silent.
    let lab = mesh("t-nb-ns", 16, 190);
    let outer = "vxt-nb-outer";
    assert!(Command::new("ip")
        .args(["netns", "add", outer])
        .status()
        .unwrap()
        .success());
    let _del = DelNs(outer.into());
    // One shell, so the lab's namespaces stay visible from `up` to `down`.
    let script = format!(
        "{vx} up {file} && {vx} down t-nb-ns",
        vx = env!("CARGO_BIN_EXE_vxlab"),
        file = lab.file.display()
    );
    let out = lab
        .command("ip")
        .args(["netns", "exec", outer, "sh", "-c", &script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &text(&out);
    assert!(out.status.success(), "{said}");
    let needs = lab.plan_needs_v4();
    for line in [
        format!(
            "`sysctl -w net.ipv4.neigh.default.gc_thresh3={}`",
            needs * 4
        ),
        format!(
            "`sysctl -w net.ipv4.neigh.default.gc_thresh2={}`",
            needs * 2
        ),
        "`sysctl -w net.core.netdev_max_backlog=1024`".to_string(),
    ] {
        assert!(said.contains(&line), "{line} not in: {said}");
    }
    assert!(
        said.contains("checks passed") && said.contains("lab t-nb-ns removed"),
        "{said}"
    );
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

trait Needs {
    fn plan_needs_v4(&self) -> u64;
}

impl Needs for Lab {
    fn plan_needs_v4(&self) -> u64 {
        let lab = vxlab::lab::load(&self.file).unwrap();
        vxlab::plan::plan(&lab).neighbours_needed().0 as u64
    }
}

/// `/sys/kernel/rcu_expedited`, which `down` turns on while it deletes links.
fn rcu_expedited() -> String {
    std::fs::read_to_string("/sys/kernel/rcu_expedited")
        .unwrap()
        .trim()
        .to_string()
}

/// Puts `/sys/kernel/rcu_expedited` back as the test found it, whatever happens.
struct RestoreRcu(String);

impl Drop for RestoreRcu {
    fn drop(&mut self) {
        let _ = std::fs::write("/sys/kernel/rcu_expedited", &self.0);
    }
}

#[test]
fn down_restores_the_rcu_setting_even_after_a_vxlab_killed_while_deleting() {
    let _restore = RestoreRcu(rcu_expedited());
    let lab = mesh("t-rcu", 3, 180);
    assert_eq!(lab.up().0, 0);
    // A vxlab killed while deleting left the switch on and its record of the original, 0
    // (planted under vxlab's own lock, so no other down sees half of it).
    let run = std::path::Path::new("/run/vxlab");
    let record = run.join("rcu_expedited.previous");
    {
        let lock = std::fs::File::create(run.join("rcu_expedited.lock")).unwrap();
        // SAFETY: flock on a file we own.
        assert_eq!(
            unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
            0
        );
        std::fs::write(&record, "0").unwrap();
        std::fs::write("/sys/kernel/rcu_expedited", "1").unwrap();
    }
    lab.down_leaves_nothing();
    assert_eq!(rcu_expedited(), "0");
    assert!(!record.exists());
}
