//! What the teaching views need from a running lab: a guest's full state with its routes, and a
//! capture of its underlay while it pings a peer.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Engine, EngineError};
use crate::host::capture::Capture;
use crate::observe::{self, GuestState, Route};
use crate::packet::Frame;
use crate::plan::{self, GuestPlan, VtepPlan};

/// How long the capture goes on after the pings, for late replies.
const LINGER: Duration = Duration::from_millis(500);

impl Engine {
    /// Takes the tools `up` configured the guests with from the lab's state, without its lock:
    /// for commands that only read or add traffic.
    pub fn adopt_tools(&self, lab: &str) -> Result<(), EngineError> {
        let st = self.state.read(lab)?;
        *self.tools.lock().unwrap_or_else(|p| p.into_inner()) = st.tools;
        Ok(())
    }

    /// Everything `vxlab show` shows of one guest: links, groups, FDBs and routes.
    pub fn inspect(&self, g: &GuestPlan) -> Result<(GuestState, Vec<Route>), EngineError> {
        let st = self.observe(g)?;
        let json = self.tools_of(g).json;
        let v6 = g.underlay.addr().is_ipv6() || g.vteps.iter().any(|v| v.address.addr().is_ipv6());
        let mut cmds = vec![observe::commands::routes(json, false)];
        if v6 {
            cmds.push(observe::commands::routes(json, true));
        }
        let outs = self.batch(g, &cmds, false)?;
        let mut routes = Vec::new();
        for o in outs.iter().filter(|o| o.success()) {
            routes.extend(Self::parse(g, observe::read_routes(json, &o.stdout))?);
        }
        Ok((st, routes))
    }

    /// Forgets what `g` learned on `vtep`: its neighbours on the device and the FDB entries
    /// learned from received frames (the flood and static entries stay).
    pub(super) fn forget(&self, g: &GuestPlan, vtep: &VtepPlan) -> Result<(), EngineError> {
        let st = self.observe(g)?;
        let mut forget = vec![["ip", "neigh", "flush", "dev", &vtep.device]
            .map(String::from)
            .to_vec()];
        for e in st.fdb.get(&vtep.device).into_iter().flatten() {
            if !e.mac.is_zero() && !e.permanent {
                forget.push(
                    [
                        "bridge",
                        "fdb",
                        "del",
                        &e.mac.to_string(),
                        "dev",
                        &vtep.device,
                    ]
                    .map(String::from)
                    .to_vec(),
                );
            }
        }
        self.batch(g, &forget, false)?;
        Ok(())
    }

    /// Pings `to` from `g` `count` times while capturing `g`'s underlay on the host; unless
    /// `keep`, first forgets what `g` learned (neighbours on `vtep`'s device and its learned
    /// FDB entries), so the capture starts with the flood. Returns every frame captured and
    /// whether the pings were answered.
    pub fn capture(
        &self,
        g: &GuestPlan,
        vtep: &VtepPlan,
        to: IpAddr,
        count: u32,
        keep: bool,
    ) -> Result<(Vec<Frame>, bool), EngineError> {
        if !keep {
            self.forget(g, vtep)?;
        }
        let cap = Capture::open(&g.host_link, Duration::from_millis(100)).map_err(|e| {
            EngineError::Host(format!(
                "cannot capture on {} (guest {}'s underlay link): {e}",
                g.host_link, g.name
            ))
        })?;
        let done = AtomicBool::new(false);
        // Three seconds for the last reply: a guest under software emulation can be slow.
        let mut argv = plan::ping_argv(to, 3);
        argv[2] = count.to_string();
        argv.splice(1..1, ["-i".to_string(), "0.2".to_string()]);
        let (frames, replied) = std::thread::scope(|s| {
            let pinger = s.spawn(|| {
                let r = self.batch(g, &[argv.clone()], false);
                done.store(true, Ordering::SeqCst);
                r
            });
            let mut frames = Vec::new();
            let mut finished: Option<Instant> = None;
            loop {
                if let Ok(Some(f)) = cap.next() {
                    frames.push(f);
                }
                if finished.is_none() && done.load(Ordering::SeqCst) {
                    finished = Some(Instant::now());
                }
                if finished.is_some_and(|t| t.elapsed() > LINGER) {
                    break;
                }
            }
            let replied = pinger
                .join()
                .expect("ping thread panicked")
                .map(|outs| outs.first().is_some_and(|o| o.success()));
            (frames, replied)
        });
        Ok((frames, replied?))
    }
}
