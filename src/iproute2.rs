//! Can a guest do vxlan? The readiness check (kernel, module, `ip`), and the plan of an
//! iproute2 build from source. Everything here is pure: commands to run and parsers of what
//! they print. The engine runs them through a driver or on the host.

use std::fmt;

use serde::Serialize;

use crate::host::process::Output;

/// Oldest kernel with the vxlan driver.
pub const MIN_KERNEL: (u32, u32) = (3, 7);

/// The parts of iproute2 vxlab runs: `ip` and `bridge` (and the library both link).
pub const BUILD_SUBDIRS: &str = "lib ip bridge";

/// Build dependencies by package manager: compiler, make, pkg-config, bison, flex, the libmnl
/// and libelf headers, the Berkeley DB headers (`db_185.h`), and the unpackers.
pub const APT_BUILD_DEPS: &[&str] = &[
    "gcc",
    "libc6-dev",
    "make",
    "pkg-config",
    "bison",
    "flex",
    "libmnl-dev",
    "libelf-dev",
    "libdb-dev",
    "xz-utils",
    "bzip2",
];
/// The same for dnf and yum, but for pkg-config, whose package name differs between them.
const RPM_BUILD_DEPS: &[&str] = &[
    "gcc",
    "make",
    "bison",
    "flex",
    "libmnl-devel",
    "elfutils-libelf-devel",
    "libdb-devel",
    "xz",
    "bzip2",
    "tar",
];

/// The build dependencies for dnf (Fedora, RHEL 8 and later: `pkgconf-pkg-config`) or yum
/// (CentOS 7 and older: `pkgconfig`).
pub fn rpm_build_deps(dnf: bool) -> Vec<&'static str> {
    let mut v = RPM_BUILD_DEPS.to_vec();
    v.push(if dnf {
        "pkgconf-pkg-config"
    } else {
        "pkgconfig"
    });
    v
}

/// Whether a guest can run the lab's vxlan commands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Readiness {
    /// The `ip` that was asked.
    pub ip: String,
    /// `uname -r`.
    pub kernel: String,
    /// The kernel is 3.7 or newer.
    pub kernel_ok: bool,
    /// The vxlan module is loaded, built in, or loadable.
    pub module: bool,
    /// `ip link help` lists `vxlan`.
    pub ip_vxlan: bool,
    /// `ip -j` prints JSON.
    pub ip_json: bool,
    /// `ip -V`.
    pub ip_version: String,
}

impl Readiness {
    /// Reads the outputs of [`crate::guest_command::readiness`], in order.
    pub fn from_outputs(ip: &str, outs: &[Output]) -> Readiness {
        // A command that did not run counts as failed.
        let get = |i: usize| {
            outs.get(i).cloned().unwrap_or(Output {
                status: -1,
                stdout: String::new(),
                stderr: String::new(),
            })
        };
        let kernel = get(0).stdout.trim().to_string();
        let help = get(2);
        let json = get(3);
        let version = get(4);
        Readiness {
            ip: ip.to_string(),
            kernel_ok: kernel_version(&kernel).is_some_and(|v| v >= MIN_KERNEL),
            kernel,
            module: get(1).success(),
            ip_vxlan: link_types(&format!("{}\n{}", help.stdout, help.stderr))
                .iter()
                .any(|t| t == "vxlan"),
            ip_json: json.success() && json.stdout.trim_start().starts_with('['),
            ip_version: first_line(if version.stdout.trim().is_empty() {
                &version.stderr
            } else {
                &version.stdout
            }),
        }
    }

    /// Why the kernel cannot run the lab, if it cannot; no build of iproute2 helps then.
    pub fn kernel_problem(&self) -> Option<String> {
        if !self.kernel_ok {
            return Some(format!(
                "kernel {} is too old for vxlan: it needs {}.{} or newer",
                self.kernel, MIN_KERNEL.0, MIN_KERNEL.1
            ));
        }
        if !self.module {
            return Some(format!(
                "kernel {} has no vxlan module (not loaded, not built in, and modprobe cannot find it)",
                self.kernel
            ));
        }
        None
    }

    /// One line for the report.
    pub fn summary(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "kernel {} ({}), vxlan module {}, {} ({}): type vxlan {}, -j {}",
            self.kernel,
            if self.kernel_ok { "ok" } else { "too old" },
            yes(self.module),
            self.ip,
            self.ip_version,
            yes(self.ip_vxlan),
            yes(self.ip_json)
        )
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// `major.minor` of a `uname -r` string such as `6.1.0-27-amd64` or `3.10.0-1160.el7`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The link types an `ip link help` text lists after `TYPE := {`, over as many lines as the
/// list takes.
pub fn link_types(help: &str) -> Vec<String> {
    let Some(start) = help.find("TYPE := {") else {
        return Vec::new();
    };
    let rest = &help[start + "TYPE := {".len()..];
    let list = rest.split('}').next().unwrap_or("");
    list.split('|')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The `ip` and `bridge` vxlab runs in one guest, and where they came from.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Tools {
    /// `ip`, a name on PATH or a path.
    pub ip: String,
    /// `bridge`.
    pub bridge: String,
    /// Whether `ip -j` prints JSON; otherwise vxlab reads text output.
    pub json: bool,
    /// `ip -V`.
    pub version: String,
    /// The build that made them, if vxlab built them.
    pub build: Option<BuildInfo>,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            ip: "ip".into(),
            bridge: "bridge".into(),
            json: true,
            version: String::new(),
            build: None,
        }
    }
}

