//! Many `ip` (or `bridge`) commands in one process: `ip -batch -` reads one command per line.
//! A namespace guest's round trip is a process, and a 100-guest lab runs thousands of commands;
//! batching runs of them cuts that to a few processes per guest. Pure: which commands go
//! together, the batch's input, and how its output splits back into one output per command.

use crate::host::process::Output;

/// A run of commands that one batch process can execute.
#[derive(Debug, PartialEq, Eq)]
pub struct Run<'a> {
    /// The commands, in order.
    pub cmds: &'a [Vec<String>],
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

/// How a command can be batched: its program, its global options, and whether its output can
/// be told apart from the others' (JSON), or it prints nothing (it changes something).
fn key(argv: &[String]) -> Option<(&str, &[String])> {
    let (program, args) = argv.split_first()?;
    let name = program.rsplit('/').next().unwrap_or(program);
    if !matches!(name, "ip" | "bridge") || !args.iter().all(|a| batch_safe(a)) {
        return None;
    }
    let opts = args.iter().take_while(|a| a.starts_with('-')).count();
    let (global, rest) = args.split_at(opts);
    let json = global.iter().any(|o| o == "-j");
    let changes = rest.iter().take(2).any(|w| {
        matches!(
            w.as_str(),
            "add" | "set" | "del" | "append" | "replace" | "flush" | "change"
        )
    });
    (json || (global.is_empty() && changes)).then_some((program.as_str(), global))
}

/// Splits `cmds` into runs: consecutive commands with the same program and global options,
/// batched when there are several.
pub fn runs(cmds: &[Vec<String>]) -> Vec<Run<'_>> {
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

/// The batch process's argv and its input, for a batched run. With `force` it goes on after
/// a command fails; without, it stops there.
pub fn batch_command(run: &[Vec<String>], force: bool) -> (Vec<String>, String) {
    let first = &run[0];
    let opts = first[1..].iter().take_while(|a| a.starts_with('-')).count();
    let mut argv: Vec<String> = first[..=opts].to_vec();
    if force {
        argv.push("-force".into());
    }
    argv.extend(["-batch".into(), "-".into()]);
    let input = run.iter().map(|c| c[1 + opts..].join(" ") + "\n").collect();
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
pub fn split(run: &[Vec<String>], batch: &Output, force: bool) -> Vec<Output> {
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
    // The batch failed without saying where (it could not start, say): every command failed.
    if !batch.success() && failed.is_empty() {
        return run
            .iter()
            .take(if force { run.len() } else { 1 })
            .map(|_| Output {
                status: batch.status,
                stdout: String::new(),
                stderr: batch.stderr.clone(),
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn reads_with_the_same_options_and_changes_go_together() {
        let cmds: Vec<Vec<String>> = [
            "ip -j -d link show",
            "ip -j -d addr show",
            "ip -j -6 route show",
            "bridge -j fdb show dev vxlan0",
            "bridge -j fdb show dev vxlan1",
            "ip link set up eth0",
            "ip addr add 10.0.0.1/24 dev eth0",
            "ip link help",
            "uname -r",
        ]
        .iter()
        .map(|c| argv(c))
        .collect();
        let lens: Vec<(usize, bool)> = runs(&cmds)
            .iter()
            .map(|r| (r.cmds.len(), r.batched))
            .collect();
        assert_eq!(
            lens,
            [
                (2, true),
                (1, false),
                (2, true),
                (2, true),
                (1, false),
                (1, false)
            ]
        );
        let (a, input) = batch_command(&cmds[..2], true);
        assert_eq!(a, ["ip", "-j", "-d", "-force", "-batch", "-"]);
        assert_eq!(input, "link show\naddr show\n");
    }

    #[test]
    fn words_the_batch_parser_would_split_are_not_batched() {
        let cmds = vec![
            argv("ip link set up eth0"),
            vec!["ip".into(), "link".into(), "set".into(), "a b".into()],
        ];
        assert!(runs(&cmds).iter().all(|r| !r.batched));
    }

    #[test]
    fn outputs_split_back_to_their_commands() {
        let run: Vec<Vec<String>> = [
            "ip -j link show",
            "ip -j link show dev nope",
            "ip -j route show",
        ]
        .iter()
        .map(|c| argv(c))
        .collect();
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
        let run: Vec<Vec<String>> = [
            "ip link set up lo",
            "ip link set up nope",
            "ip link set up x",
        ]
        .iter()
        .map(|c| argv(c))
        .collect();
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
