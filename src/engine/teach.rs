//! What the teaching views need from a running lab: a guest's full state, and a capture of its
//! underlay while it pings a peer.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::guests::Runner;
use super::{Engine, EngineError};
use crate::converge::{self, Step};
use crate::guest_command as cmd;
use crate::observe::GuestState;
use crate::packet::Frame;
use crate::plan::{GuestPlan, Plan};

/// How long the capture goes on after the pings, for late replies.
const LINGER: Duration = Duration::from_millis(500);

/// What `vxlab capture` saw.
#[derive(Debug)]
pub struct Captured {
    /// Every frame on the guest's underlay link.
    pub frames: Vec<Frame>,
    /// Whether the pings were answered.
    pub answered: bool,
    /// The ping command that ran in the guest.
    pub ping: String,
    /// What was forgotten first, by guest: the guest pinged, then the pinging one (nothing
    /// with `keep`).
    pub forgot: Vec<(String, Step)>,
    /// When `to` is in none of the pinging guest's vxlans (the isolation lesson): the guest
    /// that has it, and every frame on its underlay link meanwhile: what reached it, and
    /// what it sent.
    pub watched: Option<(String, Vec<Frame>)>,
}

impl Engine {
    /// A runner with the tools `up` configured the guests with, without the lab's lock: for
    /// commands that only read or add traffic.
    fn reader(&self, lab: &str) -> Result<Runner<'_>, EngineError> {
        let st = self.state.read(lab)?;
        Ok(Runner::new(self.driver.as_ref(), None, st.tools))
    }

    /// Everything `vxlab show` shows of one guest: links, groups, FDBs, neighbours, routes.
    pub fn inspect(&self, plan: &Plan, g: &GuestPlan) -> Result<GuestState, EngineError> {
        self.reader(&plan.lab)?.observe(g)
    }

    /// Pings `to` from `g` `count` times (out of device `via` when given) while capturing
    /// `g`'s underlay on the host; unless `keep`, first forgets what `g` and the guest it pings
    /// learned, so the capture starts with the flood.
    pub fn capture(
        &self,
        plan: &Plan,
        g: &GuestPlan,
        (to, via): (IpAddr, Option<&str>),
        count: u32,
        keep: bool,
    ) -> Result<Captured, EngineError> {
        let runner = self.reader(&plan.lab)?;
        // The guest pinged forgets too, first: otherwise its own neighbour probe to `g` can
        // arrive after `g` forgot and teach `g` again, and the capture starts without the
        // flood (seen on VMs).
        let pinged = plan
            .guests
            .iter()
            .find(|p| p.name != g.name && p.vteps.iter().any(|v| v.address.addr() == to));
        let mut forgot = Vec::new();
        if !keep {
            for who in pinged.into_iter().chain([g]) {
                let forget = converge::forget(who, &runner.observe(who)?);
                runner.run_steps(who, &runner.tools_of(who), &forget, false)?;
                forgot.extend(forget.into_iter().map(|step| (who.name.clone(), step)));
            }
        }
        let mut cap = self
            .host
            .capture(&g.host_link, Duration::from_millis(100))
            .map_err(|e| {
                EngineError::Host(format!(
                    "cannot capture on {} (guest {}'s underlay link): {e}",
                    g.host_link, g.name
                ))
            })?;
        // Into another VNI, the guest that has `to` is watched too: the lesson is on its link.
        let isolated = !g.vteps.iter().any(|v| v.address.trunc().contains(&to));
        let watched = pinged.filter(|_| isolated);
        let mut watch = match watched {
            Some(w) => Some(
                self.host
                    .capture(&w.host_link, Duration::from_millis(50))
                    .map_err(|e| {
                        EngineError::Host(format!(
                            "cannot capture on {} (guest {}'s underlay link): {e}",
                            w.host_link, w.name
                        ))
                    })?,
            ),
            None => None,
        };
        let mut seen_there = Vec::new();
        let done = AtomicBool::new(false);
        // Three seconds for the last reply: a guest under software emulation can be slow.
        let ping = cmd::ping_via(via, to, count, Some("0.2"), 3);
        let (frames, replied) = std::thread::scope(|s| {
            let pinger = s.spawn(|| {
                let r = runner.batch(g, std::slice::from_ref(&ping), false);
                done.store(true, Ordering::SeqCst);
                r
            });
            let mut frames = Vec::new();
            let mut finished: Option<Instant> = None;
            loop {
                if let Ok(Some(f)) = cap.next_frame() {
                    frames.push(f);
                }
                if let Some(Ok(Some(f))) = watch.as_mut().map(|w| w.next_frame()) {
                    seen_there.push(f);
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
        Ok(Captured {
            frames,
            answered: replied?,
            ping: ping.to_string(),
            forgot,
            watched: watched.map(|w| (w.name.clone(), seen_there)),
        })
    }
}
