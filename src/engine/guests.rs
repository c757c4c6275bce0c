//! Commands in guests: each guest's `ip` and `bridge` applied, every command logged as a student
//! would type it, and a guest's whole state read in one batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::EngineError;
use crate::converge::Step;
use crate::driver::Driver;
use crate::guest_command::{self as cmd, shell_words, GuestCommand};
use crate::host::files;
use crate::host::process::Output;
use crate::iproute2::{Readiness, Tools};
use crate::observe::{self, GuestState, ParseError};
use crate::plan::GuestPlan;

/// Runs commands in a lab's guests.
pub(crate) struct Runner<'a> {
    driver: &'a dyn Driver,
    /// The lab's state directory while a command holds its lock: every command run in a
    /// guest is logged there, with its exit status.
    log_dir: Option<PathBuf>,
    /// The tools each guest is configured with, by guest name.
    tools: BTreeMap<String, Tools>,
    /// Readiness by `ip`, when every guest shares the host's kernel and programs (namespaces):
    /// asked once, not once per guest.
    shared_readiness: Option<Mutex<BTreeMap<String, Readiness>>>,
}

fn parse<T>(g: &GuestPlan, r: Result<T, ParseError>) -> Result<T, EngineError> {
    r.map_err(|source| EngineError::Observe {
        guest: g.name.clone(),
        source,
    })
}

impl<'a> Runner<'a> {
    /// A runner over `driver`, logging into `log_dir`, with each guest's `tools`.
    pub(crate) fn new(
        driver: &'a dyn Driver,
        log_dir: Option<&Path>,
        tools: BTreeMap<String, Tools>,
    ) -> Self {
        Runner {
            driver,
            log_dir: log_dir.map(Path::to_path_buf),
            tools,
            shared_readiness: driver.builds_on_host().then(Mutex::default),
        }
    }

    /// Whether `g`'s kernel and `ip` (from `tools`) can run vxlan.
    pub(crate) fn readiness(&self, g: &GuestPlan, tools: &Tools) -> Result<Readiness, EngineError> {
        let ask = || -> Result<Readiness, EngineError> {
            let outs = self.batch_with(g, tools, &cmd::readiness(), false)?;
            Ok(Readiness::from_outputs(&tools.ip, &outs))
        };
        let Some(cache) = &self.shared_readiness else {
            return ask();
        };
        // Held while asking: the guests provisioned at once wait for the first answer.
        let mut known = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = known.get(&tools.ip) {
            return Ok(r.clone());
        }
        let r = ask()?;
        known.insert(tools.ip.clone(), r.clone());
        Ok(r)
    }

    /// Every guest's tools.
    pub(crate) fn tools(&self) -> &BTreeMap<String, Tools> {
        &self.tools
    }

    /// The tools of guest `g`.
    pub(crate) fn tools_of(&self, g: &GuestPlan) -> Tools {
        self.tools.get(&g.name).cloned().unwrap_or_default()
    }

