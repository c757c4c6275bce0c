//! The man page, `vxlab(1)`: one page with every command and its options (taken from the
//! command line's definition, so it cannot drift from `--help`), and the sections a man page
//! reader looks for: EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES. It refers to no other page of
//! vxlab's, since there is none.

use std::fmt::Write;

use clap::{Arg, ArgAction, Command};

use crate::commands::exit;

/// Text for roff: backslashes escaped, a leading `.` or `'` kept from reading as a request.
fn esc(s: &str) -> String {
    let t = s.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// Help text as paragraphs of roff: `code` in backquotes set in bold.
fn prose(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in esc(s).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "\\fB{part}\\fR");
        } else {
            out.push_str(part);
        }
    }
    out
}

fn help_of(a: &Arg) -> String {
    let mut h = a
        .get_long_help()
        .or_else(|| a.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    // clap drops the doc comment's last full stop; the man page reads as sentences.
    if !h.is_empty() && !h.ends_with(['.', ')', ':']) {
        h.push('.');
    }
    let flag = matches!(a.get_action(), ArgAction::SetTrue);
    let values: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    if !values.is_empty() && !flag {
        let _ = write!(h, " One of: {}.", values.join(", "));
    }
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && !flag {
        let _ = write!(h, " Default: {}.", defaults.join(" "));
    }
    if let Some(env) = a.get_env() {
        let _ = write!(h, " Also ${}.", env.to_string_lossy());
    }
    h
}

/// One argument as a `.TP` entry.
fn arg_entry(a: &Arg) -> String {
    let name = a.get_id().as_str().to_uppercase().replace('_', "-");
    let value = a
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or(name);
    let head = match a.get_long() {
        Some(long) => {
            let short = a
                .get_short()
                .map(|c| format!("\\fB\\-{c}\\fR, "))
                .unwrap_or_default();
            let takes = !matches!(a.get_action(), ArgAction::SetTrue | ArgAction::Count);
            let v = if takes {
                format!(" \\fI{}\\fR", esc(&value))
            } else {
                String::new()
            };
            format!("{short}\\fB\\-\\-{}\\fR{v}", esc(long))
        }
        None => format!("\\fI{}\\fR", esc(&value)),
    };
    format!(".TP\n{head}\n{}\n", prose(&help_of(a)))
}

fn shown(a: &Arg) -> bool {
    !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version" | "state_dir")
}

/// A subcommand and its own subcommands, each with its usage line, what it does, and its
/// arguments.
fn command_section(out: &mut String, c: &mut Command, path: &str) {
    let path = format!("{path} {}", c.get_name());
    if c.has_subcommands() {
        for sub in c.get_subcommands_mut().filter(|s| s.get_name() != "help") {
            command_section(out, sub, &path);
        }
        return;
    }
    let usage = c.render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ").trim();
    let _ = writeln!(out, ".SS \"{}\"", esc(usage).replace('"', "\\(dq"));
    if let Some(about) = c.get_long_about().or_else(|| c.get_about()) {
        let _ = writeln!(out, "{}.", prose(about.to_string().trim_end_matches('.')));
    }
    for a in c.get_arguments().filter(|a| shown(a)) {
        out.push_str(&arg_entry(a));
    }
}

/// The exit statuses, as `commands` returns them.
const EXIT_STATUS: [(u8, &str); 14] = [
    (exit::OK, "Success: every check held."),
    (exit::CHECK_FAILED, "The lab runs but a check failed; the report names each failure, cause first. capture: the pings were not answered (but for an address of another VNI, where that is the lesson)."),
    (exit::PARSE, "The command line could not be parsed: an unknown option, a missing argument, or a value out of range; the usage error says which."),
    (exit::USAGE, "The command line cannot be used as it is: a value that cannot be used, such as a workshop pool with no room left or a class that does not fit on its hosts; or a lab it needs and does not name (check --all or down --all without LAB, or several labs running and none named)."),
    (exit::DATA, "The lab file or the host inventory is invalid; each problem is given as file:line:column: field: message."),
    (exit::NOINPUT, "No such lab: the file does not exist, or no lab of that name is running (down of a lab that is not running, or with no lab named when none runs, removes nothing and exits 0, so it can be run twice; but where copies of that lab run, down LAB names them, removes nothing and exits 66: down LAB --all removes them)."),
    (exit::UNAVAILABLE, "A program, libvirtd, a guest, the image or a host of the class is missing or cannot be reached; the message says how to get it."),
    (exit::SOFTWARE, "Any other failure. After an up that failed part-way, vxlab down LAB removes all of it."),
    (exit::TAKEN, "The lab's name is another lab's: its state (a standalone lab and a workshop copy of the same name), named in the message; nothing was created."),
    (exit::TEMPFAIL, "Another vxlab is changing the lab; try again when it is done."),
    (exit::NOPERM, "The command needs root, and says why."),
    (exit::NOT_EXECUTABLE, "exec: the command cannot be run in the guest (not executable), as a shell says it. Otherwise exec returns its command's own status."),
    (exit::NOT_FOUND, "exec: the command is not in the guest, as a shell says it."),
    (exit::INTERRUPTED, "Ctrl-C or SIGTERM stopped up, reset or walk between two steps (vxlab down LAB removes what was made, vxlab up LAB finishes it), or ended the command exec ran in a guest. down answers the first one and goes on to the end; a second ends it."),
];

const ENVIRONMENT: [(&str, &str); 6] = [
    ("VXLAB_STATE_DIR", "Where labs' state is kept and found (default /var/lib/vxlab); --state-dir sets it for one command."),
    ("VXLAB_CACHE_DIR", "Where iproute2 builds for the namespace driver are kept (default /var/cache/vxlab/iproute2)."),
    ("VXLAB_IMAGE_DIR", "The guest image cache of the libvirt driver (default /var/cache/vxlab/images for root, ~/.cache/vxlab/images otherwise)."),
    ("VXLAB_HOSTS", "The host inventory up --count, plan --count and hosts check/prepare place copies on when --hosts does not name one."),
    ("COMPLETE", "Set by the shell code of vxlab completions when it asks vxlab for candidates; not for people."),
    ("PATH", "Where vxlab finds ip, bridge, ping, dot, qemu-img, virsh and ssh."),
];

const FILES: [(&str, &str); 14] = [
    ("/var/lib/vxlab/LAB/state.json", "Every resource the lab created, each recorded before it was created, so down removes all of it."),
    ("/var/lib/vxlab/LAB/lab.yaml", "The copy of the lab file check, down and reset plan from."),
    ("/var/lib/vxlab/LAB/commands-GUEST.log", "Every command vxlab ran in the guest, with the ip it used and its exit status."),
    ("/var/lib/vxlab/LAB/iproute2-GUEST.log", "The output of each stage of an iproute2 build in the guest."),
    ("/var/lib/vxlab/LAB/health.json", "The result of the lab's last check, for status without root."),
    ("/var/lib/vxlab/LAB/web.token", "The secret of the lab's (or copy's) student page for vxlab serve and vxlab sheet (mode 0600); a lab brought up again gets a new one."),
    ("/var/lib/vxlab/instructor.token", "The secret of the instructor's page (mode 0600); it outlives the labs, so the link stays the same from one class to the next. Delete it for a new one."),
    ("/var/cache/vxlab/iproute2/HASH/", "iproute2 builds, one per source and compiler options, reused by later labs."),
    ("/var/cache/vxlab/images/", "Guest images for the libvirt driver (vxlab image build)."),
    ("/run/netns/vxlab-LAB.GUEST", "The namespace of a guest of the netns driver."),
    ("/run/vxlab/host.lock", "Held while one vxlab checks that a bridge, subnet or name is free and takes it."),
    ("/run/vxlab/neighbours.json", "Which running labs need how much room in the kernel's neighbour table and backlog, and the values to restore when the last one goes."),
    ("/run/vxlab/servers/HASH", "The process and address of the vxlab serve that serves a state directory (one per directory): how vxlab sheet finds the URL and a second serve is refused."),
    ("/run/vxlab/rcu_expedited.previous", "While down deletes links: the value of /sys/kernel/rcu_expedited it found, restored afterwards (by the next vxlab if this one is killed)."),
];

const EXAMPLES: [(&str, &str); 15] = [
    (
        "vxlab up labs/two-netns.yaml",
        "Bring the seed lab up on namespaces, check it and show what a student must see.",
    ),
    (
        "vxlab walk labs/two-netns.yaml",
        "Build the lab stage by stage, each change shown under the commands that caused it.",
    ),
    (
        "vxlab show vm-a fdb",
        "vm-a's forwarding database, each entry explained.",
    ),
    (
        "vxlab capture vm-a",
        "vm-a's underlay while it pings its peer: the ARP request to the group, the rest unicast.",
    ),
    (
        "vxlab capture vm-a --to 192.168.43.3",
        "On the two-VNI lab: the pings go out, and nothing crosses to VNI 43.",
    ),
    (
        "vxlab plan labs/two-vm.yaml",
        "Every command, on the host and in each guest, to build the lab by hand.",
    ),
    (
        "vxlab up labs/two-netns.yaml --count 30 --pool 10.100.0.0/16",
        "Thirty copies for a class, each on its own subnet of the pool.",
    ),
    (
        "vxlab check two-netns --all",
        "Check every copy, one line each.",
    ),
    (
        "vxlab graph labs/two-vni.yaml --format svg -o two-vni.svg",
        "The topology for a slide.",
    ),
    (
        "vxlab exec vm-a ip -br addr",
        "Run one command in a guest; its output as it comes, and its exit status.",
    ),
    (
        "vxlab shell vm-b",
        "An interactive shell in vm-b, with the prompt two-netns/vm-b#.",
    ),
    (
        "vxlab reset two-netns-7 vm-a",
        "Return one student's vm-a to the plan and forget what it learned, to redo the lesson.",
    ),
    (
        "vxlab serve --listen 0.0.0.0:8080",
        "The class server: prints the instructor's URL; students reach their copy by its secret link.",
    ),
    (
        "vxlab sheet two-netns --format html > sheet.html",
        "One printable card per student: the copy, its secret link, its guests and addresses.",
    ),
    ("vxlab down two-netns", "Remove everything the lab created."),
];

fn entries<T: std::fmt::Display>(out: &mut String, title: &str, items: &[(T, &str)], code: bool) {
    let _ = writeln!(out, ".SH {title}");
    for (k, v) in items {
        let k = esc(&k.to_string());
        let k = if code { format!("\\fB{k}\\fR") } else { k };
        let _ = writeln!(out, ".TP\n{k}\n{}", esc(v));
    }
}

/// The whole page in roff.
pub fn render(mut cmd: Command) -> String {
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let mut o = String::new();
    let _ = writeln!(o, ".TH VXLAB 1 \"\" \"vxlab {version}\" \"User Commands\"");
    let _ = writeln!(o, ".SH NAME\nvxlab \\- declarative VXLAN teaching labs on network namespaces or libvirt guests");
    let _ = writeln!(o, ".SH SYNOPSIS\n\\fBvxlab\\fR [\\fB\\-\\-state\\-dir\\fR \\fIDIR\\fR] \\fICOMMAND\\fR [\\fIARGUMENTS\\fR]");
    let _ = writeln!(
        o,
        ".SH DESCRIPTION\n{}\n.PP\n{}",
        prose(
            "An instructor writes one lab file; `vxlab up` builds the lab (a host bridge, guests \
             on it, vxlan devices with their addresses), runs the checks, and reports what \
             students must see: the multicast group joined on the underlay (`ip maddr`) and the \
             forwarding database (`bridge fdb show dev vxlan0`), each row explained."
        ),
        prose(
            "LAB is a lab file or a running lab's name, and may be left out where one lab is \
             running. Commands that change the host or read inside guests need root, and say \
             why when run without it."
        )
    );
    let _ = writeln!(o, ".SH OPTIONS");
    for a in cmd.get_arguments().filter(|a| a.get_id() == "state_dir") {
        o.push_str(&arg_entry(a));
    }
    let _ = writeln!(o, ".TP\n\\fB\\-h\\fR, \\fB\\-\\-help\\fR\nHelp for vxlab or, after a command, for that command.\n.TP\n\\fB\\-V\\fR, \\fB\\-\\-version\\fR\nThe version.");
    let _ = writeln!(o, ".SH COMMANDS");
    for sub in cmd.get_subcommands_mut() {
        if sub.get_name() != "help" {
            command_section(&mut o, sub, "vxlab");
        }
    }
    entries(&mut o, "EXIT STATUS", &EXIT_STATUS, false);
    entries(&mut o, "ENVIRONMENT", &ENVIRONMENT, true);
    entries(&mut o, "FILES", &FILES, true);
    entries(&mut o, "EXAMPLES", &EXAMPLES, true);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_requests_cannot_be_smuggled_in_by_text() {
        assert_eq!(esc(".TH x"), "\\&.TH x");
        assert_eq!(esc("a\\b-c"), "a\\eb\\-c");
        assert_eq!(prose("run `vxlab up`"), "run \\fBvxlab up\\fR");
    }

    #[test]
    fn every_exit_status_vxlab_returns_is_documented_once() {
        let mut codes: Vec<u8> = EXIT_STATUS.iter().map(|(c, _)| *c).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), EXIT_STATUS.len());
    }
}
