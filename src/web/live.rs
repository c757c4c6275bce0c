//! Following the running labs as they change. Each lab has a watcher thread that keeps an
//! `ip monitor` running in each guest (through the lab's driver, so on namespaces and VMs
//! alike): every line it prints means something changed in that guest's links, addresses,
//! routes or neighbours (the FDB's learned entries come as neighbours of the vxlan device).
//! The watcher then reads the guest again, as `vxlab show` does, checks the lab against its
//! plan without pings, as `vxlab status` does, and publishes the new [`LabView`] when anything
//! a page shows differs. No change, no work: an idle class costs nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::Labs;
use crate::engine::Engine;
use crate::observe::{GuestState, HostSeen};
use crate::plan::Plan;
use crate::state::Stamp;
use crate::terminal::{self, ProcessControl};
use crate::verify::{self, Verdict};
use crate::views;

/// How long the watcher waits for more events after one, so that a burst (a link going down
/// removes its addresses, routes and entries) costs one read.
const QUIET: Duration = Duration::from_millis(60);
/// The longest a burst may delay a read.
const BURST: Duration = Duration::from_millis(300);

/// One lab as the pages show it.
#[derive(Debug, Clone)]
pub struct LabView {
    /// The lab's plan.
    pub plan: Arc<Plan>,
    /// What each guest's kernel reported last.
    pub observed: BTreeMap<String, GuestState>,
    /// Guests that could not be read, and why.
    pub unreachable: BTreeMap<String, String>,
    /// The lab against its plan: without pings after a change, with them after a Check.
    pub verdict: Verdict,
    /// Whether [`LabView::verdict`] came from a full check, pings included.
    pub with_pings: bool,
    /// What the host showed of the lab (its fence), read when the watcher starts, at a full
    /// check, after a reset and when another vxlab lets go of the lab; every verdict until
    /// the next read is made with it.
    pub host: HostSeen,
    /// When what the pages show last changed.
    pub changed_at: SystemTime,
    /// Whether the guests have been read at all yet.
    pub ready: bool,
    /// Who is changing the lab now (an `up` making it, a `reset`), in words: its guests are
    /// half-made, and what they show is no failure yet.
    pub busy: Option<String>,
    /// How many times each guest's namespace was deleted while followed: a terminal opened
    /// before is in the old namespace, which its shell alone keeps alive, and is closed.
    pub lost: BTreeMap<String, u32>,
}

impl LabView {
    fn empty(plan: Arc<Plan>) -> LabView {
        LabView {
            plan,
            observed: BTreeMap::new(),
            unreachable: BTreeMap::new(),
            verdict: Verdict {
                passed: 0,
                failures: Vec::new(),
                diagnoses: Vec::new(),
            },
            with_pings: false,
            host: HostSeen::default(),
            changed_at: SystemTime::now(),
            ready: false,
            busy: None,
            lost: BTreeMap::new(),
        }
    }

    /// How many times guest `guest`'s namespace was deleted while followed.
    pub fn times_lost(&self, guest: &str) -> u32 {
        self.lost.get(guest).copied().unwrap_or(0)
    }

    /// Guest `guest`'s `show` tables, if it was read.
    pub fn tables(&self, guest: &str) -> Option<Vec<views::Table>> {
        let g = self.plan.guest(guest)?;
        let st = self.observed.get(guest)?;
        Some(views::tables(&self.plan, g, st, None))
    }

    /// What the pages show, as one string: equal strings, equal pages.
    fn fingerprint(&self) -> String {
        let tables: Vec<_> = self
            .plan
            .guests
            .iter()
            .map(|g| self.tables(&g.name))
            .collect();
        serde_json::to_string(&(
            tables,
            &self.verdict.failures,
            &self.unreachable,
            &self.lost,
        ))
        .unwrap_or_default()
    }
}

/// What a watcher is told.
enum Signal {
    /// Something changed in this guest.
    Changed(String),
    /// The monitor with this number in this guest ended (the guest went away, or its
    /// connection did): it is started again at the next Check or refresh.
    Ended(String, u64),
    /// This guest's namespace was deleted: its monitor, which keeps the old one alive (and
    /// the guest answering), is ended, and the guest read again.
    Lost(String),
    /// Read every guest again and restart the monitors: the guests may be new (after a reset).
    Refresh,
    /// Another process began or stopped changing the lab (the pid holding its lock).
    Busy(Option<u32>),
    /// A full check ran; show its verdict.
    Checked(Verdict, HostSeen),
    /// The lab is gone.
    Stop,
}

struct Watched {
    view: watch::Receiver<Arc<LabView>>,
    signal: Sender<Signal>,
    /// The run of the lab watched, and the write of its state last seen.
    stamp: Stamp,
}

