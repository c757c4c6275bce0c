//! Builds iproute2 from source at a [`Site`]: the host (for drivers whose guests share its
//! files) or a guest over SSH. A build lives in `<site root>/<hash of the source>/`; a finished
//! one is reused, so each source is built once per site. Each stage's output goes to a log the
//! caller keeps in the lab's state.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::driver::{Driver, DriverError};
use crate::host::process::{self, Output};
use crate::iproute2::{self, BUILD_SUBDIRS, STAGES};
use crate::lab::Source;
use crate::plan::GuestPlan;

/// Where builds go inside a guest.
pub const GUEST_ROOT: &str = "/var/cache/vxlab/iproute2";

/// A build that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A stage of the build script failed.
    #[error(
        "{site}: building iproute2 failed at `{stage}` (log: {}):\n{tail}{}",
        log.display(),
        hint.map(|h| format!("\nhint: {h}")).unwrap_or_default()
    )]
    Stage {
        /// Where it ran.
        site: String,
        /// The stage.
        stage: &'static str,
        /// The log's last lines.
        tail: String,
        /// What probably helps.
        hint: Option<&'static str>,
        /// The whole log.
        log: PathBuf,
    },
    /// Running a command or moving a file failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// Reading the source or writing the log failed.
    #[error("iproute2 build: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// One source, ready to build anywhere: its hash and its rendered build script.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The first 16 hex digits of the SHA-256 of the tarball (or of the git URL and ref).
    pub hash: String,
    /// The tarball on this host, if the source is one.
    pub tarball: Option<PathBuf>,
    /// What the source is, in words.
    pub describe: String,
    source: Source,
    cflags: Option<String>,
}

impl Recipe {
    /// A recipe for `source`, compiled with `cflags` when given; `tarball` is where a tarball
    /// source is on this host.
    pub fn new(
        source: &Source,
        tarball: Option<&Path>,
        cflags: Option<&str>,
    ) -> Result<Recipe, BuildError> {
        let mut h = Sha256::new();
        // Other compiler options make another build.
        h.update(format!("cflags\0{}\0", cflags.unwrap_or("")));
        let describe = match (source, tarball) {
            (Source::Tarball(_), Some(path)) => {
                let mut f = File::open(path).map_err(io(format!("reading {}", path.display())))?;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = f
                        .read(&mut buf)
                        .map_err(io(format!("reading {}", path.display())))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                path.display().to_string()
            }
            (Source::Git { url, reference }, _) => {
                h.update(format!(
                    "git\0{url}\0{}",
                    reference.as_deref().unwrap_or("")
                ));
                match reference {
                    Some(r) => format!("{url} ({r})"),
                    None => url.clone(),
                }
            }
            (Source::Tarball(p), None) => {
                return Err(BuildError::Io {
                    what: format!("{} was not resolved", p.display()),
                    source: std::io::ErrorKind::NotFound.into(),
                })
            }
        };
        let hash: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Recipe {
            hash,
            tarball: tarball.map(Path::to_path_buf),
            describe,
            source: source.clone(),
            cflags: cflags.map(String::from),
        })
    }

    /// The build script for a build in `dir`.
    pub fn script(&self, dir: &str) -> String {
        let (git, reference) = match &self.source {
            Source::Git { url, reference } => (Some(url.as_str()), reference.as_deref()),
            Source::Tarball(_) => (None, None),
        };
        crate::templates::render(
            "iproute2-build.sh",
            &serde_json::json!({
                "dir": dir,
                "subdirs": BUILD_SUBDIRS,
                "cflags": self.cflags,
                "git": git,
                "reference": reference,
                "tarball": self.tarball_name().map(|n| format!("{dir}/{n}")),
                "apt": iproute2::APT_BUILD_DEPS,
                "dnf": iproute2::rpm_build_deps(true),
                "yum": iproute2::rpm_build_deps(false),
            }),
        )
    }

    fn tarball_name(&self) -> Option<String> {
        // The name is kept: tar tells compressions apart by it on old releases.
        self.tarball
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| format!("source-{}", n.to_string_lossy()))
    }
}

/// Where a build runs.
pub trait Site: Sync {
    /// Names the site in messages: `host` or the guest's name.
    fn label(&self) -> String;
    /// The directory under which builds are kept at the site.
    fn root(&self) -> PathBuf;
    /// Runs `argv` at the site.
    fn run(&self, argv: &[String]) -> Result<Output, DriverError>;
    /// Copies the host file `local` to `remote` at the site.
    fn put(&self, local: &Path, remote: &Path) -> Result<(), DriverError>;
    /// Serialises builds of one source at the site while the returned guard lives.
    fn lock(&self, _hash: &str) -> Result<Option<File>, BuildError> {
        Ok(None)
    }
}

/// This host: builds shared by all guests of a driver that runs them on its file system.
pub struct HostSite {
    /// The host's build cache.
    pub root: PathBuf,
}

