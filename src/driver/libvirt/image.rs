//! Guest images: a base qcow2 with the kernel and initrd beside it for direct kernel boot.
//! `vxlab image build` makes one offline from the host's Debian mirror.

use std::path::{Path, PathBuf};

pub use super::seed::Seeding;

/// Image failures.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A named image is not in the cache.
    #[error("image {name} is not built (looked in {}); run `vxlab image build {name}`", dir.display())]
    NotBuilt {
        /// Name.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// An image path lacks the kernel and initrd vxlab boots it with.
    #[error("{}: vxlab boots images directly and needs vmlinuz and initrd.img beside the qcow2", path.display())]
    NoKernel {
        /// The qcow2.
        path: PathBuf,
    },
    /// A named image was built by an older recipe and lacks what this vxlab needs.
    #[error("image {name} was built by an older vxlab ({found}; this one needs {RECIPE}); rebuild it with `vxlab image build {name}`")]
    Stale {
        /// Name.
        name: String,
        /// The recipe it was built by.
        found: String,
    },
    /// The name cannot be an image name.
    #[error("`{0}` is not an image name: use lowercase letters, digits, dots and dashes")]
    BadName(String),
    /// No Debian mirror is configured for apt.
    #[error(
        "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources"
    )]
    NoMirror,
    /// The build failed.
    #[error("building image {name} failed; the log is {}:\n{tail}", log.display())]
    Build {
        /// Name.
        name: String,
        /// Build log.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// I/O.
    #[error("image cache: {0}")]
    Io(#[from] std::io::Error),
}

/// What `vxlab image build` puts in an image, written into it as `recipe`; a named image
/// built by another recipe is rebuilt, not used.
pub const RECIPE: &str =
    "recipe 5: vxlab.target boot, kernel command line, tar seed, trimmed PVH kernel, busybox initrd";

/// A bootable image.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The base disk; guests get copy-on-write overlays of it.
    pub disk: PathBuf,
    /// Kernel for direct boot.
    pub kernel: PathBuf,
    /// Initial ramdisk for direct boot.
    pub initrd: PathBuf,
    /// How its guests learn who they are: images this vxlab built read the kernel command
    /// line, any other image gets cloud-init NoCloud documents.
    pub seeding: Seeding,
}

/// Where named images live: `$VXLAB_IMAGE_DIR`, else `/var/cache/vxlab/images` for root
/// (libvirt's qemu user cannot traverse /root), else `~/.cache/vxlab/images`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VXLAB_IMAGE_DIR") {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/vxlab/images");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/vxlab/images")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn in_dir(dir: &Path, disk: &str) -> Image {
    Image {
        disk: dir.join(disk),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        seeding: seeding_of(dir),
    }
}

/// The recipe an image directory says built it, if any.
fn recipe_in(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("recipe"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Images built by this vxlab's recipe read the kernel command line; any other, cloud-init.
fn seeding_of(dir: &Path) -> Seeding {
    if recipe_in(dir).as_deref() == Some(RECIPE) {
        Seeding::Cmdline
    } else {
        Seeding::NoCloud
    }
}

/// The image a lab names: a path to a qcow2 (with `vmlinuz` and `initrd.img` beside it), or
/// a name in the cache.
pub fn resolve(spec: &str) -> Result<Image, ImageError> {
    if spec.contains('/') {
        let path = PathBuf::from(spec);
        let dir = path.parent().unwrap_or(Path::new("."));
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let image = in_dir(dir, &file);
        if !image.kernel.is_file() || !image.initrd.is_file() {
            return Err(ImageError::NoKernel { path });
        }
        return Ok(image);
    }
    if !valid_name(spec) {
        return Err(ImageError::BadName(spec.into()));
    }
    let dir = cache_dir().join(spec);
    let image = in_dir(&dir, "base.qcow2");
    if [&image.disk, &image.kernel, &image.initrd]
        .iter()
        .all(|p| p.is_file())
    {
        let found = recipe_in(&dir).unwrap_or_else(|| "recipe 1".into());
        if found != RECIPE {
            return Err(ImageError::Stale {
                name: spec.into(),
                found,
            });
        }
        Ok(image)
    } else {
        Err(ImageError::NotBuilt {
            name: spec.into(),
            dir,
        })
    }
}

/// The mirror apt uses for `suite`, from deb822 `.sources` files or `sources.list`.
pub fn apt_mirror(suite: &str) -> Option<String> {
    let texts: Vec<String> = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sources"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    for stanza in texts.iter().flat_map(|t| t.split("\n\n")) {
        let field = |k: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let suites = field("Suites:").unwrap_or_default();
        if suites.split_whitespace().any(|s| s == suite) {
            if let Some(uri) =
                field("URIs:").and_then(|u| u.split_whitespace().next().map(String::from))
            {
                return Some(uri);
            }
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    list.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w.first() == Some(&"deb") && w.len() >= 3 && w[2] == suite).then(|| w[1].to_string())
    })
}