/// An `ip monitor` running in a guest, numbered so that the end of one already replaced is
/// told from the end of the current one.
struct Monitor {
    number: u64,
    control: Arc<dyn ProcessControl>,
}

/// The watchers of all running labs.
pub struct Watchers {
    backend: Arc<dyn Labs>,
    labs: RwLock<BTreeMap<String, Watched>>,
    /// Counts every change of any lab, and labs coming and going: the class page follows it.
    generation: watch::Sender<u64>,
    /// How often a lab's fence is read again with nothing else happening.
    fence_every: Duration,
}

impl Watchers {
    /// No lab watched yet; each lab's fence read again every `fence_every`.
    pub fn new(backend: Arc<dyn Labs>, fence_every: Duration) -> Watchers {
        Watchers {
            backend,
            labs: RwLock::new(BTreeMap::new()),
            generation: watch::channel(0).0,
            fence_every,
        }
    }

    /// Watches exactly `labs`: starts watchers for new ones, stops those of labs gone, starts
    /// a lab brought up again under its name (another run) anew, and has a lab whose state
    /// was written again (a guest made anew by `reset`, say) read again.
    pub fn follow(&self, labs: &[(String, Stamp)]) {
        let mut watched = self.labs.write().unwrap_or_else(|p| p.into_inner());
        let before = watched.len();
        watched.retain(|name, w| {
            let now = labs.iter().find(|(l, _)| l == name).map(|(_, s)| s);
            match now {
                Some(stamp) if stamp.made == w.stamp.made => {
                    if stamp.busy != w.stamp.busy {
                        let _ = w.signal.send(Signal::Busy(stamp.busy));
                    }
                    // A lock taken or let go changes no guest: only a new write of the
                    // state (a guest made anew) is read again.
                    if !stamp.same_state(&w.stamp) {
                        let _ = w.signal.send(Signal::Refresh);
                    }
                    w.stamp = stamp.clone();
                    true
                }
                // Gone, or another run: this watcher ends, and with its view the terminals
                // and pages that follow it.
                _ => {
                    let _ = w.signal.send(Signal::Stop);
                    false
                }
            }
        });
        let mut changed = watched.len() != before;
        for (lab, stamp) in labs {
            if watched.contains_key(lab) {
                continue;
            }
            let plan = match self.backend.plan(lab) {
                Ok(p) => Arc::new(p),
                Err(e) => {
                    eprintln!("vxlab serve: lab {lab}: {e:#}");
                    continue;
                }
            };
            let (view_tx, view_rx) = watch::channel(Arc::new(LabView::empty(plan.clone())));
            let (signal_tx, signal_rx) = mpsc::channel();
            let watcher = Watcher {
                backend: self.backend.clone(),
                lab: lab.clone(),
                plan,
                view: view_tx,
                generation: self.generation.clone(),
                signals: signal_tx.clone(),
                busy: stamp.busy,
                fence_every: self.fence_every,
            };
            let started = std::thread::Builder::new()
                .name(format!("watch-{lab}"))
                .spawn(move || watcher.run(signal_rx));
            if let Err(e) = started {
                eprintln!("vxlab serve: cannot watch lab {lab}: {e}");
                continue;
            }
            watched.insert(
                lab.clone(),
                Watched {
                    view: view_rx,
                    signal: signal_tx,
                    stamp: stamp.clone(),
                },
            );
            changed = true;
        }
        if changed {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Whether another process holds some watched lab's lock to change it.
    pub fn any_busy(&self) -> bool {
        self.labs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|w| w.stamp.busy.is_some())
    }

    /// The names of the watched labs.
    pub fn labs(&self) -> Vec<String> {
        self.labs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Lab `lab`'s view, followed as it changes; the channel closes when the lab goes down
    /// or is brought up again (another run).
    pub fn view(&self, lab: &str) -> Option<watch::Receiver<Arc<LabView>>> {
        let labs = self.labs.read().unwrap_or_else(|p| p.into_inner());
        labs.get(lab).map(|w| w.view.clone())
    }

    /// Every change of any lab, as a counter.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Tells lab `lab`'s watcher that a full check gave `verdict`, with what the host
    /// showed of the lab.
    pub fn checked(&self, lab: &str, verdict: Verdict, host: HostSeen) {
        self.signal(lab, Signal::Checked(verdict, host));
    }

    /// Tells lab `lab`'s watcher to read everything again (after a reset).
    pub fn refresh(&self, lab: &str) {
        self.signal(lab, Signal::Refresh);
    }

    fn signal(&self, lab: &str, s: Signal) {
        if let Some(w) = self.labs.read().unwrap_or_else(|p| p.into_inner()).get(lab) {
            let _ = w.signal.send(s);
        }
    }

    /// Namespaces that went (`gone`) or came (`came`) in `/run/netns`: a namespace lab's
    /// guest whose namespace was deleted by hand is read again at once (its monitor keeps the
    /// old one alive and says nothing), and a lab with a guest made anew is followed anew.
    pub fn namespaces_changed(&self, gone: &[String], came: &[String]) {
        let labs = self.labs.read().unwrap_or_else(|p| p.into_inner());
        for w in labs.values() {
            let plan = w.view.borrow().plan.clone();
            if plan.driver != crate::lab::DriverKind::Netns {
                continue;
            }
            // The guests gone first: a namespace deleted and made anew is both, and its old
            // terminals must close before the new one is followed.
            for g in plan.guests.iter().filter(|g| gone.contains(&g.instance)) {
                let _ = w.signal.send(Signal::Lost(g.name.clone()));
            }
            if plan.guests.iter().any(|g| came.contains(&g.instance)) {
                let _ = w.signal.send(Signal::Refresh);
            }
        }
    }

    /// Stops every watcher and its monitors.
    pub fn stop_all(&self) {
        self.follow(&[]);
    }
}

/// One lab's watcher thread.
struct Watcher {
    backend: Arc<dyn Labs>,
    lab: String,
    plan: Arc<Plan>,
    view: watch::Sender<Arc<LabView>>,
    generation: watch::Sender<u64>,
    signals: Sender<Signal>,
    /// Who held the lab's lock when the watcher started.
    busy: Option<u32>,
    /// How often the fence is read again with nothing else happening.
    fence_every: Duration,
}

impl Watcher {
    fn run(self, signals: Receiver<Signal>) {
        let all: Vec<String> = self.plan.guests.iter().map(|g| g.name.clone()).collect();
        // Until the lab can be reached (a host of a class may be away for a while), its page
        // says why, and every refresh or Check tries again; the lab is not gone.
        let engine = loop {
            match self.backend.engine(&self.lab) {
                Ok(e) => break e,
                Err(e) => {
                    let why = format!("cannot be read: {e:#}");
                    let mut next = LabView::empty(self.plan.clone());
                    next.unreachable = all.iter().map(|g| (g.clone(), why.clone())).collect();
                    next.ready = true;
                    let mut current = LabView::empty(self.plan.clone());
                    self.publish(&mut current, next, true);
                    match signals.recv() {
                        Ok(Signal::Stop) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            }
        };
        let mut monitors: BTreeMap<String, Monitor> = BTreeMap::new();
        let mut numbers = 0u64;
        self.start_monitors(&mut monitors, &mut numbers);
        let mut current = LabView::empty(self.plan.clone());
        current.busy = self.busy.map(changer);
        self.read(&engine, &mut current, &all, true);
        loop {
            // The fence changes by no event a watcher sees (a rule deleted by hand on the
            // host): it is read again every so often, alone.
            let first = match signals.recv_timeout(self.fence_every) {
                Ok(s) => s,
                Err(RecvTimeoutError::Timeout) => {
                    if current.busy.is_none() {
                        self.read_fence(&engine, &mut current);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut changed: Vec<String> = Vec::new();
            // The host's side (the fence) is read again when the lab may have been changed
            // as a whole: after a reset, or when another vxlab (an `up`) lets go of it.
            let mut host_due = false;
            let mut pending = Some(first);
            let started = Instant::now();
            while let Some(s) = pending.take() {
                match s {
                    Signal::Changed(g) => {
                        if !changed.contains(&g) {
                            changed.push(g);
                        }
                    }
                    Signal::Ended(g, number) => {
                        if monitors.get(&g).is_some_and(|m| m.number == number) {
                            monitors.remove(&g);
                            if !changed.contains(&g) {
                                changed.push(g);
                            }
                        }
                    }
                    Signal::Lost(g) => {
                        if let Some(m) = monitors.remove(&g) {
                            m.control.hang_up();
                        }
                        let mut next = current.clone();
                        *next.lost.entry(g.clone()).or_default() += 1;
                        self.publish(&mut current, next, true);
                        if !changed.contains(&g) {
                            changed.push(g);
                        }
                    }
                    Signal::Refresh => {
                        hang_up(&mut monitors);
                        self.start_monitors(&mut monitors, &mut numbers);
                        changed = all.clone();
                        host_due = true;
                    }
                    Signal::Busy(pid) => {
                        let mut next = current.clone();
                        next.busy = pid.map(changer);
                        self.publish(&mut current, next, true);
                        if pid.is_none() {
                            changed = all.clone();
                            host_due = true;
                        }
                    }
                    Signal::Checked(verdict, host) => {
                        let mut next = current.clone();
                        next.verdict = verdict;
                        next.host = host;
                        next.with_pings = true;
                        self.publish(&mut current, next, true);
                        // A guest back after its monitor ended is followed again.
                        self.start_monitors(&mut monitors, &mut numbers);
                    }
                    Signal::Stop => {
                        hang_up(&mut monitors);
                        return;
                    }
                }
                if changed.is_empty() {
                    break;
                }
                let left = BURST.saturating_sub(started.elapsed());
                match signals.recv_timeout(QUIET.min(left)) {
                    Ok(s) => pending = Some(s),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            if !changed.is_empty() {
                self.read(&engine, &mut current, &changed, host_due);
            }
        }
        hang_up(&mut monitors);
    }

    /// Reads the host's side of the lab again; only when it changed is the lab's view
    /// verified anew (a Check's pings stay in it otherwise).
    fn read_fence(&self, engine: &Engine, current: &mut LabView) {
        let host = engine.host_seen(&self.plan, &mut Vec::new());
        if host == current.host {
            return;
        }
        let mut next = current.clone();
        next.host = host;
        next.verdict = verify::verify_lab(&self.plan, &next.host, &next.observed, &[]);
        next.with_pings = false;
        self.publish(current, next, false);
    }

    /// Reads guests `guests` again (and the host's side of the lab when `host`) and
    /// publishes the lab's new view if it changed.
    fn read(&self, engine: &Engine, current: &mut LabView, guests: &[String], host: bool) {
        let mut next = current.clone();
        if host {
            next.host = engine.host_seen(&self.plan, &mut Vec::new());
        }
        for name in guests {
            let Some(g) = self.plan.guest(name) else {
                continue;
            };
            match engine.inspect(&self.plan, g) {
                Ok(st) => {
                    next.observed.insert(name.clone(), st);
                    next.unreachable.remove(name);
                }
                Err(e) => {
                    next.observed.remove(name);
                    next.unreachable.insert(name.clone(), e.to_string());
                }
            }
        }
        next.verdict = verify::verify_lab(&self.plan, &next.host, &next.observed, &[]);
        next.with_pings = false;
        next.ready = true;
        self.publish(current, next, false);
    }

    /// Makes `next` the current view; tells the pages when it shows something new (`force`:
    /// always).
    fn publish(&self, current: &mut LabView, mut next: LabView, force: bool) {
        let changed = force || !current.ready || next.fingerprint() != current.fingerprint();
        if !changed {
            return;
        }
        next.changed_at = SystemTime::now();
        *current = next;
        self.view.send_replace(Arc::new(current.clone()));
        self.generation.send_modify(|g| *g += 1);
    }

    /// An `ip monitor` in every guest that has none running; each line it prints signals a
    /// change in that guest, and its end is signalled too.
    fn start_monitors(&self, monitors: &mut BTreeMap<String, Monitor>, numbers: &mut u64) {
        if self
            .plan
            .guests
            .iter()
            .all(|g| monitors.contains_key(&g.name))
        {
            return;
        }
        let driver = match self.backend.driver(&self.lab) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("vxlab serve: lab {}: {e:#}", self.lab);
                return;
            }
        };
        let tools = self.backend.tools(&self.lab);
        for g in &self.plan.guests {
            if monitors.contains_key(&g.name) {
                continue;
            }
            let argv = crate::guest_command::monitor().argv(
                tools
                    .get(&g.name)
                    .unwrap_or(&crate::iproute2::Tools::default()),
            );
            let process = match driver.spawn(g, &terminal::command(&argv, None)) {
                Ok(p) => p,
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    eprintln!("vxlab serve: lab {}: {e:#}", self.lab);
                    continue;
                }
            };
            *numbers += 1;
            let number = *numbers;
            let control: Arc<dyn ProcessControl> = Arc::from(process.control);
            let (signals, guest) = (self.signals.clone(), g.name.clone());
            let stdout = process.stdout;
            let waiter = control.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("monitor-{}", g.name))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        if line.is_err() || signals.send(Signal::Changed(guest.clone())).is_err() {
                            break;
                        }
                    }
                    waiter.hang_up();
                    let _ = waiter.wait();
                    let _ = signals.send(Signal::Ended(guest, number));
                });
            if spawned.is_ok() {
                monitors.insert(g.name.clone(), Monitor { number, control });
            } else {
                control.hang_up();
            }
        }
    }
}

/// Process `pid`, changing a lab, in words: `vxlab up labs/two-vm.yaml --count 3 (pid 812)`,
/// or this server's own Reset.
fn changer(pid: u32) -> String {
    if pid == std::process::id() {
        "a Reset from this server".into()
    } else {
        crate::host::process::described(pid)
    }
}

/// Ends every monitor.
fn hang_up(monitors: &mut BTreeMap<String, Monitor>) {
    for m in monitors.values() {
        m.control.hang_up();
    }
    monitors.clear();
}