impl Site for HostSite {
    fn label(&self) -> String {
        "host".into()
    }
    fn root(&self) -> PathBuf {
        self.root.clone()
    }
    fn run(&self, argv: &[String]) -> Result<Output, DriverError> {
        process::run(argv, None)
            .map_err(|e| DriverError::new("host", format!("running {}", argv[0]), e))
    }
    fn put(&self, local: &Path, remote: &Path) -> Result<(), DriverError> {
        std::fs::copy(local, remote)
            .map(|_| ())
            .map_err(|e| DriverError::new("host", format!("copying to {}", remote.display()), e))
    }
    fn lock(&self, hash: &str) -> Result<Option<File>, BuildError> {
        std::fs::create_dir_all(&self.root)
            .map_err(io(format!("creating {}", self.root.display())))?;
        let path = self.root.join(format!("{hash}.lock"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        // SAFETY: flock on a descriptor this function owns; blocking until the other build
        // of the same source finishes is the point.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(format!("locking {}", path.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Some(f))
    }
}

/// A guest, reached through its driver.
pub struct GuestSite<'a> {
    /// The driver.
    pub driver: &'a dyn Driver,
    /// The guest.
    pub guest: &'a GuestPlan,
}

impl Site for GuestSite<'_> {
    fn label(&self) -> String {
        self.guest.name.clone()
    }
    fn root(&self) -> PathBuf {
        PathBuf::from(GUEST_ROOT)
    }
    fn run(&self, argv: &[String]) -> Result<Output, DriverError> {
        self.driver.exec(self.guest, argv)
    }
    fn put(&self, local: &Path, remote: &Path) -> Result<(), DriverError> {
        self.driver.upload(self.guest, local, remote)
    }
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    /// The built `ip`, as a path at the site.
    pub ip: String,
    /// The built `bridge`.
    pub bridge: String,
    /// Whether an earlier build was reused.
    pub reused: bool,
    /// How long it took.
    pub seconds: f64,
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// Builds `recipe` at `site`, or reuses a finished build of it there. Every stage's output is
/// appended to `log`, and the script is kept beside it; `progress` gets the stage being run.
pub fn build(
    site: &dyn Site,
    recipe: &Recipe,
    log: &Path,
    progress: &dyn Fn(&str),
) -> Result<Built, BuildError> {
    let start = Instant::now();
    let dir = site.root().join(&recipe.hash);
    let d = dir.to_string_lossy().into_owned();
    let built = Built {
        ip: format!("{d}/prefix/sbin/ip"),
        bridge: format!("{d}/prefix/sbin/bridge"),
        reused: true,
        seconds: 0.0,
    };
    let mut logf = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("opening {}", log.display())))?;
    let mut note = |text: &str| {
        logf.write_all(text.as_bytes())
            .map_err(io(format!("writing {}", log.display())))
    };
    note(&format!(
        "== iproute2 from {} (hash {}) at {}:{d}\n",
        recipe.describe,
        recipe.hash,
        site.label()
    ))?;
    progress("iproute2: waiting for the build of this source");
    let _guard = site.lock(&recipe.hash)?;
    let done = site.run(&words(&[
        "test",
        "-e",
        &format!("{d}/done"),
        "-a",
        "-x",
        &built.ip,
    ]))?;
    if done.success() {
        note("a finished build of this source is there: reused\n")?;
        return Ok(Built {
            seconds: start.elapsed().as_secs_f64(),
            ..built
        });
    }
    site.run(&words(&["mkdir", "-p", &d]))?;
    // The script is kept beside the log, in the lab's state.
    let script = log.with_extension("sh");
    std::fs::write(&script, recipe.script(&d))
        .map_err(io(format!("writing {}", script.display())))?;
    site.put(&script, &dir.join("build.sh"))?;
    if let (Some(tarball), Some(name)) = (&recipe.tarball, recipe.tarball_name()) {
        progress("iproute2: uploading the source");
        site.put(tarball, &dir.join(name))?;
    }
    for (stage, what) in STAGES {
        progress(&format!("iproute2: {what}"));
        let began = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let t = Instant::now();
        let out = site.run(&words(&["sh", &format!("{d}/build.sh"), stage]))?;
        note(&format!(
            "== {stage} (exit {}, started at {began} s since the epoch, took {:.1} s)\n{}{}",
            out.status,
            t.elapsed().as_secs_f64(),
            out.stdout,
            out.stderr
        ))?;
        if !out.success() {
            let text = format!("{}{}", out.stdout, out.stderr);
            let lines: Vec<&str> = text.lines().collect();
            return Err(BuildError::Stage {
                site: site.label(),
                stage,
                tail: lines[lines.len().saturating_sub(12)..].join("\n"),
                hint: iproute2::hint(&text),
                log: log.to_path_buf(),
            });
        }
    }
    Ok(Built {
        reused: false,
        seconds: start.elapsed().as_secs_f64(),
        ..built
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_follows_the_tarballs_bytes_and_the_script_quotes_paths() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.tar.gz");
        std::fs::write(&a, b"one").unwrap();
        let src = Source::Tarball("a.tar.gz".into());
        let r1 = Recipe::new(&src, Some(&a), None).unwrap();
        std::fs::write(&a, b"two").unwrap();
        let r2 = Recipe::new(&src, Some(&a), None).unwrap();
        assert_ne!(r1.hash, r2.hash);
        assert_eq!(r1.hash.len(), 16);
        let s = r1.script("/tmp/x y");
        assert!(s.contains("dir='/tmp/x y'"), "{s}");
        assert!(s.contains("tar -xf '/tmp/x y/source-a.tar.gz'"), "{s}");
        assert!(!s.contains("git clone"));
    }

    #[test]
    fn a_git_source_clones_its_ref_quoted() {
        let src = Source::Git {
            url: "https://git.kernel.org/pub/scm/network/iproute2/iproute2.git".into(),
            reference: Some("v6.1.0".into()),
        };
        let r = Recipe::new(&src, None, Some("-O0 -pipe")).unwrap();
        let s = r.script("/b");
        assert!(
            s.contains("git clone --depth 1 --branch 'v6.1.0' -- 'https://git.kernel.org/pub/scm/network/iproute2/iproute2.git' src")
                || s.contains("git clone --depth 1 --branch v6.1.0 -- https://git.kernel.org/pub/scm/network/iproute2/iproute2.git src"),
            "{s}"
        );
        assert!(s.contains(" git\""), "git is a dependency then: {s}");
        assert!(s.contains("CCOPTS='-O0 -pipe'"), "{s}");
    }
}
