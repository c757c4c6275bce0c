//! How many guests this host can hold and boot at once: the decisions behind `up --count N`
//! on VMs, and the boot timeout. Pure, over a [`HostLoad`] read once at the edge.
//!
//! Memory decides how many copies of a lab fit: a class that does not fit is refused before
//! anything starts. Cores decide how many guests boot at once: under software emulation a
//! booting guest keeps one core busy, and more boots than cores only stretch every boot
//! toward its timeout while finishing no sooner.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::TB_CACHE_MIB;
use crate::lab::Lab;

/// What the host has free now.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLoad {
    /// Online cores.
    pub cores: usize,
    /// One-minute load average.
    pub load: f64,
    /// `MemAvailable`, MiB.
    pub available_mib: u64,
}

impl HostLoad {
    /// Reads `/proc/loadavg`, `/proc/meminfo` and the number of cores.
    pub fn read() -> HostLoad {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let available_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemAvailable:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024);
        HostLoad {
            cores,
            load,
            available_mib,
        }
    }

    /// Cores not busy with other work, at least one.
    fn free_cores(&self) -> f64 {
        (self.cores as f64 - self.load).max(1.0)
    }
}

/// QEMU's own memory beside the guest's: code, libraries, device state, I/O buffers, and its
/// share of the uncompressed kernel it maps.
const QEMU_OVERHEAD_MIB: u64 = 60;

/// The part of its memory an idle lab guest keeps touched: kernel, systemd, sshd and page
/// cache; free page reporting hands the rest back to the host. With the translation cache
/// and QEMU's own this makes 234 MiB a TCG guest; measured on 8 idle seed-lab guests here:
/// 230 MiB PSS each (304 MiB RSS, of which 84 MiB shared file pages), and 191 MiB less
/// available memory on the host per guest.
const IDLE_GUEST_MIB: u64 = 110;

/// Memory vxlab leaves free for the host itself and for guests' peaks (an iproute2 build).
fn reserve_mib(available_mib: u64) -> u64 {
    (available_mib / 10).max(1024)
}

/// Host memory one guest holds once booted and idle, MiB: what it touched (at most its
/// memory), the translation cache under TCG, and QEMU's own.
pub fn guest_cost_mib(memory_mib: u64, tcg: bool) -> u64 {
    memory_mib.min(IDLE_GUEST_MIB) + if tcg { TB_CACHE_MIB } else { 0 } + QEMU_OVERHEAD_MIB
}

/// Guests booting at once per free core: a TCG boot keeps a core busy; a KVM boot mostly
/// waits.
fn boots_per_core(tcg: bool) -> f64 {
    if tcg {
        1.0
    } else {
        4.0
    }
}

/// Guests one free core keeps responsive while their students work: under TCG a guest at a
/// shell prompt costs under 1 % of a core, one running commands and pings a good part of
/// one; with KVM the guests cost little more than their idle time.
fn served_per_core(tcg: bool) -> f64 {
    if tcg {
        4.0
    } else {
        16.0
    }
}

/// How a class of copies of one lab is brought up.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPlan {
    /// Copies asked for.
    pub copies: usize,
    /// Guests in each copy.
    pub guests_per_copy: usize,
    /// Host memory one copy costs, MiB.
    pub copy_cost_mib: u64,
    /// Copies that fit in the memory available.
    pub fit: usize,
    /// Copies brought up at once.
    pub width: usize,
    /// Copies the host's free cores serve well once they run: its CPU room, beside the
    /// memory room in `fit`.
    pub served: usize,
}

/// The class does not fit.
#[derive(Debug, thiserror::Error)]
#[error(
    "{copies} copies of {lab} do not fit on this host: each copy's {guests} guests take about \
     {cost} MiB, {available} MiB is available and {reserve} MiB is kept free, so {fit} copies \
     fit. Ask for --count {fit} or fewer, or split the class across hosts"
)]
pub struct ClassTooBig {
    /// The lab.
    pub lab: String,
    /// Copies asked for.
    pub copies: usize,
    /// Guests per copy.
    pub guests: usize,
    /// MiB per copy.
    pub cost: u64,
    /// MiB available.
    pub available: u64,
    /// MiB kept free.
    pub reserve: u64,
    /// Copies that fit.
    pub fit: usize,
}