/// Builds image `name` (Debian bookworm) into the cache; `progress` gets each line of output.
pub fn build(name: &str, progress: &dyn Fn(&str)) -> Result<Image, ImageError> {
    if !valid_name(name) {
        return Err(ImageError::BadName(name.into()));
    }
    let suite = "bookworm";
    let mirror = apt_mirror(suite).ok_or(ImageError::NoMirror)?;
    let dir = cache_dir().join(name);
    std::fs::create_dir_all(&dir)?;
    let script = crate::templates::render(
        "image-build.sh",
        &serde_json::json!({
            "dir": dir,
            "suite": suite,
            "mirror": mirror,
            "build_tools": crate::iproute2::APT_BUILD_DEPS,
        }),
    );
    let script_path = dir.join("build.sh");
    std::fs::write(&script_path, script)?;
    let log_path = dir.join("build.log");
    progress(&format!(
        "building {name} from {mirror} (log: {})",
        log_path.display()
    ));
    let mut log = std::fs::File::create(&log_path)?;
    // The script sends everything to stdout; its own `stage:` lines are shown as they come.
    let mut child = std::process::Command::new("bash")
        .arg(&script_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        std::io::Write::write_all(&mut log, format!("{line}\n").as_bytes())?;
        if let Some(stage) = line.strip_prefix("stage: ") {
            progress(stage);
        }
        tail.push_back(line);
        if tail.len() > 15 {
            tail.pop_front();
        }
    }
    if !child.wait()?.success() {
        return Err(ImageError::Build {
            name: name.into(),
            log: log_path,
            tail: Vec::from(tail).join("\n"),
        });
    }
    // A kernel that cannot be trimmed goes, with why in the log: the image is then not
    // built, not taken for one an older vxlab made.
    let saved = super::kernel::trim(&dir.join("vmlinuz")).map_err(|e| {
        let said = format!("vxlab: cannot trim the kernel: {e}");
        let _ = std::io::Write::write_all(&mut log, format!("{said}\n").as_bytes());
        let _ = std::fs::remove_file(dir.join("vmlinuz"));
        ImageError::Build {
            name: name.into(),
            log: log_path.clone(),
            tail: said,
        }
    })?;
    progress(&format!(
        "kernel: {} MiB of zeros left to QEMU's zero fill",
        saved >> 20
    ));
    // Written last: an image with a recipe is a finished one.
    std::fs::write(dir.join("recipe"), format!("{RECIPE}\n"))?;
    progress(&format!("image ready: {}", dir.display()));
    resolve(name)
}

/// Images in the cache: name, disk size in bytes.
pub fn list() -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(cache_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let image = resolve(&name).ok()?;
            Some((name, std::fs::metadata(image.disk).ok()?.len()))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_named_image_says_how_to_build_it() {
        let e = resolve("no-such-image-here").unwrap_err().to_string();
        assert!(
            e.contains("run `vxlab image build no-such-image-here`"),
            "{e}"
        );
        assert!(matches!(
            resolve("../etc"),
            Err(ImageError::NoKernel { .. })
        ));
        assert!(matches!(resolve("Bad Name"), Err(ImageError::BadName(_))));
    }
}
