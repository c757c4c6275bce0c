//! The pages and page fragments, rendered by tera from typed contexts. Every value is
//! escaped by tera (the templates are HTML); what a row means comes from [`crate::views`] and
//! [`crate::explain`], what a failure's fix is from [`crate::verify`].

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tera::{Context, Tera};

use super::live::LabView;
use crate::health::Health;
use crate::plan::{GuestPlan, Plan};
use crate::report::line;
use crate::verify::{Failure, Verdict};
use crate::views::Table;

const TEMPLATES: [(&str, &str); 8] = [
    ("base.html", include_str!("../../templates/web/base.html")),
    ("class.html", include_str!("../../templates/web/class.html")),
    ("grid.html", include_str!("../../templates/web/grid.html")),
    ("lab.html", include_str!("../../templates/web/lab.html")),
    (
        "tables.html",
        include_str!("../../templates/web/tables.html"),
    ),
    ("check.html", include_str!("../../templates/web/check.html")),
    (
        "capture.html",
        include_str!("../../templates/web/capture.html"),
    ),
    ("sheet.html", include_str!("../../templates/web/sheet.html")),
];

fn tera() -> &'static Tera {
    static TERA: OnceLock<Tera> = OnceLock::new();
    TERA.get_or_init(|| {
        let mut t = Tera::default();
        t.add_raw_templates(TEMPLATES).expect("web templates parse");
        t.autoescape_on(vec![".html"]);
        t
    })
}

/// Renders page or fragment `name` from `ctx`.
pub fn render(name: &str, ctx: &impl Serialize) -> String {
    let ctx = Context::from_serialize(ctx).expect("page contexts serialize to a map");
    tera()
        .render(name, &ctx)
        .unwrap_or_else(|e| panic!("web template {name}: {e:?}"))
}

/// A guest in a line: name, underlay address, and its overlay addresses with their VNIs.
#[derive(Debug, Clone, Serialize)]
pub struct GuestSummary {
    /// Guest name.
    pub name: String,
    /// Underlay address with its prefix.
    pub underlay: String,
    /// `vxlan0 192.168.42.2/24 (VNI 42)`, one per vxlan device.
    pub overlays: Vec<String>,
}

impl GuestSummary {
    /// The summary of guest `g`.
    pub fn of(g: &GuestPlan) -> GuestSummary {
        GuestSummary {
            name: g.name.clone(),
            underlay: g.underlay.to_string(),
            overlays: g
                .vteps
                .iter()
                .map(|v| format!("{} {} (VNI {})", v.device, v.address, v.vni))
                .collect(),
        }
    }
}

/// The health of a lab in one line, as the instructor's grid shows it: `ok (38 checks)`,
/// `FAILING: ...`, that another vxlab is changing it (which one), or that its guests are still
/// being read.
pub fn health_line(view: &LabView) -> String {
    match &view.busy {
        Some(who) => format!("being changed by {who}..."),
        None => page_health_line(view),
    }
}

/// The same on a student's page, which names no process of the host's.
pub fn page_health_line(view: &LabView) -> String {
    if view.busy.is_some() {
        "being changed by vxlab: a moment...".into()
    } else if view.ready {
        Health::of(&view.verdict).summary()
    } else {
        "reading the guests...".into()
    }
}

/// One row of the class grid: one lab or workshop copy.
#[derive(Debug, Serialize)]
pub struct GridRow {
    /// Lab name.
    pub lab: String,
    /// Its guests.
    pub guests: Vec<GuestSummary>,
    /// Whether its guests have been read yet.
    pub ready: bool,
    /// Whether another process is changing the lab now (its failures are not failures yet).
    pub busy: bool,
    /// Whether every check holds.
    pub ok: bool,
    /// The health cell: `ok (24 checks)` or `FAILING: ...`.
    pub health: String,
    /// Each failing cause in words, with its fix.
    pub causes: Vec<String>,
    /// Whether the verdict includes pings (a Check ran since the last change).
    pub with_pings: bool,
    /// When the page last changed, in seconds since the epoch (the page shows the age).
    pub changed_at: u64,
    /// The same as a time of day (UTC).
    pub changed: String,
    /// The student's own page, under the student's token (what the sheet gives them).
    pub student_page: String,
}