/// An iproute2 build vxlab ran (or reused) for a guest.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct BuildInfo {
    /// Why the guest got one.
    pub reason: String,
    /// The source, in words.
    pub source: String,
    /// The source's hash; the build directory's name.
    pub hash: String,
    /// Where it ran: `host` or the guest.
    pub site: String,
    /// Whether a finished build was reused.
    pub reused: bool,
    /// Seconds it took.
    pub seconds: f64,
    /// The build log in the lab's state.
    pub log: std::path::PathBuf,
}

/// What `iproute2: build:` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildMode {
    /// Build only for guests whose `ip` does not know `type vxlan`.
    Auto,
    /// Build for every guest.
    Always,
    /// Never build; a guest that cannot do vxlan is an error.
    Never,
}

impl fmt::Display for BuildMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildMode::Auto => "auto",
            BuildMode::Always => "always",
            BuildMode::Never => "never",
        })
    }
}

/// Why a guest gets a build, or `None` when it needs none.
pub fn build_reason(mode: BuildMode, r: &Readiness) -> Option<String> {
    match mode {
        BuildMode::Never => None,
        BuildMode::Always => Some("the lab says `build: always`".into()),
        BuildMode::Auto if !r.ip_vxlan => Some(format!(
            "its ip ({}) does not know `type vxlan`",
            r.ip_version
        )),
        BuildMode::Auto => None,
    }
}

/// The stages of a build, in order; each is one run of the build script.
pub const STAGES: [(&str, &str); 6] = [
    ("deps", "installing build dependencies"),
    ("unpack", "unpacking the source"),
    ("configure", "./configure"),
    ("make", "make"),
    ("install", "make install"),
    ("verify", "checking the new ip knows vxlan"),
];

/// Hints for a failed build, by what its log says.
pub fn hint(log: &str) -> Option<&'static str> {
    const HINTS: [(&str, &str); 6] = [
        (
            "db_185.h",
            "the Berkeley DB headers are missing: install libdb-dev (apt) or libdb-devel (dnf, yum)",
        ),
        (
            "libmnl",
            "the libmnl headers are missing: install libmnl-dev (apt) or libmnl-devel (dnf, yum)",
        ),
        (
            "libelf",
            "the libelf headers are missing: install libelf-dev (apt) or elfutils-libelf-devel (dnf, yum)",
        ),
        ("bison", "bison is missing: install it with the package manager"),
        ("flex", "flex is missing: install it with the package manager"),
        (
            "no package manager could install",
            "the guest cannot reach a package mirror: use an image with the build tools (`vxlab image build` includes them)",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| log.contains(needle))
        .map(|(_, h)| *h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    fn ready(help_stdout: &str, help_stderr: &str, json: &str) -> Readiness {
        let out = |ok: bool, o: &str, e: &str| Output {
            status: if ok { 0 } else { 255 },
            stdout: o.into(),
            stderr: e.into(),
        };
        Readiness::from_outputs(
            "ip",
            &[
                out(true, "3.10.0-1160.el7.x86_64\n", ""),
                out(true, "", ""),
                out(false, help_stdout, help_stderr),
                out(!json.is_empty(), json, ""),
                out(true, "ip utility, iproute2-ss130716\n", ""),
            ],
        )
    }

    #[test]
    fn old_releases_without_vxlan_are_detected_from_stderr() {
        for f in ["ip-link-help-3.2.txt", "ip-link-help-3.5.txt"] {
            let r = ready("", &fixture(f), "");
            assert!(!r.ip_vxlan, "{f}");
            assert!(!r.ip_json, "{f}");
            assert!(
                link_types(&fixture(f)).contains(&"bridge".to_string()),
                "{f}"
            );
            assert!(build_reason(BuildMode::Auto, &r).is_some());
        }
    }

    #[test]
    fn lists_with_vxlan_anywhere_are_detected() {
        for f in [
            "ip-link-help-seed.txt",
            "ip-link-help-3.10.txt",
            "ip-link-help-6.1.txt",
        ] {
            let r = ready("", &fixture(f), "");
            assert!(r.ip_vxlan, "{f}: {:?}", link_types(&fixture(f)));
            assert_eq!(build_reason(BuildMode::Auto, &r), None);
            assert!(build_reason(BuildMode::Always, &r).is_some());
        }
        assert_eq!(
            link_types(&fixture("ip-link-help-seed.txt"))
                .last()
                .unwrap(),
            "vxlan"
        );
        // Wherever the help is printed; a current ip has JSON output too.
        let r = ready(
            &fixture("ip-link-help-6.1.txt"),
            "",
            "[{\"ifname\":\"lo\"}]",
        );
        assert!(r.ip_vxlan && r.ip_json);
    }

    #[test]
    fn json_support_needs_json_not_just_success() {
        let r = ready("", "", "Option \"-j\" is unknown, try \"ip -help\".");
        assert!(!r.ip_json);
    }

    #[test]
    fn kernels_before_3_7_are_refused_with_their_version() {
        assert_eq!(kernel_version("6.1.0-27-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("3.10.0-1160.el7.x86_64"), Some((3, 10)));
        let mut r = ready("", &fixture("ip-link-help-3.10.txt"), "");
        assert_eq!(r.kernel_problem(), None);
        r.kernel = "3.2.0-4-amd64".into();
        r.kernel_ok = kernel_version(&r.kernel).is_some_and(|v| v >= MIN_KERNEL);
        let why = r.kernel_problem().unwrap();
        assert!(
            why.contains("3.2.0-4-amd64") && why.contains("3.7"),
            "{why}"
        );
    }

    #[test]
    fn a_missing_db_185_h_gets_the_berkeley_db_hint() {
        let log = "arpd.c:20:10: fatal error: db_185.h: No such file or directory";
        assert!(hint(log).unwrap().contains("libdb-dev"));
        assert_eq!(hint("all went well"), None);
    }
}