    /// Runs `cmds` in `g` with `tools`, in one batch; a failed command is an error, and the
    /// batch stops there when `stop_on_failure` (otherwise the caller judges the outputs).
    pub(crate) fn batch_with(
        &self,
        g: &GuestPlan,
        tools: &Tools,
        cmds: &[GuestCommand],
        stop_on_failure: bool,
    ) -> Result<Vec<Output>, EngineError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        super::go_on()?;
        let argvs: Vec<Vec<String>> = cmds.iter().map(|c| c.argv(tools)).collect();
        // A stop asked for while the batch ran reached its processes too (they share the
        // terminal's process group): what they printed, or how they failed, is cut short and
        // says nothing about the guest. It is the interruption, not a finding.
        let outs = match self.driver.exec_batch(g, tools, cmds, stop_on_failure) {
            Ok(outs) => outs,
            Err(e) => {
                super::go_on()?;
                return Err(e.into());
            }
        };
        self.log(g, &argvs, &outs);
        super::go_on()?;
        if stop_on_failure {
            if let Some((c, out)) = cmds.iter().zip(&outs).find(|(_, o)| !o.success()) {
                return Err(EngineError::Step {
                    guest: g.name.clone(),
                    command: c.to_string(),
                    stderr: out.stderr.trim().to_string(),
                });
            }
        }
        Ok(outs)
    }

    /// [`Runner::batch_with`] with the guest's own tools.
    pub(crate) fn batch(
        &self,
        g: &GuestPlan,
        cmds: &[GuestCommand],
        stop_on_failure: bool,
    ) -> Result<Vec<Output>, EngineError> {
        self.batch_with(g, &self.tools_of(g), cmds, stop_on_failure)
    }

    /// Runs `steps` in order; with `stop_on_failure` the first that fails is an error and
    /// nothing after it runs, otherwise every one runs whatever its exit status.
    pub(crate) fn run_steps(
        &self,
        g: &GuestPlan,
        tools: &Tools,
        steps: &[Step],
        stop_on_failure: bool,
    ) -> Result<(), EngineError> {
        let cmds: Vec<GuestCommand> = steps.iter().map(|s| s.command.clone()).collect();
        self.batch_with(g, tools, &cmds, stop_on_failure)
            .map(|_| ())
    }

    /// Appends the commands that ran in `g` to its log, `commands-<guest>.log`.
    fn log(&self, g: &GuestPlan, argvs: &[Vec<String>], outs: &[Output]) {
        let Some(dir) = &self.log_dir else { return };
        let text: String = argvs
            .iter()
            .zip(outs)
            .map(|(c, o)| format!("{}  # exit {}\n", shell_words(c), o.status))
            .collect();
        let path = dir.join(format!("commands-{}.log", g.name));
        // The log is for people; a lab does not fail because it could not be written. It is
        // never written through a link someone planted in the state directory.
        let _ = files::open_append(&path, files::PRIVATE)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    }

    /// Everything a student would look at in `g`, with its own tools.
    pub(crate) fn observe(&self, g: &GuestPlan) -> Result<GuestState, EngineError> {
        self.observe_with(g, &self.tools_of(g))
    }

    /// [`Runner::observe`] with `tools`.
    pub(crate) fn observe_with(
        &self,
        g: &GuestPlan,
        tools: &Tools,
    ) -> Result<GuestState, EngineError> {
        self.read(g, tools, false).map(|(st, _)| st)
    }

    /// [`Runner::observe`], with the readiness check (in the same batch, unless it is shared).
    pub(crate) fn observe_ready(
        &self,
        g: &GuestPlan,
    ) -> Result<(GuestState, Readiness), EngineError> {
        let tools = self.tools_of(g);
        if self.shared_readiness.is_some() {
            let ready = self.readiness(g, &tools)?;
            return Ok((self.read(g, &tools, false)?.0, ready));
        }
        let (st, ready) = self.read(g, &tools, true)?;
        Ok((st, ready.expect("asked for")))
    }

    /// One batch: the reads of [`cmd::read::guest`], and the readiness commands when `ready`.
    fn read(
        &self,
        g: &GuestPlan,
        tools: &Tools,
        ready: bool,
    ) -> Result<(GuestState, Option<Readiness>), EngineError> {
        let json = tools.json;
        let mut reads = cmd::read::guest(g, json);
        let mut cmds = std::mem::take(&mut reads.commands);
        let n = cmds.len();
        if ready {
            cmds.extend(cmd::readiness());
        }
        let outs = self.batch_with(g, tools, &cmds, false)?;
        let readiness = ready.then(|| Readiness::from_outputs(&tools.ip, &outs[n..]));
        for (c, out) in cmds.iter().zip(&outs).take(reads.groups_at) {
            if !out.success() {
                return Err(EngineError::Step {
                    guest: g.name.clone(),
                    command: c.to_string(),
                    stderr: out.stderr.trim().to_string(),
                });
            }
        }
        let mut st = GuestState::new(
            parse(g, observe::read_links(json, &outs[0].stdout))?,
            parse(g, observe::read_addresses(json, &outs[1].stdout))?,
        );
        st.routes = parse(g, observe::read_routes(json, &outs[2].stdout))?;
        if let Some(o) = reads.routes6_at.map(|i| &outs[i]).filter(|o| o.success()) {
            let v6 = parse(g, observe::read_routes(json, &o.stdout))?;
            st.routes
                .extend(v6.into_iter().map(|r| observe::Route { ipv6: true, ..r }));
        }
        for o in outs[reads.groups_at..reads.neighbours_at]
            .iter()
            .filter(|o| o.success())
        {
            st.groups
                .extend(parse(g, observe::read_groups(json, &o.stdout))?);
        }
        // A missing device has nothing to read; the comparison reports the device itself.
        for (v, o) in g.vteps.iter().zip(&outs[reads.neighbours_at..]) {
            if o.success() {
                st.neighbours.insert(
                    v.device.clone(),
                    parse(g, observe::read_neighbours(json, &o.stdout))?,
                );
            }
        }
        for (v, o) in g.vteps.iter().zip(&outs[reads.fdb_at..n]) {
            if o.success() {
                st.fdb.insert(
                    v.device.clone(),
                    parse(g, observe::read_fdb(json, &o.stdout))?,
                );
            }
        }
        Ok((st, readiness))
    }
}
