//! The harness of the real-lab tests: a lab brought up in its own state directory, torn down
//! on drop, with accessors for what the JSON report says and a scan for anything it left.
#![allow(dead_code)]

pub mod browser;
pub mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests create namespaces and bridges: run them as root"
    );
}

/// A lab brought up for one test; `down` on drop.
pub struct Lab {
    pub name: String,
    pub file: PathBuf,
    pub state: tempfile::TempDir,
    /// The lab's own build cache (`VXLAB_CACHE_DIR`): every test builds from scratch.
    pub cache: tempfile::TempDir,
    /// Directories put first on vxlab's PATH.
    pub path_first: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Lab {
    /// The lab `labs/<file>` renamed to `name`, on a bridge named after it, with `edits`
    /// (its own subnet, mostly) applied.
    pub fn shipped(file: &str, name: &str, edits: &[(&str, &str)]) -> Lab {
        let text = std::fs::read_to_string(root().join("labs").join(file)).unwrap();
        let line = |key: &str| {
            text.lines()
                .map(str::trim)
                .find(|l| l.starts_with(key))
                .unwrap()
                .to_string()
        };
        let renamed = text
            .replace(&line("name: "), &format!("name: {name}"))
            .replace(&line("bridge: "), &format!("bridge: vxbr-{name}"));
        Lab::from_text(&edits.iter().fold(renamed, |t, (a, b)| t.replace(a, b)))
    }

    pub fn from_text(text: &str) -> Lab {
        require_root();
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name: "))
            .unwrap()
            .trim()
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, text).unwrap();
        Lab {
            name,
            file,
            state: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
            path_first: Vec::new(),
            _dir: dir,
        }
    }

    /// Appends `extra` to the lab file.
    pub fn append(&self, extra: &str) {
        std::fs::write(&self.file, self.text() + extra).unwrap();
    }

    /// `program` with this lab's environment: its state and cache directories, and the
    /// programs it puts first on PATH.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut path = self.path_first.clone();
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let mut c = Command::new(program);
        c.env("VXLAB_STATE_DIR", self.state.path())
            .env("VXLAB_CACHE_DIR", self.cache.path())
            .env("PATH", std::env::join_paths(path).unwrap());
        c
    }

    /// vxlab with this lab's environment.
    pub fn vxlab(&self) -> Command {
        self.command(env!("CARGO_BIN_EXE_vxlab"))
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.vxlab().args(args).output().unwrap()
    }

    /// [`Lab::run`], which must succeed.
    pub fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vxlab {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `vxlab ARGS` with `input` typed on its standard input, then closed.
    pub fn typed(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = self
            .vxlab()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `vxlab exec [--lab COPY] GUEST -- ARGV`, which must succeed; its standard output.
    pub fn exec(&self, copy: Option<&str>, guest: &str, argv: &[&str]) -> String {
        let mut args = vec!["exec"];
        if let Some(copy) = copy {
            args.extend(["--lab", copy]);
        }
        args.extend([guest, "--"]);
        args.extend(argv);
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "{guest}: {argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn up(&self) -> (i32, Value) {
        let out = self.run(&["up", "--json", self.file.to_str().unwrap()]);
        let code = out.status.code().unwrap_or(-1);
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "up printed no report (exit {code}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, json)
    }

    pub fn check(&self) -> (i32, Value) {
        let out = self.run(&["check", "--json", &self.name]);
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), json)
    }

    pub fn ip(&self, guest: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["-n", &vxlab::plan::instance_name(&self.name, guest)])
            .args(args)
            .output()
            .unwrap()
    }

    /// Namespaces, libvirt domains, links and state files of this lab still on the host.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let prefix = vxlab::plan::instance_name(&self.name, "");
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for e in dir.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) {
                    left.push(format!("namespace {n}"));
                }
            }
        }
        // `virsh` is there only where libvirt is installed; without it there are no domains.
        if let Ok(out) = virsh(&["list", "--all", "--name"]) {
            for n in String::from_utf8_lossy(&out.stdout).lines() {
                if n.starts_with(&prefix) {
                    left.push(format!("domain {n}"));
                }
            }
        }
        let link_prefix = vxlab::plan::host_link_prefix(&self.name);
        for e in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&link_prefix) || n == self.bridge() {
                left.push(format!("link {n}"));
            }
        }
        for e in std::fs::read_dir(self.state.path()).unwrap().flatten() {
            left.push(format!("state {}", e.path().display()));
        }
        left.extend(
            fence_rules(&self.name)
                .into_iter()
                .map(|r| format!("rule {r}")),
        );
        left
    }

    /// The lab's bridge, as vxlab reads the file (as written, in a file vxlab refuses).
    pub fn bridge(&self) -> String {
        let text = self.text();
        vxlab::lab::parse(&text, &self.file).map_or_else(
            |_| {
                text.lines()
                    .find_map(|l| l.trim().strip_prefix("bridge:"))
                    .map(|b| b.split('#').next().unwrap().trim().to_string())
                    .unwrap_or_default()
            },
            |l| l.underlay.bridge,
        )
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.file).unwrap()
    }

    pub fn down_leaves_nothing(&self) {
        let out = self.run(&["down", &self.name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(self.leftovers(), Vec::<String>::new());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run(&["down", &self.name]);
    }
}

/// How many rules fence a lab on this host: what `host::firewall::fence` makes here.
pub fn fence_size() -> usize {
    vxlab::host::firewall::fence("b", "l", vxlab::host::firewall::host_has_ipv6()).len()
}

/// The firewall rules on this host that fence lab `lab`'s bridge (marked with its name).
pub fn fence_rules(lab: &str) -> Vec<String> {
    let mark = format!("\"vxlab: {lab}\"");
    ["iptables", "ip6tables"]
        .iter()
        .filter_map(|p| Command::new(p).arg("-S").output().ok())
        .flat_map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains(&mark))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `virsh ARGS` on the system libvirt; an error when virsh is not installed.
pub fn virsh(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
}

pub fn guest<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap()
}

