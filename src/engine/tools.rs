//! Before a guest is configured: can it do vxlan? The readiness check, and a build of iproute2
//! when the guest's `ip` cannot (or the lab says so).

use std::path::{Path, PathBuf};

use super::guests::Runner;
use super::{Engine, EngineError};
use crate::builder::{self, BuildError, GuestSite, HostSite, Recipe};
use crate::iproute2::{self, BuildInfo, BuildMode, Tools};
use crate::plan::GuestPlan;

/// Where the host keeps iproute2 builds: `$VXLAB_CACHE_DIR/iproute2`, else
/// `/var/cache/vxlab/iproute2`.
pub fn host_build_root() -> PathBuf {
    std::env::var_os("VXLAB_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vxlab"))
        .join("iproute2")
}

impl Engine {
    /// Decides which `ip` and `bridge` the guest is configured with, building iproute2 when
    /// the lab asks for it or the guest's `ip` lacks vxlan. The build log goes to `state_dir`.
    pub(super) fn prepare_tools(
        &self,
        runner: &Runner,
        mode: BuildMode,
        g: &GuestPlan,
        state_dir: &Path,
        progress: &dyn Fn(&str),
    ) -> Result<Tools, EngineError> {
        progress("checking kernel and iproute2");
        let r = runner.readiness(g, &Tools::default())?;
        let not_ready = |why: String| EngineError::NotReady {
            guest: g.name.clone(),
            why,
        };
        if let Some(why) = r.kernel_problem() {
            return Err(not_ready(why));
        }
        let Some(reason) = iproute2::build_reason(mode, &r) else {
            if !r.ip_vxlan {
                return Err(not_ready(format!(
                    "its ip ({}) does not know `type vxlan`, and the lab says `build: never`",
                    r.ip_version
                )));
            }
            return Ok(Tools {
                json: r.ip_json,
                version: r.ip_version,
                ..Tools::default()
            });
        };
        let recipe: &Recipe = self.recipe.as_ref().ok_or_else(|| {
            not_ready(format!(
                "{reason}; give `iproute2: source:` (an iproute2 tarball or a git URL) in the lab \
                 so vxlab can build one"
            ))
        })?;
        let log = state_dir.join(format!("iproute2-{}.log", g.name));
        let build = |site: &dyn builder::Site| builder::build(site, recipe, &log, progress);
        let (built, site) = if self.driver.builds_on_host() {
            let site = HostSite {
                root: host_build_root(),
            };
            (build(&site), "host".to_string())
        } else {
            let site = GuestSite {
                driver: self.driver.as_ref(),
                guest: g,
            };
            (build(&site), g.name.clone())
        };
        let built = built.map_err(|e| match e {
            BuildError::Driver(d) => EngineError::Driver(d),
            other => EngineError::Build {
                guest: g.name.clone(),
                source: Box::new(other),
            },
        })?;
        let candidate = Tools {
            ip: built.ip.clone(),
            bridge: built.bridge.clone(),
            ..Tools::default()
        };
        let fresh = runner.readiness(g, &candidate)?;
        if !fresh.ip_vxlan {
            return Err(not_ready(format!(
                "the ip built from {} ({}) does not know `type vxlan` either",
                recipe.describe, fresh.ip_version
            )));
        }
        Ok(Tools {
            ip: built.ip,
            bridge: built.bridge,
            json: fresh.ip_json,
            version: fresh.ip_version,
            build: Some(BuildInfo {
                reason,
                source: recipe.describe.clone(),
                hash: recipe.hash.clone(),
                site,
                reused: built.reused,
                seconds: built.seconds,
                log,
            }),
        })
    }
}
