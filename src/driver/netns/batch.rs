//! Many `ip` (or `bridge`) commands in one process: `ip -batch -` reads one command per line.
//! A namespace guest's round trip is a process, and a 100-guest lab runs thousands of commands;
//! batching runs of them cuts that to a few processes per guest. Pure: which commands go
//! together (decided from the typed [`GuestCommand`]: its program and what it prints), the
//! batch's input, and how its output splits back into one output per command.

use crate::guest_command::{GuestCommand, Prints, Program};
use crate::host::process::Output;
use crate::iproute2::Tools;

/// A run of commands that one batch process can execute.
#[derive(Debug, PartialEq, Eq)]
pub struct Run<'a> {
    /// The commands, in order.
    pub cmds: &'a [GuestCommand],
    /// Whether it goes as one batch (else one command, run on its own).
    pub batched: bool,
}

/// Words `ip -batch` would read differently from a plain argument: its line parser splits on
/// blanks, and treats quotes, backslashes and `#` specially.
fn batch_safe(word: &str) -> bool {
    !word.is_empty()
        && !word
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '#'))
}

/// The options before the first word of the command (`-j -d` of `ip -j -d link show`): a
/// batch has one set of them, given on its command line.
fn global_options(c: &GuestCommand) -> &[String] {
    let n = c.args.iter().take_while(|a| a.starts_with('-')).count();
    &c.args[..n]
}

/// How a command can be batched: `ip` or `bridge`, and an output that can be told apart from
/// the others' (JSON, one document each) or none at all (a change, with no options of its
/// own); the key is its program and its options.
fn key(c: &GuestCommand) -> Option<(Program, &[String])> {
    if !matches!(c.program, Program::Ip | Program::Bridge) || !c.args.iter().all(|a| batch_safe(a))
    {
        return None;
    }
    let global = global_options(c);
    let fits = match c.prints {
        Prints::Json => true,
        Prints::Nothing => global.is_empty(),
        Prints::Text => false,
    };
    fits.then_some((c.program, global))
}

/// Splits `cmds` into runs: consecutive commands with the same program and global options,
/// batched when there are several.
pub fn runs(cmds: &[GuestCommand]) -> Vec<Run<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < cmds.len() {
        let k = key(&cmds[start]);
        let mut end = start + 1;
        if k.is_some() {
            while end < cmds.len() && key(&cmds[end]) == k {
                end += 1;
            }
        }
        out.push(Run {
            cmds: &cmds[start..end],
            batched: end - start > 1,
        });
        start = end;
    }
    out
}

/// The batch process's argv and its input, for a batched run, with `ip` and `bridge` from
/// `tools`. With `force` it goes on after a command fails; without, it stops there.
pub fn batch_command(run: &[GuestCommand], tools: &Tools, force: bool) -> (Vec<String>, String) {
    let first = &run[0];
    let global = global_options(first);
    let mut argv: Vec<String> = first.argv(tools)[..=global.len()].to_vec();
    if force {
        argv.push("-force".into());
    }
    argv.extend(["-batch".into(), "-".into()]);
    let input = run
        .iter()
        .map(|c| c.args[global.len()..].join(" ") + "\n")
        .collect();
    (argv, input)
}

/// The line numbers (1-based) that `ip -batch` reported as failed, with the error lines that
/// preceded each report.
fn failures(stderr: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in stderr.lines() {
        match line
            .strip_prefix("Command failed -:")
            .and_then(|n| n.trim().parse().ok())
        {
            Some(n) => out.push((n, std::mem::take(&mut pending))),
            None => {
                pending.push_str(line);
                pending.push('\n');
            }
        }
    }
    out
}

