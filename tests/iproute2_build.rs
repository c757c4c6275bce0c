//! iproute2 readiness and builds from source, on real namespaces. One test really builds
//! Debian's iproute2 source (fetched with `apt-get source --download-only` through a private
//! deb-src entry for the mirror apt already uses) and proves the built `ip` is the one that
//! created the vxlan devices. The others make the host's `ip` look old with a wrapper that
//! prints an old release's `ip link help`, and build from tiny fake sources, so they run in
//! seconds. Needs root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{guest, marked_tarball, ping_replied, root, sh, Lab};
use serde_json::Value;

/// A fake iproute2 source tree in a tarball: `configure` runs `configure_body`; `make
/// install` puts wrappers of the host's ip and bridge where a real build puts them.
fn fake_tarball(dir: &Path, name: &str, configure_body: &str) -> PathBuf {
    let tree = dir.join(name);
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(
        tree.join("configure"),
        format!("#!/bin/sh\n{configure_body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        tree.join("configure"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let ip = which("ip");
    let bridge = which("bridge");
    std::fs::write(
        tree.join("Makefile"),
        format!(
            "all:\n\t@echo fake build\ninstall:\n\tmkdir -p $(DESTDIR)/sbin\n\
             \tprintf '#!/bin/sh\\nexec {ip} \"$$@\"\\n' > $(DESTDIR)/sbin/ip\n\
             \tprintf '#!/bin/sh\\nexec {bridge} \"$$@\"\\n' > $(DESTDIR)/sbin/bridge\n\
             \tchmod 755 $(DESTDIR)/sbin/ip $(DESTDIR)/sbin/bridge\n"
        ),
    )
    .unwrap();
    let out = dir.join(format!("{name}.tar.gz"));
    sh(&format!(
        "cd '{}'; tar -czf '{}' '{name}'",
        dir.display(),
        out.display()
    ));
    out
}

fn which(program: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A directory with an `ip` that answers `ip link help` as iproute2 3.2 did (no vxlan, on
/// stderr) and passes everything else to the host's ip.
fn old_ip(dir: &Path) -> PathBuf {
    let bin = dir.join("old-ip");
    std::fs::create_dir_all(&bin).unwrap();
    let help = root().join("tests/fixtures/ip-link-help-3.2.txt");
    std::fs::write(
        bin.join("ip"),
        format!(
            "#!/bin/sh\nif [ \"$1 $2\" = 'link help' ]; then cat '{}' >&2; exit 255; fi\nexec {} \"$@\"\n",
            help.display(),
            which("ip")
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("ip"), std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A directory with an `ip` and a `bridge` from before JSON output (iproute2 3.10: vxlan in
/// its type list, `-j` refused) that pass everything else to the host's tools.
fn ip_without_json(dir: &Path) -> PathBuf {
    let bin = dir.join("no-json");
    std::fs::create_dir_all(&bin).unwrap();
    let help = root().join("tests/fixtures/ip-link-help-3.10.txt");
    for tool in ["ip", "bridge"] {
        std::fs::write(
            bin.join(tool),
            format!(
                "#!/bin/sh
                 for a in \"$@\"; do [ \"$a\" = -j ] && {{ echo 'Option \"-j\" is unknown, try \"{tool} -help\".' >&2; exit 255; }}; done
                 if [ \"$1 $2\" = 'link help' ]; then cat '{}' >&2; exit 255; fi
                 exec {} \"$@\"
",
                help.display(),
                which(tool)
            ),
        )
        .unwrap();
        std::fs::set_permissions(bin.join(tool), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn iproute2_section(build: &str, source: &Path) -> String {
    format!(
        "iproute2:\n  build: {build}\n  source: {}\n",
        source.display()
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn build_always_compiles_debian_iproute2_and_the_new_ip_creates_the_vxlan_devices() {
    let work = tempfile::tempdir().unwrap();
    let version = "6.1.0-vxlab-test";
    let tarball = marked_tarball(work.path(), version);
    let lab = Lab::shipped(
        "two-netns.yaml",
        "t-build",
        &[("192.168.10.", "192.168.40.")],
    );
    lab.append(&iproute2_section("always", &tarball));

    let (code, r) = lab.up();
    assert_eq!(code, 0, "{:#}", r);
    assert!(ping_replied(&r, "vm-a", "192.168.42.3"));
    let mut fresh = 0;
    let mut ip = String::new();
    for g in ["vm-a", "vm-b"] {
        let t = &guest(&r, g)["iproute2"];
        ip = t["ip"].as_str().unwrap().to_string();
        // Built once on the host, into this lab's cache, named by the tarball's hash.
        let hash = t["build"]["hash"].as_str().unwrap();
        assert_eq!(
            ip,
            format!(
                "{}/iproute2/{hash}/prefix/sbin/ip",
                lab.cache.path().display()
            )
        );
        assert!(t["version"].as_str().unwrap().contains(version), "{t}");
        assert_eq!(t["build"]["site"], "host");
        if t["build"]["reused"] == false {
            fresh += 1;
        }
        let ready = &guest(&r, g)["readiness"];
        assert_eq!(ready["ip"], ip.as_str());
        assert_eq!(ready["ip_vxlan"], true);
        assert_eq!(ready["kernel_ok"], true);
    }
    // The namespaces share the host's files: one build serves both.
    assert_eq!(fresh, 1, "{r:#}");
    let v = Command::new(&ip).arg("-V").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains(version));
    // The vxlan device was created by the built ip, as the command log shows.
    let log = std::fs::read_to_string(lab.state.path().join("t-build/commands-vm-a.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with(&format!("{ip} link add vxlan0 address "))
                && l.contains(" type vxlan id 42 ")),
        "{log}"
    );
    // Each guest has its build log: one shows the build, the other the reuse.
    let logs: Vec<String> = ["vm-a", "vm-b"]
        .iter()
        .map(|g| {
            std::fs::read_to_string(lab.state.path().join(format!("t-build/iproute2-{g}.log")))
                .unwrap()
        })
        .collect();
    assert!(
        logs.iter().any(|l| l.contains("== make (exit 0,")),
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l.contains("reused")), "{logs:?}");

    // A second up reuses the build.
    let (code, r) = lab.up();
    assert_eq!(code, 0);
    for g in ["vm-a", "vm-b"] {
        assert_eq!(guest(&r, g)["iproute2"]["build"]["reused"], true);
    }
    // check runs the built ip too.
    let (code, c) = lab.check();
    assert_eq!(code, 0);
    assert_eq!(guest(&c, "vm-b")["readiness"]["ip"], ip.as_str());
    lab.down_leaves_nothing();
    // The build is a cache, not part of the lab: it outlives it.
    assert!(Path::new(&ip).exists());
}

#[test]
fn auto_builds_only_when_ip_does_not_know_vxlan_and_never_refuses() {
    let work = tempfile::tempdir().unwrap();
    let tarball = fake_tarball(work.path(), "iproute2-fake", "echo configured");

    // The host's ip knows vxlan: auto builds nothing.
    let current = Lab::shipped(
        "two-netns.yaml",
        "t-auto-new",
        &[("192.168.10.", "192.168.41.")],
    );
    current.append(&iproute2_section("auto", &tarball));
    let (code, r) = current.up();
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(guest(&r, "vm-a")["iproute2"]["build"], Value::Null);
    assert_eq!(guest(&r, "vm-a")["iproute2"]["ip"], "ip");
    current.down_leaves_nothing();

    // An ip without vxlan: auto builds, and says why.
    let mut old = Lab::shipped(
        "two-netns.yaml",
        "t-auto-old",
        &[("192.168.10.", "192.168.41.")],
    );
    old.path_first.push(old_ip(work.path()));
    old.append(&iproute2_section("auto", &tarball));
    let (code, r) = old.up();
    assert_eq!(code, 0, "{r:#}");
    let b = &guest(&r, "vm-b")["iproute2"]["build"];
    assert!(
        b["reason"]
            .as_str()
            .unwrap()
            .contains("does not know `type vxlan`"),
        "{b}"
    );
    assert!(ping_replied(&r, "vm-b", "192.168.42.2"));
    old.down_leaves_nothing();

    // The same ip with `build: never`: a clear refusal naming the guest, nothing left.
    let mut never = Lab::shipped(
        "two-netns.yaml",
        "t-never",
        &[("192.168.10.", "192.168.41.")],
    );
    never.path_first.push(old_ip(work.path()));
    never.append("iproute2:\n  build: never\n");
    let out = never.run(&["up", never.file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("guest vm-a") || e.contains("guest vm-b"), "{e}");
    assert!(e.contains("`build: never`"), "{e}");
    never.down_leaves_nothing();
}

#[test]
fn a_build_stopped_by_a_missing_db_185_h_shows_the_log_and_the_fix() {
    let work = tempfile::tempdir().unwrap();
    let tarball = fake_tarball(
        work.path(),
        "iproute2-nodb",
        "echo 'arpd.c:20:10: fatal error: db_185.h: No such file or directory'; exit 1",
    );
    let lab = Lab::shipped(
        "two-netns.yaml",
        "t-nodb",
        &[("192.168.10.", "192.168.43.")],
    );
    lab.append(&iproute2_section("always", &tarball));
    let out = lab.run(&["up", lab.file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(70), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("failed at `configure`"), "{e}");
    assert!(e.contains("db_185.h: No such file"), "{e}");
    assert!(
        e.contains("hint: the Berkeley DB headers are missing: install libdb-dev"),
        "{e}"
    );
    let log = lab.state.path().join("t-nodb/iproute2-vm-a.log");
    assert!(e.contains(&log.display().to_string()), "{e}");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("== configure (exit 1,"));
    // A failure part-way: what was made stays, said so, and `down` removes all of it.
    assert!(e.contains("vxlab down t-nodb"), "{e}");
    assert!(!lab.leftovers().is_empty());
    lab.down_leaves_nothing();
}

#[test]
fn a_tarball_that_is_not_there_is_a_lab_error_before_anything_is_touched() {
    let lab = Lab::shipped(
        "two-netns.yaml",
        "t-nosrc",
        &[("192.168.10.", "192.168.41.")],
    );
    lab.append("iproute2:\n  build: always\n  source: no-such-iproute2.tar.xz\n");
    let out = lab.run(&["up", lab.file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    let e = stderr(&out);
    let line = lab.text().lines().count();
    assert!(
        e.contains(&format!(
            "t-nosrc.yaml:{line}:11: iproute2.source: cannot read the tarball"
        )),
        "{e}"
    );
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn an_ip_without_json_output_is_read_from_its_text() {
    let work = tempfile::tempdir().unwrap();
    let mut lab = Lab::shipped(
        "two-netns.yaml",
        "t-nojson",
        &[("192.168.10.", "192.168.45.")],
    );
    lab.path_first.push(ip_without_json(work.path()));
    let (code, r) = lab.up();
    assert_eq!(code, 0, "{r:#}");
    let t = &guest(&r, "vm-a")["iproute2"];
    assert_eq!(t["json"], false, "{t}");
    assert_eq!(t["build"], Value::Null, "vxlan is known: nothing to build");
    // Everything a student checks, read from text.
    assert!(ping_replied(&r, "vm-a", "192.168.42.3"));
    let v = common::vtep(&r, "vm-a", "vxlan0");
    assert_eq!(v["kernel"]["vni"], 42);
    assert_eq!(v["joined"][0], "239.1.1.1");
    let mac_b = &common::vtep(&r, "vm-b", "vxlan0")["mac"];
    assert_eq!(
        common::fdb_dst(&r, "vm-a", "vxlan0", mac_b).as_deref(),
        Some("192.168.45.3")
    );
    let log = std::fs::read_to_string(lab.state.path().join("t-nojson/commands-vm-a.log")).unwrap();
    // Only the readiness probe asked for JSON; every read was text.
    assert!(
        log.lines()
            .filter(|l| l.contains(" -j "))
            .all(|l| l.starts_with("ip -j link show dev lo")),
        "{log}"
    );
    assert!(
        log.contains("bridge fdb show dev vxlan0  # exit 0"),
        "{log}"
    );
    let (code, _) = lab.check();
    assert_eq!(code, 0);
    lab.down_leaves_nothing();
}

#[test]
fn a_git_source_is_cloned_at_its_ref_and_built() {
    let work = tempfile::tempdir().unwrap();
    // A local repository stands in for a remote one: no traffic leaves the host.
    fake_tarball(work.path(), "repo", "echo configured from git");
    sh(&format!(
        "cd '{}/repo' && git init -q && git add -A && \
         git -c user.name=vxlab -c user.email=vxlab@localhost commit -q -m fake && \
         git tag v6.1.0",
        work.path().display()
    ));
    let lab = Lab::shipped("two-netns.yaml", "t-git", &[("192.168.10.", "192.168.51.")]);
    lab.append(&format!(
        "iproute2:\n  build: always\n  source: file://{}/repo\n  ref: v6.1.0\n",
        work.path().display()
    ));
    let (code, r) = lab.up();
    assert_eq!(code, 0, "{r:#}");
    let b = &guest(&r, "vm-a")["iproute2"]["build"];
    assert!(
        b["source"].as_str().unwrap().ends_with("/repo (v6.1.0)"),
        "{b}"
    );
    let logs: String = ["vm-a", "vm-b"]
        .iter()
        .map(|g| {
            std::fs::read_to_string(lab.state.path().join(format!("t-git/iproute2-{g}.log")))
                .unwrap()
        })
        .collect();
    assert!(logs.contains("configured from git"), "{logs}");
    lab.down_leaves_nothing();
}

#[test]
fn a_kernel_before_3_7_is_refused_naming_the_guest_and_its_kernel() {
    let work = tempfile::tempdir().unwrap();
    // A `uname` that reports Debian 7's kernel, as an old guest would.
    let bin = work.path().join("old-kernel");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("uname"), "#!/bin/sh\necho 3.2.0-4-amd64\n").unwrap();
    std::fs::set_permissions(bin.join("uname"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut lab = Lab::shipped(
        "two-netns.yaml",
        "t-oldk",
        &[("192.168.10.", "192.168.52.")],
    );
    lab.path_first.push(bin);
    let out = lab.run(&["up", lab.file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("kernel 3.2.0-4-amd64 is too old for vxlan: it needs 3.7 or newer"),
        "{e}"
    );
    assert!(e.contains("guest vm-a") || e.contains("guest vm-b"), "{e}");
    lab.down_leaves_nothing();
}
