//! What a booting guest's serial console says: the stage it has reached, and whether its
//! kernel stopped. Pure: the drivers read the console (a file here, a tail on another host)
//! and act on what [`BootWatch::look`] decides.

/// The boot stage a guest's serial console shows: `vxlab-seed` is the seed unit of images
/// vxlab builds, cloud-init announces itself on images users bring.
pub fn boot_stage(console: &str) -> &'static str {
    if console.contains("vxlab-seed") {
        "seeded, starting SSH"
    } else if console.contains("Cloud-init") || console.contains("cloud-init") {
        "cloud-init"
    } else {
        "booting"
    }
}

/// Why the guest's kernel stopped, when its console ends with a kernel panic: a panicking
/// kernel's last words are `---[ end Kernel panic - not syncing: WHY ]---`, and it prints
/// nothing after them.
pub fn kernel_panic(console: &str) -> Option<&str> {
    let last = console.lines().rev().find(|l| !l.trim().is_empty())?;
    let (_, why) = last.split_once("end Kernel panic - not syncing: ")?;
    Some(why.trim_end().trim_end_matches("]---").trim_end())
}

/// The last lines of a console log's text, as a boot failure shows them.
pub fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().rev().take(15).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// How many times a guest whose kernel panicked while booting is started again. Under
/// emulation a loaded host can starve a booting kernel's early checks; a second panic says
/// the cause is not passing.
pub const RESTARTS: u32 = 1;

/// What one look at the console calls for.
#[derive(Debug, PartialEq, Eq)]
pub enum Look {
    /// Nothing new.
    Same,
    /// The boot reached a stage worth saying.
    Stage(&'static str),
    /// The kernel panicked: start the guest again (a reset), and say why.
    Restart(String),
    /// The kernel panicked again: the boot has failed, for this reason.
    Failed(String),
}

/// Follows one guest's console through its boot.
#[derive(Debug)]
pub struct BootWatch {
    stage: &'static str,
    restarts: u32,
    /// The console as it was when the guest was restarted: its panic is the old boot's.
    at_restart: Option<String>,
}

impl Default for BootWatch {
    fn default() -> Self {
        Self {
            stage: "booting",
            restarts: 0,
            at_restart: None,
        }
    }
}

impl BootWatch {
    /// Looks at the console's text (the whole log, or its end).
    pub fn look(&mut self, console: &str) -> Look {
        if self.at_restart.as_deref() == Some(console) {
            return Look::Same;
        }
        if let Some(why) = kernel_panic(console) {
            if self.restarts >= RESTARTS {
                let boots = self.restarts + 1;
                return Look::Failed(format!(
                    "its kernel panicked in each of {boots} boots: {why}"
                ));
            }
            let why = format!("its kernel panicked: {why}");
            self.restarts += 1;
            self.stage = "booting";
            self.at_restart = Some(console.to_string());
            return Look::Restart(why);
        }
        // Stages only go forward: a mark that scrolled out of a tail is not undone.
        let now = boot_stage(console);
        if now == self.stage || now == "booting" {
            return Look::Same;
        }
        self.stage = now;
        Look::Stage(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a console from CI: the IO-APIC timer check failed under a loaded TCG host.
    const PANIC: &str = "\
[    0.032000]  secondary_startup_64_no_verify+0xe5/0xeb
[    0.032000]  </TASK>
[    0.032000] ---[ end Kernel panic - not syncing: IO-APIC + timer doesn't work!  Boot with apic=debug and send a report.  Then try booting with the 'noapic' option. ]---
";

    #[test]
    fn a_console_ending_in_a_panic_says_why() {
        assert_eq!(
            kernel_panic(PANIC),
            Some(
                "IO-APIC + timer doesn't work!  Boot with apic=debug and send a report.  \
                 Then try booting with the 'noapic' option."
            )
        );
        assert_eq!(
            kernel_panic("[ 1.0] Kernel panic - not syncing: x\nlogin:\n"),
            None
        );
        assert_eq!(kernel_panic(""), None);
    }

    #[test]
    fn stages_go_forward_and_are_said_once() {
        let mut w = BootWatch::default();
        assert_eq!(w.look("[ 0.1] Linux version"), Look::Same);
        assert_eq!(w.look("cloud-init[1]: up"), Look::Stage("cloud-init"));
        assert_eq!(w.look("cloud-init[1]: up\nmore"), Look::Same);
        // The mark scrolled out of the tail: still cloud-init.
        assert_eq!(w.look("other lines"), Look::Same);
        assert_eq!(
            w.look("vxlab-seed: seeded"),
            Look::Stage("seeded, starting SSH")
        );
    }

    #[test]
    fn a_panic_restarts_the_guest_once_then_fails() {
        let mut w = BootWatch::default();
        let Look::Restart(why) = w.look(PANIC) else {
            panic!("a first panic restarts the guest");
        };
        assert!(why.contains("IO-APIC + timer doesn't work!"), "{why}");
        // The old boot's panic, still on the console, is not a second one.
        assert_eq!(w.look(PANIC), Look::Same);
        let restarted = format!("{PANIC}[    0.000000] Linux version 6.1\n");
        assert_eq!(w.look(&restarted), Look::Same);
        let again = format!("{restarted}{PANIC}");
        assert!(
            matches!(w.look(&again), Look::Failed(w) if w.starts_with("its kernel panicked in each of 2 boots: IO-APIC"))
        );
    }
}