/// One output per command of a batched run, from the batch's output. JSON commands get their
/// own JSON value each; a failed command gets status 1 and its error; without `force` the
/// commands after the first failure did not run and get no output.
pub fn split(run: &[GuestCommand], batch: &Output, force: bool) -> Vec<Output> {
    let failed = failures(&batch.stderr);
    let stopped_at = (!force).then(|| failed.first().map(|(n, _)| *n)).flatten();
    let mut values = serde_json::Deserializer::from_str(&batch.stdout)
        .into_iter::<serde_json::Value>()
        .map(|v| v.map(|v| v.to_string()).unwrap_or_default());
    let mut out = Vec::new();
    for (i, _) in run.iter().enumerate() {
        let line = i + 1;
        if stopped_at.is_some_and(|n| line > n) {
            break;
        }
        match failed.iter().find(|(n, _)| *n == line) {
            Some((_, err)) => out.push(Output {
                status: 1,
                stdout: String::new(),
                stderr: err.clone(),
            }),
            None => out.push(Output {
                status: 0,
                stdout: values.next().unwrap_or_default(),
                stderr: String::new(),
            }),
        }
    }
    // The batch failed without saying where (it could not start, or `ip` exited on a bad
    // argument, as it does for a vxlan `dev` that does not exist): every command failed, and
    // the error says it is the batch's, not one command's.
    if !batch.success() && failed.is_empty() {
        let mut stderr = batch.stderr.trim_end().to_string();
        if run.len() > 1 {
            stderr.push_str(&format!(
                " ({} stopped in a batch of {} commands without saying which failed: {})",
                run[0].program.name(),
                run.len(),
                run.iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        return run
            .iter()
            .take(if force { run.len() } else { 1 })
            .map(|_| Output {
                status: batch.status,
                stdout: String::new(),
                stderr: stderr.clone(),
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_command::{self as cmd, read};

    fn lines(cmds: &[GuestCommand]) -> Vec<(usize, bool)> {
        runs(cmds)
            .iter()
            .map(|r| (r.cmds.len(), r.batched))
            .collect()
    }

    #[test]
    fn reads_with_the_same_options_and_changes_go_together() {
        let cmds = vec![
            read::links(true),
            read::addresses(true),
            read::routes(true, true),
            read::fdb(true, "vxlan0"),
            read::fdb(true, "vxlan1"),
            cmd::link_up("eth0"),
            cmd::addr_add("10.0.0.1/24".parse().unwrap(), "eth0"),
            read::links(false),
            cmd::ping("10.0.0.2".parse().unwrap(), 1, None, 1),
        ];
        assert_eq!(
            lines(&cmds),
            [
                (2, true),
                (1, false),
                (2, true),
                (2, true),
                (1, false),
                (1, false)
            ]
        );
        let (a, input) = batch_command(&cmds[..2], &Tools::default(), true);
        assert_eq!(a, ["ip", "-j", "-d", "-force", "-batch", "-"]);
        assert_eq!(input, "link show\naddr show\n");
    }

    #[test]
    fn text_output_and_probes_are_never_batched() {
        // The readiness probes print text (or, from an old `ip`, text where JSON was asked).
        let probes = crate::guest_command::readiness();
        let doubled: Vec<GuestCommand> = probes.iter().chain(&probes).cloned().collect();
        assert!(runs(&doubled).iter().all(|r| !r.batched));
        let text = [read::links(false), read::addresses(false)];
        assert!(runs(&text).iter().all(|r| !r.batched));
    }

    #[test]
    fn a_built_ip_runs_the_batch() {
        let tools = Tools {
            ip: "/opt/vxlab/ip".into(),
            ..Tools::default()
        };
        let cmds = [cmd::link_up("eth0"), cmd::link_up("vxlan0")];
        let (a, input) = batch_command(&cmds, &tools, false);
        assert_eq!(a, ["/opt/vxlab/ip", "-batch", "-"]);
        assert_eq!(input, "link set up eth0\nlink set up vxlan0\n");
    }

    #[test]
    fn words_the_batch_parser_would_split_are_not_batched() {
        let cmds = vec![cmd::link_up("eth0"), cmd::link_up("a b")];
        assert!(runs(&cmds).iter().all(|r| !r.batched));
    }

    #[test]
    fn outputs_split_back_to_their_commands() {
        let run = [
            read::links(true),
            read::groups(true, "nope"),
            read::routes(true, false),
        ];
        let batch = Output {
            status: 1,
            stdout: "[{\"ifname\":\"lo\"}]\n[]\n".into(),
            stderr: "Device \"nope\" does not exist.\nCommand failed -:2\n".into(),
        };
        let outs = split(&run, &batch, true);
        assert_eq!(outs.len(), 3);
        assert_eq!(outs[0].stdout, "[{\"ifname\":\"lo\"}]");
        assert!(!outs[1].success());
        assert!(outs[1].stderr.contains("does not exist"));
        assert_eq!((outs[2].status, outs[2].stdout.as_str()), (0, "[]"));
    }

    #[test]
    fn without_force_nothing_after_the_failure_ran() {
        let run = [cmd::link_up("lo"), cmd::link_up("nope"), cmd::link_up("x")];
        let batch = Output {
            status: 1,
            stdout: String::new(),
            stderr: "Cannot find device \"nope\"\nCommand failed -:2\n".into(),
        };
        let outs = split(&run, &batch, false);
        assert_eq!(outs.len(), 2);
        assert!(outs[0].success() && !outs[1].success());
    }
}