impl GridRow {
    /// The row of lab `lab` as `view` shows it.
    pub fn of(lab: &str, view: &LabView, student_page: String) -> GridRow {
        let at = secs(view.changed_at);
        GridRow {
            lab: lab.to_string(),
            guests: view.plan.guests.iter().map(GuestSummary::of).collect(),
            ready: view.ready,
            busy: view.busy.is_some(),
            ok: view.ready && view.busy.is_none() && view.verdict.ok(),
            health: health_line(view),
            causes: view
                .verdict
                .diagnoses
                .iter()
                .map(|d| {
                    format!(
                        "{}: {} (fix: {})",
                        d.cause.place(),
                        line(&d.cause),
                        d.cause.fix
                    )
                })
                .collect(),
            with_pings: view.with_pings,
            changed_at: at,
            changed: time_of_day(at),
            student_page,
        }
    }
}

/// The instructor's page.
#[derive(Debug, Serialize)]
pub struct ClassPage {
    /// The page's own path, `/t/TOKEN/`: links and actions are relative to it.
    pub base: String,
    /// One row per lab.
    pub rows: Vec<GridRow>,
}

/// One guest's panel on a student's page.
#[derive(Debug, Serialize)]
pub struct GuestPanel {
    /// Name, addresses.
    pub guest: GuestSummary,
    /// Its tables, rendered (`tables.html`).
    pub tables: String,
    /// What its Capture may ping: address and what it is (`wire::targets`).
    pub targets: Vec<(String, String)>,
}

/// A student's page: one lab.
#[derive(Debug, Serialize)]
pub struct LabPage {
    /// The lab's path, `/t/TOKEN/lab/LAB/`: everything on the page is relative to it.
    pub base: String,
    /// Lab name.
    pub lab: String,
    /// The driver.
    pub driver: String,
    /// The health line.
    pub health: String,
    /// One panel per guest.
    pub guests: Vec<GuestPanel>,
    /// Terminals the page opens by itself, at most: the link's limit.
    pub terminals: usize,
}

/// The context of `tables.html`: one guest's `show` tables.
#[derive(Debug, Serialize)]
pub struct GuestTables<'a> {
    /// Guest name.
    pub guest: &'a str,
    /// Its tables, each row with its meaning.
    pub tables: Vec<Table>,
    /// Why it could not be read, if it could not.
    pub unreachable: Option<&'a str>,
}

/// Guest `guest`'s tables in `view`, rendered.
pub fn guest_tables(view: &LabView, guest: &str) -> String {
    render(
        "tables.html",
        &GuestTables {
            guest,
            tables: view.tables(guest).unwrap_or_default(),
            unreachable: view.unreachable.get(guest).map(String::as_str),
        },
    )
}

impl LabPage {
    /// The page of lab `lab` reached at `base`, opening at most `terminals` by itself.
    pub fn of(base: String, plan: &Plan, view: &LabView, terminals: usize) -> LabPage {
        LabPage {
            base,
            lab: plan.lab.clone(),
            driver: plan.driver.to_string(),
            health: page_health_line(view),
            guests: plan
                .guests
                .iter()
                .map(|g| GuestPanel {
                    guest: GuestSummary::of(g),
                    tables: guest_tables(view, &g.name),
                    targets: crate::wire::targets(plan, g)
                        .into_iter()
                        .map(|(a, what)| (a.to_string(), what))
                        .collect(),
                })
                .collect(),
            terminals,
        }
    }
}

