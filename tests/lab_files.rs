//! Every lab in labs/ is valid, and every file in tests/bad-labs/ fails with the errors its
//! `# error:` lines name (file:line:column: field: message), and with nothing touched.

use std::path::{Path, PathBuf};
use std::process::Command;

fn files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_shipped_lab_is_valid() {
    let labs = files("labs");
    assert!(labs.len() >= 5);
    for path in labs {
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = vxlab::lab::parse(&text, &path) {
            panic!("{e}");
        }
    }
}

#[test]
fn every_bad_lab_gives_exactly_its_errors_in_line_order() {
    let bad = files("tests/bad-labs");
    assert!(bad.len() >= 20);
    let mut wrong = Vec::new();
    for path in bad {
        // Read as bytes: some bad labs are not UTF-8 on purpose.
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        let expected: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# error: "))
            .map(|want| format!("{}:{want}", path.display()))
            .collect();
        assert!(!expected.is_empty(), "{} names no error", path.display());
        let err = match vxlab::lab::load(&path) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(vxlab::lab::LoadError::Invalid(e)) => e.to_string(),
            Err(other) => panic!("{}: {other}", path.display()),
        };
        // The first line says how many problems; one line per problem follows.
        let got: Vec<&str> = err.lines().skip(1).map(str::trim).collect();
        let matches = got.len() == expected.len()
            && got
                .iter()
                .zip(&expected)
                .all(|(g, w)| g.starts_with(w.as_str()));
        if !matches {
            wrong.push(format!(
                "want: {}\ngot:  {}",
                expected.join("\n      "),
                got.join("\n      ")
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn validate_exits_65_naming_the_file_and_up_touches_nothing() {
    let bin = env!("CARGO_BIN_EXE_vxlab");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-labs/vni-too-large.yaml");
    let out = Command::new(bin)
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vni-too-large.yaml:12:10: vxlans[0].vni"),
        "{err}"
    );

    let state = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .arg("up")
        .arg(&path)
        .env("VXLAB_STATE_DIR", state.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
    assert!(!Path::new("/sys/class/net/vbr0").exists());
}

#[test]
fn hostile_lab_paths_and_texts_exit_65_at_once() {
    let bin = env!("CARGO_BIN_EXE_vxlab");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.yaml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let deep = dir.path().join("deep.yaml");
    std::fs::write(
        &deep,
        format!(
            "name: x\nextra: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
    )
    .unwrap();
    let latin1 = dir.path().join("latin1.yaml");
    std::fs::write(&latin1, b"name: caf\xe9\n").unwrap();
    let cases: [(&Path, &str); 5] = [
        (&fifo, "1:1: it is a FIFO, not a regular file"),
        (Path::new("/dev/zero"), "1:1: it is a character device"),
        (dir.path(), "1:1: it is a directory"),
        (&deep, "2:23: nested deeper than 16 levels"),
        (&latin1, "1:10: byte 0xe9 is not UTF-8"),
    ];
    // Every command that takes a lab file or a running lab's name: a path that is there is a
    // file, whatever kind, never taken for a lab's name.
    for cmd in ["validate", "up", "check", "down"] {
        for (path, want) in cases {
            let start = std::time::Instant::now();
            let out = Command::new(bin)
                .arg(cmd)
                .arg(path)
                .env("VXLAB_STATE_DIR", dir.path().join("state"))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            let at = format!("{cmd} {}", path.display());
            assert_eq!(out.status.code(), Some(65), "{at}: {err}");
            assert!(
                err.contains(&format!("{}:{want}", path.display())),
                "{at}: {err}"
            );
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
        }
    }
    // No such file, no such running lab: 66, nothing made.
    for arg in ["absent.yaml", "absent", "../absent"] {
        let out = Command::new(bin)
            .args(["up", arg])
            .env("VXLAB_STATE_DIR", dir.path().join("state"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(66), "up {arg}: {err}");
    }
    assert!(!dir.path().join("state").exists());
}
