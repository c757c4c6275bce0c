//! Progress lines, one per guest, drawn only on a terminal.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress of one command across guests.
pub struct Progress {
    multi: MultiProgress,
}

impl Progress {
    /// Draws on stderr when it is a terminal; otherwise stays silent.
    pub fn new() -> Self {
        Progress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        }
    }

    /// Draws nothing: for many labs brought up at once.
    pub fn hidden() -> Self {
        Progress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
        }
    }

    /// A line for `name`, showing the stage it is in.
    pub fn line(&self, name: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<12} {msg} ({elapsed})")
                .expect("valid template"),
        );
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    }

    /// Prints a line above the progress lines.
    pub fn say(&self, text: &str) {
        if self.multi.is_hidden() {
            eprintln!("{text}");
        } else {
            let _ = self.multi.println(text);
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