/// One cause and what it explains, for the Check result.
#[derive(Debug, Serialize)]
pub struct DiagnosisView {
    /// The guest where the cause is.
    pub guest: String,
    /// The layer, in words.
    pub layer: String,
    /// What failed: expected and seen.
    pub what: String,
    /// How to repair it.
    pub fix: String,
    /// What it explains, one line each.
    pub symptoms: Vec<String>,
}

/// The Check result (`check.html`), also shown after a Reset.
#[derive(Debug, Serialize)]
pub struct CheckView {
    /// What was done before the check (a reset), in a sentence.
    pub heading: Option<String>,
    /// Checks that held.
    pub passed: usize,
    /// Checks that failed.
    pub failed: usize,
    /// Cause first.
    pub diagnoses: Vec<DiagnosisView>,
    /// A problem running the check, if it could not run.
    pub error: Option<String>,
    /// What a reset ran in the guests, in order, each with why.
    pub ran: Vec<RanView>,
}

/// One command a reset ran in a guest.
#[derive(Debug, Serialize)]
pub struct RanView {
    /// The guest.
    pub guest: String,
    /// The command, as a student would type it.
    pub command: String,
    /// Why it ran.
    pub why: String,
}

impl RanView {
    /// The commands of `repairs`, in order.
    pub fn all(repairs: &[crate::outcome::Repair]) -> Vec<RanView> {
        repairs
            .iter()
            .map(|r| RanView {
                guest: r.guest.clone(),
                command: r.step.command.to_string(),
                why: r.step.why.clone(),
            })
            .collect()
    }
}

/// Where a check's result is shown, which decides how its fixes are worded: each names the
/// buttons and terminals of the page it is read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience<'a> {
    /// A lab's own page: a terminal and a Reset button per guest, and Reset the whole lab.
    LabPage,
    /// The instructor's grid: one row per lab with its Reset button; the terminals are on the
    /// lab's student page.
    Grid {
        /// The lab the row is of.
        lab: &'a str,
    },
}

/// How the reader of `audience` repairs `f`: the commands, typed in the guest's terminal, or
/// the page's Reset button (the vxlab command line is the instructor's, not the page's).
pub fn page_fix(f: &Failure, audience: Audience<'_>) -> String {
    if let Some(hint) = &f.fix.hint {
        return hint.clone();
    }
    let cmds: Vec<String> = f.fix.commands.iter().map(|c| format!("`{c}`")).collect();
    let cmds = cmds.join("; ");
    match audience {
        Audience::LabPage => {
            let reset = if f.guest.is_empty() {
                "Reset the whole lab".to_string()
            } else {
                format!("Reset {}", f.guest)
            };
            match (cmds.is_empty(), f.guest.is_empty()) {
                (true, _) => format!("the {reset} button repairs it"),
                (false, true) => format!("{cmds}, or the {reset} button repairs it"),
                (false, false) => format!(
                    "in {}'s terminal {cmds}, or the {reset} button repairs it",
                    f.guest
                ),
            }
        }
        Audience::Grid { lab } => match (cmds.is_empty(), f.guest.is_empty()) {
            (true, _) => format!("{lab}'s Reset button repairs it"),
            (false, true) => format!("{cmds}, or {lab}'s Reset button repairs it"),
            (false, false) => format!(
                "in {}'s terminal on {lab}'s student page {cmds}, or {lab}'s Reset button \
                 repairs it",
                f.guest
            ),
        },
    }
}

impl CheckView {
    /// The view of `verdict`, its fixes worded for `audience`.
    pub fn of(verdict: &Verdict, audience: Audience<'_>) -> CheckView {
        CheckView {
            heading: None,
            passed: verdict.passed,
            failed: verdict.failures.len(),
            diagnoses: verdict
                .diagnoses
                .iter()
                .map(|d| DiagnosisView {
                    guest: d.cause.place().to_string(),
                    layer: d.cause.layer.describe().to_string(),
                    what: line(&d.cause),
                    fix: page_fix(&d.cause, audience),
                    symptoms: d
                        .symptoms
                        .iter()
                        .map(|s| format!("{}: {}", s.place(), line(s)))
                        .collect(),
                })
                .collect(),
            error: None,
            ran: Vec::new(),
        }
    }