/// Plans `copies` copies of lab `lab`, whose guests have `guest_memory_mib` each, on `host`.
pub fn plan_class(
    lab: &str,
    guest_memory_mib: &[u64],
    tcg: bool,
    copies: usize,
    host: &HostLoad,
) -> Result<ClassPlan, ClassTooBig> {
    let guests = guest_memory_mib.len().max(1);
    let copy_cost_mib: u64 = guest_memory_mib
        .iter()
        .map(|m| guest_cost_mib(*m, tcg))
        .sum::<u64>()
        .max(1);
    let reserve = reserve_mib(host.available_mib);
    let fit = (host.available_mib.saturating_sub(reserve) / copy_cost_mib) as usize;
    if copies > fit {
        return Err(ClassTooBig {
            lab: lab.to_string(),
            copies,
            guests,
            cost: copy_cost_mib,
            available: host.available_mib,
            reserve,
            fit,
        });
    }
    let width = boot_width(guests, tcg, host).min(copies.max(1));
    let served = ((host.free_cores() * served_per_core(tcg)).floor() as usize / guests).max(1);
    Ok(ClassPlan {
        copies,
        guests_per_copy: guests,
        copy_cost_mib,
        fit,
        width,
        served,
    })
}

/// How many copies of `guests` guests each `host` boots at once, for a class as big as it
/// takes (a class of fewer copies boots them all at once).
pub fn boot_width(guests: usize, tcg: bool, host: &HostLoad) -> usize {
    let boots = (host.free_cores() * boots_per_core(tcg)).floor() as usize;
    (boots / guests.max(1)).max(1)
}

impl ClassPlan {
    /// One line for the user: what fits, what each copy costs, how many start at once.
    pub fn summary(&self, host: &HostLoad) -> String {
        format!(
            "{} copies of {} guests, about {} MiB each ({} copies fit in {} MiB available); \
             {} cores, load {:.1}: {} at a time, the rest queued",
            self.copies,
            self.guests_per_copy,
            self.copy_cost_mib,
            self.fit,
            host.available_mib,
            host.cores,
            host.load,
            if self.width == 1 {
                "one copy".to_string()
            } else {
                format!("{} copies", self.width)
            }
        )
    }
}

/// How long a guest may take from start to SSH. Alone on a quiet host a TCG guest of an image
/// vxlab built answers in about 15 s and one that runs cloud-init in about a minute; guests
/// sharing cores take proportionally longer, so the limit grows with the load and with the
/// guests booting beside this one (see [`BootDeadline`]).
pub fn boot_timeout(tcg: bool, host: &HostLoad, booting: usize) -> Duration {
    let base = if tcg { 300.0 } else { 120.0 };
    let demand = (host.load + booting as f64) / host.cores.max(1) as f64;
    Duration::from_secs_f64(base * demand.max(1.0))
}

/// The guests this process is booting now, per host (`""` for this machine): every copy of a
/// class boots on its own threads, and each guest's timeout counts the guests booting beside
/// it, in its copy or in another.
static BOOTING: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

/// One guest booting on a host, counted in [`BOOTING`] until it is dropped.
struct Booting {
    host: String,
}

impl Booting {
    /// Counts a guest booting on `host` (`None`: this machine).
    fn start(host: Option<&str>) -> Booting {
        let host = host.unwrap_or_default().to_string();
        *booting().entry(host.clone()).or_default() += 1;
        Booting { host }
    }

    /// The guests booting on this guest's host now, this one included.
    fn now(&self) -> usize {
        booting().get(&self.host).copied().unwrap_or(1)
    }
}

impl Drop for Booting {
    fn drop(&mut self) {
        let mut all = booting();
        if let Some(n) = all.get_mut(&self.host) {
            *n -= 1;
            if *n == 0 {
                all.remove(&self.host);
            }
        }
    }
}

fn booting() -> std::sync::MutexGuard<'static, BTreeMap<String, usize>> {
    BOOTING.lock().unwrap_or_else(|p| p.into_inner())
}

/// When a booting guest is given up on: [`boot_timeout`] from its start, for the most guests
/// seen booting together since, at least its own lab's. A guest whose boot overlaps a later
/// batch is given the time that batch costs; its deadline never moves earlier.
pub struct BootDeadline {
    started: Instant,
    tcg: bool,
    host: HostLoad,
    most: usize,
    /// This guest, counted among those booting on its host while the deadline lives.
    booting: Booting,
}

impl BootDeadline {
    /// A guest starting now on `on` (`None`: this machine), loaded as `host` says, in a lab
    /// of `lab_guests` guests.
    pub fn start(on: Option<&str>, tcg: bool, host: HostLoad, lab_guests: usize) -> BootDeadline {
        BootDeadline {
            started: Instant::now(),
            tcg,
            host,
            most: lab_guests,
            booting: Booting::start(on),
        }
    }

