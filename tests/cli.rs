//! The command line as a user meets it: the man page, completions that know the running labs,
//! `--state-dir`, and errors that say what is true. The running-lab tests need root.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use common::Lab;

fn vxlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vxlab"))
        .args(args)
        .env_remove("VXLAB_STATE_DIR")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every `name(section)` a roff page refers to, its font changes and escapes taken out.
fn references(roff: &str) -> Vec<String> {
    let plain = roff
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\-", "-");
    let mut out = Vec::new();
    let b = plain.as_bytes();
    for (i, _) in plain.match_indices('(') {
        let digit = b.get(i + 1).is_some_and(u8::is_ascii_digit) && b.get(i + 2) == Some(&b')');
        let start = plain[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
            .map_or(0, |s| s + 1);
        if digit && start < i {
            out.push(plain[start..i + 3].to_string());
        }
    }
    out
}

#[test]
fn the_man_page_refers_to_no_page_that_does_not_exist() {
    let out = vxlab(&["man"]);
    assert!(out.status.success());
    let man = text(&out.stdout);
    assert!(man.starts_with(".TH VXLAB 1 "), "{man}");
    // vxlab has one page; any other vxlab page it names would dangle.
    let refs = references(&man);
    assert!(
        refs.iter().all(|r| r == "vxlab(1)"),
        "dangling references: {refs:?}"
    );
    // The finder itself finds references.
    assert_eq!(
        references("see \\fBvxlab\\-validate\\fR(1) and ip(8)."),
        ["vxlab-validate(1)", "ip(8)"]
    );
    for section in [
        ".SH SYNOPSIS",
        ".SH COMMANDS",
        ".SH EXIT STATUS",
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH EXAMPLES",
    ] {
        assert!(man.contains(section), "{section} missing");
    }
    for var in ["VXLAB_STATE_DIR", "VXLAB_CACHE_DIR", "VXLAB_IMAGE_DIR"] {
        assert!(man.contains(var), "{var} missing");
    }
    for code in ["0", "1", "65", "69", "70", "75", "77"] {
        assert!(
            man.contains(&format!(".TP\n{code}\n")),
            "exit status {code} missing"
        );
    }
    // Every command of `--help` has its section, with its options.
    let help = text(&vxlab(&["--help"]).stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 15, "{help}");
    for c in commands {
        assert!(
            man.contains(&format!(".SS \"vxlab {c} ")),
            "no section for {c}"
        );
    }
    assert!(man.contains("\\fB\\-\\-pool\\fR \\fIPREFIX\\fR"));
    assert!(man.contains("One of: arp, icmp, vxlan, all."));
}

/// What the shell is offered for the last of `words`, as fish asks for it.
fn offered(lab: &Lab, words: &[&str]) -> Vec<String> {
    offered_by(lab.vxlab(), words)
}

/// What `vxlab` run as `cmd` offers for the last of `words`, as fish asks for it.
fn offered_by(mut cmd: Command, words: &[&str]) -> Vec<String> {
    let mut args = vec!["--", "vxlab"];
    args.extend(words);
    let out = cmd
        .args(&args)
        .env("COMPLETE", "fish")
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // With nothing typed yet the options are offered too; the values are what is asked here.
    text(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .filter(|w| !w.starts_with('-'))
        .collect()
}

#[test]
fn completions_offer_running_labs_lab_files_and_guest_names() {
    let lab = Lab::shipped("two-vni.yaml", "t-comp", &[("192.168.20.", "192.168.57.")]);
    assert_eq!(lab.up().0, 0);
    assert_eq!(offered(&lab, &["check", "t-co"]), ["t-comp"]);
    let files = offered(&lab, &["up", "labs/two-"]);
    assert!(
        files.contains(&"labs/two-netns.yaml".to_string())
            && files.contains(&"labs/two-vni.yaml".to_string()),
        "{files:?}"
    );
    assert_eq!(offered(&lab, &["show", ""]), ["vm-a", "vm-b", "vm-c"]);
    assert_eq!(
        offered(&lab, &["capture", "--lab", "t-comp", "vm-"]),
        ["vm-a", "vm-b", "vm-c"]
    );
    let seed = common::root().join("labs/two-netns.yaml");
    assert_eq!(
        offered(&lab, &["show", "--lab", seed.to_str().unwrap(), ""]),
        ["vm-a", "vm-b"]
    );
    assert_eq!(offered(&lab, &["reset", "t-comp", "vm-c"]), ["vm-c"]);
    // A student's own commands: a shell or a command in a guest, and the instructor's sheet.
    assert_eq!(offered(&lab, &["shell", "vm-"]), ["vm-a", "vm-b", "vm-c"]);
    assert_eq!(offered(&lab, &["shell", "--lab", "t-co"]), ["t-comp"]);
    assert_eq!(
        offered(&lab, &["exec", "--lab", "t-comp", "vm-b"]),
        ["vm-b"]
    );
    assert_eq!(offered(&lab, &["sheet", "t-co"]), ["t-comp"]);
    // ssh and console reach VMs only: a namespace lab's guests are not offered for them.
    assert_eq!(offered(&lab, &["ssh", ""]), Vec::<String>::new());
    assert_eq!(
        offered(&lab, &["console", "--lab", "t-comp", ""]),
        Vec::<String>::new()
    );
    assert_eq!(
        offered(&lab, &["ssh", "--lab", "t-co"]),
        Vec::<String>::new()
    );
    // Lab files and the directories that hold them, never `.` itself.
    let here = offered(&lab, &["up", ""]);
    assert!(here.contains(&"labs/".to_string()), "{here:?}");
    assert!(!here.contains(&".".to_string()), "{here:?}");
    // Subcommands and options come from the definition.
    assert!(offered(&lab, &["cap"]).contains(&"capture".to_string()));
    assert!(offered(&lab, &["capture", "vm-a", "--only", ""]).contains(&"icmp".to_string()));
    // The script a user installs asks vxlab for these: bash, as it completes `vxlab show v`.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_vxlab"))
        .parent()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let script = "source <(vxlab completions bash); COMP_WORDS=(vxlab show v); COMP_CWORD=2; \
                  _clap_complete_vxlab vxlab v show; printf '%s\\n' \"${COMPREPLY[@]}\"";
    let out = Command::new("bash")
        .args(["-c", script])
        .env("PATH", path)
        .env("VXLAB_STATE_DIR", lab.state.path())
        .output()
        .unwrap();
    let words: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(words, ["vm-a", "vm-b", "vm-c"], "{}", text(&out.stderr));
    lab.down_leaves_nothing();
}

#[test]
fn state_dir_on_the_command_line_finds_the_labs_kept_there() {
    let lab = Lab::shipped(
        "two-netns.yaml",
        "t-sdir",
        &[("192.168.10.", "192.168.58.")],
    );
    assert_eq!(lab.up().0, 0);
    let dir = lab.state.path().to_str().unwrap();
    // Completions look for labs where the command line says, before or after the command,
    // with no VXLAB_STATE_DIR; as bash asks for them.
    let empty = tempfile::tempdir().unwrap();
    let complete = |index: &str, words: &[&str]| -> Vec<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_vxlab"))
            .args(["--", "vxlab"])
            .args(words)
            .env_remove("VXLAB_STATE_DIR")
            .env("COMPLETE", "bash")
            .env("_CLAP_COMPLETE_INDEX", index)
            .current_dir(empty.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|w| !w.starts_with('-'))
            .collect()
    };
    assert_eq!(
        complete("4", &["--state-dir", dir, "show", ""]),
        ["vm-a", "vm-b"]
    );
    assert_eq!(complete("4", &["--state-dir", dir, "down", ""]), ["t-sdir"]);
    assert_eq!(
        complete("4", &["show", "--lab", "t-sdir", "", "--state-dir", dir]),
        ["vm-a", "vm-b"]
    );
    let mut by_env = Command::new(env!("CARGO_BIN_EXE_vxlab"));
    by_env.env("VXLAB_STATE_DIR", dir);
    assert_eq!(offered_by(by_env, &["exec", ""]), ["vm-a", "vm-b"]);
    let out = vxlab(&["--state-dir", dir, "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["labs"][0]["lab"], "t-sdir", "{v:#}");
    // After the command too, as every global option.
    let out = vxlab(&["check", "t-sdir", "--state-dir", dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Run where a directory is named after the lab (an instructor's folder for it): the name
    // still means the running lab; `./t-sdir` means the path.
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("t-sdir")).unwrap();
    let from_cwd = |target: &str| {
        Command::new(env!("CARGO_BIN_EXE_vxlab"))
            .args(["check", target, "--state-dir", dir])
            .current_dir(cwd.path())
            .output()
            .unwrap()
    };
    let out = from_cwd("t-sdir");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The lab file edited since up: check says so, and checks the lab as it was brought up.
    let before = lab.text();
    std::fs::write(&lab.file, before.replace("vni: 42", "vni: 44")).unwrap();
    let out = vxlab(&["check", lab.file.to_str().unwrap(), "--state-dir", dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("was changed since lab t-sdir was brought up from it")
            && text(&out.stderr).contains("`vxlab up "),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(&lab.file, &before).unwrap();
    let out = vxlab(&["check", lab.file.to_str().unwrap(), "--state-dir", dir]);
    assert!(
        !text(&out.stderr).contains("was changed"),
        "{}",
        text(&out.stderr)
    );
    // The lab's name where a guest's goes says how to name the lab.
    let out = vxlab(&["exec", "--state-dir", dir, "t-sdir", "vm-a", "hostname"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("t-sdir is a running lab, not a guest: name the lab with `--lab t-sdir`"),
        "{}",
        text(&out.stderr)
    );
    let out = from_cwd("./t-sdir");
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("it is a directory, not a regular file"),
        "{}",
        text(&out.stderr)
    );
    let out = vxlab(&["down", "t-sdir", "--state-dir", dir]);
    assert!(out.status.success());
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn without_root_a_command_that_only_reads_says_what_it_needs_and_never_sudo() {
    common::require_root();
    let state = tempfile::tempdir().unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vxlab"))
            .args(args)
            .env("VXLAB_STATE_DIR", state.path())
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["show", "vm-a"]);
    assert_eq!(out.status.code(), Some(77));
    let err = text(&out.stderr);
    assert!(
        err.contains("vxlab show needs root: it only reads, but a guest's state is read inside"),
        "{err}"
    );
    let out = as_nobody(&["up", "labs/two-netns.yaml"]);
    let err = text(&out.stderr);
    assert!(err.contains("it creates the lab's bridge"), "{err}");
    for cmd in [
        &["check"][..],
        &["down"],
        &["capture", "vm-a"],
        &["reset", "x"],
    ] {
        let err = text(&as_nobody(cmd).stderr);
        assert!(!err.contains("sudo"), "{cmd:?}: {err}");
        assert!(err.contains("run it as root"), "{cmd:?}: {err}");
    }
    // The README is written for root, and so never says sudo.
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    assert!(!readme.contains("sudo"), "the README mentions sudo");
}

#[test]
fn up_on_vms_refuses_a_root_only_dev_kvm_before_it_creates_anything() {
    // A fresh machine without udev: /dev/kvm is 0600 root, so libvirt's QEMU user cannot open
    // it and libvirt would re-probe QEMU on every call. `up` says what to run, and stops.
    use std::os::unix::fs::MetadataExt;
    let kvm = std::path::Path::new("/dev/kvm");
    common::require_root();
    let meta = std::fs::metadata(kvm).expect("this test needs /dev/kvm, as CI machines have");
    struct Restore(u32, u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            std::os::unix::fs::chown("/dev/kvm", None, Some(self.1)).unwrap();
            let perms = std::os::unix::fs::PermissionsExt::from_mode(self.0 & 0o7777);
            std::fs::set_permissions("/dev/kvm", perms).unwrap();
        }
    }
    let image = tempfile::tempdir().unwrap();
    for f in ["base.qcow2", "vmlinuz", "initrd.img"] {
        std::fs::write(image.path().join(f), b"").unwrap();
    }
    let disk = image.path().join("base.qcow2");
    let lab = Lab::shipped(
        "two-vm.yaml",
        "t-kvm",
        &[
            ("192.168.10.", "192.168.57."),
            ("image: debian-12", &format!("image: {}", disk.display())),
        ],
    );
    let out = {
        let _restore = Restore(meta.mode(), meta.gid());
        std::os::unix::fs::chown(kvm, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(kvm, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        lab.run(&["up", lab.file.to_str().unwrap()])
    };
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        err.contains("/dev/kvm is mode 0600, owner root, group root")
            && err.contains("`chgrp kvm /dev/kvm && chmod 0660 /dev/kvm`"),
        "{err}"
    );
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(lab.state.path()).unwrap().count(), 0);
    assert_eq!(std::fs::metadata(kvm).unwrap().mode(), meta.mode());
}

#[test]
fn counts_out_of_range_and_a_placement_without_hosts_are_usage_errors() {
    let file = common::root().join("labs/two-vm.yaml");
    let file = file.to_str().unwrap();
    // As clap says of any value out of range: exit 2, with the range, nothing touched.
    for n in ["0", "256"] {
        for args in [
            vec!["up", file, "--count", n],
            vec!["plan", file, "--count", n],
        ] {
            let out = vxlab(&args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?}: {}",
                text(&out.stderr)
            );
            assert!(
                text(&out.stderr).contains("1..=255"),
                "{}",
                text(&out.stderr)
            );
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vxlab"))
        .args(["plan", file, "--count", "2"])
        .env_remove("VXLAB_HOSTS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("name the host inventory with --hosts FILE"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_lab_the_command_needs_and_does_not_name_is_a_usage_error_and_down_can_be_run_twice() {
    common::require_root();
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_str().unwrap();
    for args in [
        vec!["check", "--all"],
        vec!["down", "--all"],
        vec!["down", "--instance", "1"],
    ] {
        let mut line = vec!["--state-dir", dir];
        line.extend(&args);
        let out = vxlab(&line);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains("name the lab whose copies to"), "{err}");
    }
    // Nothing running: `down`, named or not, removes nothing and says so, every time.
    for args in [vec!["down"], vec!["down", "t-none"], vec!["down"]] {
        let mut line = vec!["--state-dir", dir];
        line.extend(&args);
        let out = vxlab(&line);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.contains("nothing to remove"), "{err}");
    }
    // The README and the man page say so, and what `down LAB` does when only its copies run
    // (tests/teaching.rs runs it: 66).
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let man = text(&vxlab(&["man"]).stdout);
    for doc in [&readme, &man] {
        assert!(
            doc.contains("removes nothing and exits 0, so it can be run twice")
                && doc.contains("names them, removes nothing and exits 66"),
            "{doc}"
        );
    }
    assert!(readme.contains("`check --all`, `down --all` without LAB"));
}

#[test]
fn the_readmes_install_lines_work_on_a_fresh_debian() {
    let root = common::root();
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
    let readme = read("README.md");
    // Where the man page goes, its directory is made first: a fresh Debian 12 has none.
    let lines: Vec<&str> = readme.lines().collect();
    let man = lines
        .iter()
        .position(|l| l.starts_with("vxlab man > "))
        .expect("the README installs the man page");
    let dir = lines[man]
        .trim_start_matches("vxlab man > ")
        .split_whitespace()
        .next()
        .unwrap()
        .rsplit_once('/')
        .unwrap()
        .0;
    assert!(
        lines[..man]
            .iter()
            .any(|l| l.starts_with(&format!("mkdir -p {dir} "))),
        "no `mkdir -p {dir}` before `{}`",
        lines[man]
    );
    // The completions file is read by the bash-completion package, which the setup installs.
    assert!(
        readme.contains("/etc/bash_completion.d/vxlab")
            && readme.contains("`bash-completion` package")
    );
    let setup = read("scripts/setup-host.sh");
    let packages = setup
        .split("packages=(")
        .nth(1)
        .and_then(|p| p.split(')').next())
        .unwrap();
    assert!(
        packages.split_whitespace().any(|p| p == "bash-completion"),
        "{packages}"
    );
    // The Rust the README asks for is the one Cargo.toml needs and the quick starts check.
    let manifest = read("Cargo.toml");
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .unwrap()
        .trim_end_matches('"');
    assert!(
        readme.contains(&format!("Rust {version} or newer")),
        "{version}"
    );
    for script in ["scripts/quickstart.sh", "scripts/quickstart-netns.sh"] {
        assert!(
            read(script).contains(&format!("printf '%s\\n' {version}.0 ")),
            "{script} does not check for Rust {version}"
        );
    }
}

#[test]
fn a_class_of_vms_too_big_for_this_host_is_refused_with_what_fits_and_nothing_made() {
    // 255 copies of two 512 MiB guests: far more memory than a test machine has.
    let lab = Lab::shipped("two-vm.yaml", "t-toobig", &[]);
    let out = lab.run(&["up", lab.file.to_str().unwrap(), "--count", "255"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("255 copies of t-toobig do not fit on this host"),
        "{err}"
    );
    // What each costs, and how many would fit.
    assert!(err.contains("MiB") && err.contains("copies fit"), "{err}");
    assert!(
        std::fs::read_dir(lab.state.path())
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "a refused class left state"
    );
    assert!(!std::path::Path::new("/sys/class/net/vxbr-t-toobig-1").exists());
}