    /// A check that could not run.
    pub fn failed_to_run(why: String) -> CheckView {
        CheckView {
            heading: None,
            passed: 0,
            failed: 0,
            diagnoses: Vec::new(),
            error: Some(why),
            ran: Vec::new(),
        }
    }
}

/// The Capture result (`capture.html`).
#[derive(Debug, Serialize)]
pub struct CaptureView {
    /// The guest whose underlay was captured.
    pub guest: String,
    /// Whom it pinged.
    pub to: String,
    /// Whether the pings were answered.
    pub answered: bool,
    /// One decoded packet per line, with its time.
    pub lines: Vec<String>,
    /// What the capture shows, in words.
    pub story: String,
    /// What was forgotten first, as commands.
    pub forgot: Vec<String>,
    /// What the capture hid (not the lesson's frames), e.g. "3 MLD reports".
    pub hidden: Vec<String>,
    /// A problem running the capture, if it could not run.
    pub error: Option<String>,
}

impl CaptureView {
    /// A capture on `guest` that could not run, and why.
    pub fn failed(guest: &str, why: String) -> CaptureView {
        CaptureView {
            guest: guest.to_string(),
            to: String::new(),
            answered: false,
            lines: Vec::new(),
            story: String::new(),
            forgot: Vec::new(),
            hidden: Vec::new(),
            error: Some(why),
        }
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `HH:MM:SS UTC`.
fn time_of_day(secs: u64) -> String {
    let s = secs % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(guest: &str, commands: &[&str]) -> Failure {
        Failure {
            kind: crate::converge::Kind::FloodEntry,
            layer: crate::converge::Layer::Flooding,
            guest: guest.into(),
            device: "vxlan0".into(),
            what: "vxlan0 flood entry to 239.1.1.1".into(),
            expected: "00:00:00:00:00:00 dst 239.1.1.1".into(),
            seen: "flood entries to none".into(),
            peer: None,
            fix: crate::verify::Fix {
                commands: commands.iter().map(|c| c.to_string()).collect(),
                vxlab: "vxlab up cls-1".into(),
                hint: None,
            },
        }
    }

    #[test]
    fn a_pages_fix_is_typed_in_the_guests_terminal_or_is_its_reset_button() {
        let page = Audience::LabPage;
        assert_eq!(
            page_fix(
                &failure("vm-a", &["bridge fdb append x", "ip link set up vxlan0"]),
                page
            ),
            "in vm-a's terminal `bridge fdb append x`; `ip link set up vxlan0`, or the Reset \
             vm-a button repairs it"
        );
        assert_eq!(
            page_fix(&failure("vm-a", &[]), page),
            "the Reset vm-a button repairs it"
        );
        assert_eq!(
            page_fix(&failure("", &[]), page),
            "the Reset the whole lab button repairs it"
        );
    }

    #[test]
    fn the_grids_fix_names_the_rows_reset_and_the_student_pages_terminal() {
        let grid = Audience::Grid { lab: "cls-1" };
        assert_eq!(
            page_fix(&failure("vm-a", &["ip link set up eth0"]), grid),
            "in vm-a's terminal on cls-1's student page `ip link set up eth0`, or cls-1's \
             Reset button repairs it"
        );
        assert_eq!(
            page_fix(&failure("vm-a", &[]), grid),
            "cls-1's Reset button repairs it"
        );
    }

    #[test]
    fn values_from_the_lab_are_escaped_in_every_page() {
        let html = render(
            "check.html",
            &CheckView::failed_to_run("<script>alert(1)</script>".into()),
        );
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>alert"));
    }

    #[test]
    fn the_time_of_day_is_utc() {
        assert_eq!(time_of_day(86_400 + 3661), "01:01:01 UTC");
    }
}