    /// The deadline now, with the guests booting on the host now.
    pub fn now(&mut self) -> Instant {
        let booting = self.booting.now();
        self.with(booting)
    }

    /// The deadline with `booting` guests booting now.
    fn with(&mut self, booting: usize) -> Instant {
        self.most = self.most.max(booting);
        self.started + self.timeout()
    }

    /// The time allowed so far.
    pub fn timeout(&self) -> Duration {
        boot_timeout(self.tcg, &self.host, self.most)
    }
}

/// Plans `copies` copies of `lab` on this host as it is now; also returns the summary line.
pub fn plan_for(lab: &Lab, copies: usize) -> Result<(ClassPlan, String), ClassTooBig> {
    let host = HostLoad::read();
    let memory: Vec<u64> = lab.guests.iter().map(|g| g.memory_mib).collect();
    let tcg = !super::accel::likely_kvm(lab);
    let plan = plan_class(&lab.name, &memory, tcg, copies, &host)?;
    let summary = plan.summary(&host);
    Ok((plan, summary))
}

/// How a copy of a class ended its `up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Up, and every check passed.
    Checked,
    /// Up, and some checks failed.
    ChecksFailed,
    /// It did not come up.
    Failed,
}

impl Finish {
    /// How `up` of a copy ended, from what it returned.
    pub fn of<T>(r: &anyhow::Result<(T, crate::outcome::Outcome)>) -> Finish {
        match r {
            Ok((_, o)) if o.verdict.ok() => Finish::Checked,
            Ok(_) => Finish::ChecksFailed,
            Err(_) => Finish::Failed,
        }
    }
}

/// Which copies of a class have started, for lines saying what runs and what is queued.
pub struct ClassQueue {
    names: Vec<String>,
    /// The host the copies start on, when the class spans hosts (each has its own queue).
    host: Option<String>,
    started: Mutex<Vec<(String, Instant)>>,
    start: Instant,
}

impl ClassQueue {
    /// A queue of the copies `names`, in the order they will start.
    pub fn new(names: Vec<String>) -> Self {
        ClassQueue {
            names,
            host: None,
            started: Mutex::default(),
            start: Instant::now(),
        }
    }

    /// The queue of the copies placed on host `host`, a queue of its own.
    pub fn on(self, host: &str) -> Self {
        ClassQueue {
            host: Some(host.to_string()),
            ..self
        }
    }

    /// ` on HOST` for a host's queue, else nothing: what its lines add after a copy's name.
    fn on_host(&self) -> String {
        self.host
            .as_deref()
            .map(|h| format!(" on {h}"))
            .unwrap_or_default()
    }

    /// Notes that `name` starts; the line to print, with what is still queued.
    pub fn started(&self, name: &str) -> String {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        started.push((name.to_string(), Instant::now()));
        let queued: Vec<&str> = self
            .names
            .iter()
            .filter(|n| started.iter().all(|(s, _)| s != *n))
            .map(String::as_str)
            .collect();
        let on = self.on_host();
        format!(
            "{:>7.1} s  starting {name}{on}; queued{on}: {}",
            self.start.elapsed().as_secs_f64(),
            if queued.is_empty() {
                "none".to_string()
            } else {
                queued.join(" ")
            }
        )
    }