pub fn vtep<'a>(report: &'a Value, g: &str, dev: &str) -> &'a Value {
    guest(report, g)["vteps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["device"] == dev)
        .unwrap()
}

/// The decoded VXLAN packets of a `capture --json`, in order.
pub fn capture_packets(c: &Value) -> Vec<&Value> {
    c["packets"]
        .as_array()
        .map(|a| a.iter().map(|p| &p["packet"]).collect())
        .unwrap_or_default()
}

/// The dst of `mac` in a guest's FDB, as reported.
pub fn fdb_dst(report: &Value, g: &str, dev: &str, mac: &Value) -> Option<String> {
    vtep(report, g, dev)["fdb"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| &e["mac"] == mac)
        .map(|e| e["dst"].as_str().unwrap_or("").to_string())
}

pub fn ping_replied(report: &Value, from: &str, to: &str) -> bool {
    report["pings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["ping"]["from"] == from && p["ping"]["to"] == to)
        .unwrap_or_else(|| panic!("no ping {from} -> {to}"))["replied"]
        == true
}

pub fn sh(script: &str) {
    let out = Command::new("sh").args(["-ec", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Debian's iproute2 release tarball, downloaded once per checkout into target/.
pub fn debian_tarball() -> PathBuf {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL
        .get_or_init(|| {
            let dir = root().join("target/iproute2-source");
            let out = Command::new("bash")
                .arg(root().join("scripts/iproute2-source.sh"))
                .arg(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "apt-get source failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
}

/// Debian's source with its version string changed to `version`, repacked as a .tar.gz in
/// `dir`: its `ip -V` then tells it from every other ip on the host.
pub fn marked_tarball(dir: &Path, version: &str) -> PathBuf {
    let src = debian_tarball();
    let out = dir.join(format!("iproute2-{version}.tar.gz"));
    sh(&format!(
        "cd '{d}'; mkdir unpack; tar -xf '{src}' -C unpack; cd unpack; top=$(ls); \
         echo 'static const char version[] = \"{version}\";' > \"$top/include/version.h\"; \
         tar -czf '{out}' \"$top\"",
        d = dir.display(),
        src = src.display(),
        out = out.display()
    ));
    out
}

/// The debian-12 image's directory, built first when missing or built by an older vxlab.
/// Every VM test needs it, and only one may build it.
pub fn ensure_image() -> std::path::PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let dir = image_dir();
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_vxlab"))
        .args(["image", "list"])
        .output()
        .unwrap();
    // `image list` leaves out images an older vxlab built; they are rebuilt.
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    if listed
        .lines()
        .any(|l| l.split_whitespace().next() == Some("debian-12"))
    {
        return dir;
    }
    let build = std::process::Command::new(env!("CARGO_BIN_EXE_vxlab"))
        .args(["image", "build", "debian-12"])
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "image build failed: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    dir
}

pub fn image_dir() -> std::path::PathBuf {
    std::env::var_os("VXLAB_IMAGE_DIR")
        .map_or_else(
            || std::path::PathBuf::from("/var/cache/vxlab/images"),
            std::path::PathBuf::from,
        )
        .join("debian-12")
}

/// The repairs in an `up`, `reset` or `check` report, as `guest: command line`.
pub fn repairs(report: &Value) -> Vec<String> {
    report["repairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                r["guest"].as_str().unwrap(),
                r["command"]["line"].as_str().unwrap()
            )
        })
        .collect()
}

/// `vxlab ARGS` on a terminal of its own (`script` gives it one), for what behaves otherwise
/// on a terminal: `console`, `walk`'s pauses, Ctrl-C. Its output is gathered as it comes.
pub struct Terminal {
    child: std::process::Child,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Terminal {
    pub fn start(lab: &Lab, args: &[&str]) -> Terminal {
        let mut line = format!("'{}'", env!("CARGO_BIN_EXE_vxlab"));
        for a in args {
            assert!(!a.contains('\''), "{a}");
            line.push_str(&format!(" '{a}'"));
        }
        let mut child = lab
            .command("script")
            .args(["-qfec", &line, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (mut stdout, gathered) = (child.stdout.take().unwrap(), output.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                gathered
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal { child, output }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits up to a minute for `text` to have been printed `times` times in all.
    pub fn wait_for_nth(&mut self, text: &str, times: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if self.output.lock().unwrap().matches(text).count() >= times {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("it ended ({status}) before {text:?}:\n{}", self.output());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {text:?} on the terminal:\n{}",
                self.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits up to a minute for `text`.
    pub fn wait_for(&mut self, text: &str) {
        self.wait_for_nth(text, 1);
    }

    /// Types `bytes` (Ctrl-C is 0x03, Enter b"\r").
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits up to ten seconds for it to end; its exit status (script passes it on).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "it did not end:\n{}",
                self.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    /// A test that failed while it ran leaves no `script` or vxlab behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
