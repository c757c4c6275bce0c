//! Progress lines, one per guest, drawn only on a terminal; with timings, every stage change
//! is also printed with the seconds since the command started, and a table of how long each
//! guest spent in each stage can be printed at the end.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress of one command across guests.
pub struct Progress {
    multi: MultiProgress,
    timings: Option<Arc<Timings>>,
    /// Whether guests are named with their lab (`cls-2/vm-a`): several labs at once.
    labs: bool,
}

/// Stage changes with their times since the start.
struct Timings {
    start: Instant,
    /// (seconds since start, guest, stage entered)
    changes: Mutex<Vec<(f64, String, String)>>,
}

impl Progress {
    /// Draws on stderr when it is a terminal; otherwise stays silent.
    pub fn new() -> Self {
        Progress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            timings: None,
            labs: false,
        }
    }

    /// Draws nothing: for many labs brought up at once.
    pub fn hidden() -> Self {
        Progress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
            timings: None,
            labs: false,
        }
    }

    /// The same, also printing each stage change with the seconds since now (`up --timings`).
    pub fn with_timings(mut self) -> Self {
        self.timings = Some(Arc::new(Timings {
            start: Instant::now(),
            changes: Mutex::default(),
        }));
        self
    }

    /// The same, naming each guest with its lab: for workshop copies, whose guests have the
    /// same names.
    pub fn naming_labs(mut self) -> Self {
        self.labs = true;
        self
    }

    /// A line for guest `guest` of lab `lab`, showing the stage it is in.
    pub fn guest_line(&self, lab: &str, guest: &str) -> Line {
        if self.labs {
            self.line(&format!("{lab}/{guest}"))
        } else {
            self.line(guest)
        }
    }

    /// A line for `name`, showing the stage it is in.
    pub fn line(&self, name: &str) -> Line {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<12} {msg} ({elapsed})")
                .expect("valid template"),
        );
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Line {
            bar,
            name: name.to_string(),
            multi: self.multi.clone(),
            timings: self.timings.clone(),
        }
    }

    /// Prints a line above the progress lines.
    pub fn say(&self, text: &str) {
        say(&self.multi, text);
    }

    /// Seconds since timings started, when they are on.
    pub fn elapsed(&self) -> Option<f64> {
        self.timings
            .as_ref()
            .map(|t| t.start.elapsed().as_secs_f64())
    }

    /// How long each guest spent in each stage, as a table, when timings are on.
    pub fn timings_table(&self) -> Option<String> {
        let t = self.timings.as_ref()?;
        let changes = t.changes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(stage_table(&changes, t.start.elapsed().as_secs_f64()))
    }
}

fn say(multi: &MultiProgress, text: &str) {
    if multi.is_hidden() {
        eprintln!("{text}");
    } else {
        let _ = multi.println(text);
    }
}

/// Per guest (by name), each stage with the second it started and how long it lasted (until the
/// guest's next stage, or `end` for its last).
fn stage_table(changes: &[(f64, String, String)], end: f64) -> String {
    let mut guests: Vec<&str> = Vec::new();
    for (_, g, _) in changes {
        if !guests.contains(&g.as_str()) {
            guests.push(g);
        }
    }
    // By name, numbers as numbers: a class's copies read in order (cls-2 before cls-10).
    guests.sort_by_cached_key(|g| natural(g));
    let w = guests.iter().map(|g| g.len()).max().unwrap_or(0).max(12);
    let mut out = format!(
        "{:<w$} {:<32} {:>8} {:>8}\n",
        "GUEST", "STAGE", "AT (s)", "TOOK (s)"
    );
    for g in guests {
        let mine: Vec<&(f64, String, String)> = changes.iter().filter(|c| c.1 == g).collect();
        for (i, (at, _, stage)) in mine.iter().enumerate() {
            let until = mine.get(i + 1).map_or(end, |n| n.0);
            out.push_str(&format!(
                "{g:<w$} {stage:<32} {at:>8.1} {:>8.1}\n",
                until - at
            ));
        }
    }
    out
}

/// A piece of a name, for sorting: digits compare as the number they write.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Piece {
    Text(String),
    Number(u64),
}

fn natural(name: &str) -> Vec<Piece> {
    let mut pieces: Vec<Piece> = Vec::new();
    for c in name.chars() {
        match (c.to_digit(10), pieces.last_mut()) {
            (Some(d), Some(Piece::Number(n))) => *n = n.saturating_mul(10).saturating_add(d.into()),
            (Some(d), _) => pieces.push(Piece::Number(d.into())),
            (None, Some(Piece::Text(t))) => t.push(c),
            (None, _) => pieces.push(Piece::Text(c.to_string())),
        }
    }
    pieces
}

/// One guest's progress line.
pub struct Line {
    bar: ProgressBar,
    name: String,
    multi: MultiProgress,
    timings: Option<Arc<Timings>>,
}

impl Line {
    fn record(&self, stage: &str) {
        let Some(t) = &self.timings else { return };
        let at = t.start.elapsed().as_secs_f64();
        t.changes.lock().unwrap_or_else(|p| p.into_inner()).push((
            at,
            self.name.clone(),
            stage.to_string(),
        ));
        say(
            &self.multi,
            &format!("{at:>7.1} s  {:<12} {stage}", self.name),
        );
    }

    /// Shows the stage the guest is in.
    pub fn set_message(&self, stage: impl Into<Cow<'static, str>>) {
        let stage = stage.into();
        self.record(&stage);
        self.bar.set_message(stage);
    }

    /// Ends the line with a last word, the guest done.
    pub fn finish_with_message(&self, word: impl Into<Cow<'static, str>>) {
        let word = word.into();
        self.record(&word);
        self.bar.finish_with_message(word);
    }

    /// Ends the line with a last word, the guest failed.
    pub fn abandon_with_message(&self, word: impl Into<Cow<'static, str>>) {
        let word = word.into();
        self.record(&word);
        self.bar.abandon_with_message(word);
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_each_stage_of_each_guest_its_start_and_duration() {
        let c = |at: f64, g: &str, s: &str| (at, g.to_string(), s.to_string());
        let t = stage_table(
            &[
                c(0.0, "vm-a", "booting"),
                c(0.1, "vm-b", "booting"),
                c(12.5, "vm-a", "SSH up"),
                c(13.0, "vm-b", "SSH up"),
                c(15.0, "vm-a", "ready"),
            ],
            18.0,
        );
        let rows: Vec<Vec<&str>> = t
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0], ["vm-a", "booting", "0.0", "12.5"]);
        assert_eq!(rows[1], ["vm-a", "SSH", "up", "12.5", "2.5"]);
        assert_eq!(rows[2], ["vm-a", "ready", "15.0", "3.0"]);
        assert_eq!(rows[3], ["vm-b", "booting", "0.1", "12.9"]);
        assert_eq!(rows[4], ["vm-b", "SSH", "up", "13.0", "5.0"]);
    }

    #[test]
    fn copies_are_listed_in_the_order_of_their_numbers() {
        let c = |g: &str| (0.0, g.to_string(), "ready".to_string());
        let t = stage_table(&[c("cls-10/vm-a"), c("cls-2/vm-b"), c("cls-2/vm-a")], 1.0);
        let names: Vec<&str> = t
            .lines()
            .skip(1)
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(names, ["cls-2/vm-a", "cls-2/vm-b", "cls-10/vm-a"]);
    }
}