    /// The line to print when `name` is done.
    pub fn finished(&self, name: &str, how: Finish) -> String {
        let started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let took = started
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, t)| t.elapsed().as_secs_f64());
        let on = self.on_host();
        format!(
            "{:>7.1} s  {name}{on} {} after {took:.1} s",
            self.start.elapsed().as_secs_f64(),
            match how {
                Finish::Checked => "up and checked",
                Finish::ChecksFailed => "up, but its checks FAILED",
                Finish::Failed => "failed",
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(cores: usize, load: f64, available_mib: u64) -> HostLoad {
        HostLoad {
            cores,
            load,
            available_mib,
        }
    }

    #[test]
    fn a_quiet_two_core_host_boots_one_two_vm_copy_at_a_time_under_tcg() {
        let p = plan_class("two-vm", &[256, 256], true, 4, &host(2, 0.1, 22_000)).unwrap();
        assert_eq!(p.width, 1);
        assert_eq!(p.guests_per_copy, 2);
        assert_eq!(p.copy_cost_mib, 2 * guest_cost_mib(256, true));
    }

    #[test]
    fn more_free_cores_boot_more_copies_at_once_and_kvm_more_still() {
        let big = host(16, 2.0, 60_000);
        assert_eq!(
            plan_class("l", &[256, 256], true, 30, &big).unwrap().width,
            7
        );
        assert_eq!(
            plan_class("l", &[256, 256], false, 30, &big).unwrap().width,
            28
        );
        // What a survey of the host reports, before the class's size is known.
        assert_eq!(boot_width(2, true, &big), 7);
        assert_eq!(boot_width(2, true, &host(2, 1.5, 60_000)), 1);
        // Never more at once than asked for, never fewer than one.
        assert_eq!(
            plan_class("l", &[256, 256], false, 3, &big).unwrap().width,
            3
        );
        let busy = host(2, 6.0, 22_000);
        assert_eq!(
            plan_class("l", &[256, 256], true, 4, &busy).unwrap().width,
            1
        );
    }

    #[test]
    fn a_class_that_does_not_fit_is_refused_with_how_many_would_and_the_cost() {
        let e = plan_class("two-vm", &[512, 512], true, 30, &host(2, 0.0, 8_000)).unwrap_err();
        let cost = 2 * guest_cost_mib(512, true);
        assert_eq!(e.cost, cost);
        assert_eq!(e.fit, ((8_000 - 1_024) / cost) as usize);
        let text = e.to_string();
        assert!(text.contains(&format!("so {} copies fit", e.fit)), "{text}");
        assert!(text.contains(&format!("take about {cost} MiB")), "{text}");
    }

    #[test]
    fn a_guest_costs_what_it_touches_plus_the_translation_cache_under_tcg() {
        assert_eq!(
            guest_cost_mib(512, true),
            IDLE_GUEST_MIB + TB_CACHE_MIB + QEMU_OVERHEAD_MIB
        );
        assert_eq!(
            guest_cost_mib(512, false),
            IDLE_GUEST_MIB + QEMU_OVERHEAD_MIB
        );
        assert_eq!(guest_cost_mib(64, false), 64 + QEMU_OVERHEAD_MIB);
    }

    #[test]
    fn the_queue_says_what_starts_and_what_still_waits() {
        let q = ClassQueue::new(vec!["l-1".into(), "l-2".into(), "l-3".into()]);
        assert!(q.started("l-1").ends_with("starting l-1; queued: l-2 l-3"));
        assert!(q.started("l-2").ends_with("starting l-2; queued: l-3"));
        assert!(q
            .finished("l-1", Finish::Checked)
            .contains("l-1 up and checked after"));
        assert!(q.started("l-3").ends_with("queued: none"));
        assert!(q.finished("l-3", Finish::Failed).contains("l-3 failed"));
        assert!(q
            .finished("l-2", Finish::ChecksFailed)
            .contains("l-2 up, but its checks FAILED after"));
    }

    #[test]
    fn a_hosts_queue_names_the_host() {
        let q = ClassQueue::new(vec!["l-1".into(), "l-3".into()]).on("h1");
        assert!(q
            .started("l-1")
            .ends_with("starting l-1 on h1; queued on h1: l-3"));
        assert!(q
            .finished("l-1", Finish::Checked)
            .contains("l-1 on h1 up and checked after"));
    }

    #[test]
    fn boot_timeouts_grow_with_the_load_and_the_guests_booting_together() {
        let quiet = boot_timeout(true, &host(2, 0.0, 1), 2);
        assert_eq!(quiet, Duration::from_secs(300));
        let busy = boot_timeout(true, &host(2, 4.0, 1), 8);
        assert_eq!(busy, Duration::from_secs(1800));
        assert!(boot_timeout(false, &host(8, 0.0, 1), 2) < quiet);
    }

    #[test]
    fn a_boot_deadline_counts_the_most_guests_booting_beside_it_and_never_shrinks() {
        let mut d = BootDeadline::start(Some("test-deadline"), true, host(2, 0.0, 1), 2);
        let alone = d.with(1);
        assert_eq!(
            d.timeout(),
            Duration::from_secs(300),
            "its own lab's two guests"
        );
        // A second copy's guests start booting: every guest gets the time four cost.
        let crowded = d.with(4);
        assert_eq!(d.timeout(), Duration::from_secs(600));
        assert_eq!(crowded - alone, Duration::from_secs(300));
        // They finish; the time already given stays.
        assert_eq!(d.with(1), crowded);
    }

    #[test]
    fn guests_booting_are_counted_per_host_until_dropped() {
        let a = Booting::start(Some("test-h1"));
        let b = Booting::start(Some("test-h1"));
        let c = Booting::start(Some("test-h2"));
        assert_eq!((a.now(), b.now(), c.now()), (2, 2, 1));
        drop(b);
        assert_eq!(a.now(), 1);
        drop((a, c));
        assert!(!booting().contains_key("test-h1") && !booting().contains_key("test-h2"));
    }
}
