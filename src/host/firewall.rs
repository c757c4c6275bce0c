//! The fence around a lab's bridge. The bridge carries the lab's gateway address, so without
//! it a student, root in their guest, could open connections to the host's own services over
//! the underlay (its sshd, a class server on 0.0.0.0), and, on a host that forwards, route
//! through the host into another copy's underlay and send frames into that copy's VXLAN.
//!
//! The fence, per address family, in the host's INPUT and FORWARD chains, each rule marked
//! with the lab's name in a comment:
//! - from the bridge to the host, only what answers the host's own connections (vxlab's SSH
//!   to a VM, its pings) gets in; and on IPv6 the neighbour discovery that lets a guest
//!   answer at all;
//! - nothing is routed into or out of the bridge. Frames between the lab's guests are bridged,
//!   not routed; where `br_netfilter` passes them through FORWARD all the same, they come in
//!   and go out on the bridge, which the rules leave alone.
//!
//! The rules are built here, pure, and run by `iptables`/`ip6tables` at the edge: on this
//! machine by [`local`], on a class's other host over its SSH connection.

use std::io;

use super::process;
pub use crate::observe::FenceSeen;

/// One rule of the fence: the program, the chain, and the match and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `iptables` or `ip6tables`.
    pub program: &'static str,
    /// `INPUT` or `FORWARD`.
    pub chain: &'static str,
    /// The rule's words after the chain.
    pub spec: Vec<String>,
}

impl Rule {
    /// The command that does `op` (`-C` checks, `-I` inserts at the top, `-D` deletes).
    pub fn argv(&self, op: &str) -> Vec<String> {
        let mut v = vec![
            self.program.to_string(),
            "-w".to_string(),
            op.to_string(),
            self.chain.to_string(),
        ];
        v.extend(self.spec.iter().cloned());
        v
    }
}

/// The fence of lab `lab`'s bridge `bridge`, top rule first; `ipv6`: the host has IPv6 (a
/// kernel booted with `ipv6.disable=1` has no ip6tables to run).
///
/// The guests' host ends (veths, taps: `plan::host_link_prefix`, matched with iptables'
/// `+` wildcard) are fenced the same way: a host end taken off the bridge by hand still
/// reaches the host's stack, which answers for every one of its addresses on any link.
/// Frames bridged between guests never match them: where br_netfilter passes bridged frames
/// through FORWARD, their input and output device is the bridge.
pub fn fence(bridge: &str, lab: &str, ipv6: bool) -> Vec<Rule> {
    let mark = format!("vxlab: {lab}");
    let rule = |program: &'static str, chain: &'static str, w: &[&str]| {
        let mut spec: Vec<String> = w.iter().map(|s| s.to_string()).collect();
        spec.extend(["-m", "comment", "--comment", &mark].map(String::from));
        Rule {
            program,
            chain,
            spec,
        }
    };
    let ends = format!("{}-+", crate::plan::host_link_prefix(lab));
    let answers = ["-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED"];
    let families: &[&'static str] = if ipv6 {
        &["iptables", "ip6tables"]
    } else {
        &["iptables"]
    };
    let mut out = Vec::new();
    for &program in families {
        for link in [bridge, ends.as_str()] {
            if program == "ip6tables" && link == bridge {
                for kind in ["neighbour-solicitation", "neighbour-advertisement"] {
                    let w = ["-i", link, "-p", "ipv6-icmp", "--icmpv6-type", kind];
                    out.push(rule(
                        program,
                        "INPUT",
                        &[&w[..], &["-j", "ACCEPT"]].concat(),
                    ));
                }
            }
            out.push(rule(
                program,
                "INPUT",
                &[&["-i", link][..], &answers, &["-j", "DROP"]].concat(),
            ));
            out.push(rule(
                program,
                "FORWARD",
                &["-i", link, "!", "-o", link, "-j", "DROP"],
            ));
            out.push(rule(
                program,
                "FORWARD",
                &["-o", link, "!", "-i", link, "-j", "DROP"],
            ));
        }
    }
    out
}

/// Whether this machine has IPv6 (else its fences are IPv4 only).
pub fn host_has_ipv6() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// The commands that put `rules` in place by hand, in order: each inserted at the top, the
/// last rule first, so that they end up in their order.
pub fn insert_commands(rules: &[Rule]) -> Vec<Vec<String>> {
    rules.iter().rev().map(|r| r.argv("-I")).collect()
}

/// Runs a command on the host the fence is for.
pub type Run<'a> = &'a dyn Fn(&[String]) -> io::Result<process::Output>;

/// Runs `argv` on this machine.
pub fn local(argv: &[String]) -> io::Result<process::Output> {
    process::run(argv, None).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => io::Error::new(
            e.kind(),
            format!(
                "{} is not installed: vxlab fences each lab's bridge off from the host with it \
                 (`apt-get install iptables`)",
                argv[0]
            ),
        ),
        _ => e,
    })
}

/// The error of iptables command `argv` that said `out`.
fn failed(argv: &[String], out: &process::Output) -> io::Error {
    io::Error::other(format!(
        "`{}` failed: {}",
        argv.join(" "),
        out.stderr.trim()
    ))
}

/// Runs `argv`; an exit other than 0 is an error.
fn succeed(run: Run, argv: &[String]) -> io::Result<process::Output> {
    let out = run(argv)?;
    if out.success() {
        Ok(out)
    } else {
        Err(failed(argv, &out))
    }
}

/// Whether `rule` is in place: `-C` exits 0 when it is, 1 when it is not; anything else is
/// iptables failing (a table it cannot load), said as it is.
fn present(run: Run, rule: &Rule) -> io::Result<bool> {
    let argv = rule.argv("-C");
    let out = run(&argv)?;
    match out.status {
        0 => Ok(true),
        1 => Ok(false),
        _ => Err(failed(&argv, &out)),
    }
}

/// How many of `rules` are missing, an accept below a drop of its chain counted as missing
/// (it lets nothing in there); only reads. Where iptables is not installed, none of its
/// rules can be in place.
pub fn missing(run: Run, rules: &[Rule]) -> io::Result<FenceSeen> {
    let mut absent = Vec::new();
    let mut not_installed = Vec::new();
    for r in rules {
        match present(run, r) {
            Ok(true) => {}
            Ok(false) => absent.push(r.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                absent.push(r.clone());
                not_installed.push(r.program);
            }
            Err(e) => return Err(e),
        }
    }
    let installed: Vec<Rule> = rules
        .iter()
        .filter(|r| !not_installed.contains(&r.program))
        .cloned()
        .collect();
    Ok(FenceSeen {
        missing: absent.len() + buried(run, &installed, &absent)?.len(),
        of: rules.len(),
    })
}

/// The accepts of `rules` in place (not in `absent`) below a drop of the fence in their
/// chain, as the chain lists (`-S`) them: an `ensure` stopped part-way, or rules moved by
/// hand.
fn buried<'a>(run: Run, rules: &'a [Rule], absent: &[Rule]) -> io::Result<Vec<&'a Rule>> {
    let mut chains: Vec<(&str, &str)> = rules
        .iter()
        .filter(|r| accepts(r))
        .map(|r| (r.program, r.chain))
        .collect();
    chains.sort();
    chains.dedup();
    let mut out = Vec::new();
    for (program, chain) in chains {
        let argv: Vec<String> = [program, "-w", "-S", chain].map(String::from).to_vec();
        let listed = succeed(run, &argv)?;
        let in_chain = rules
            .iter()
            .filter(|r| r.program == program && r.chain == chain);
        // Each rule ends with its mark, which -S prints quoted (it holds a space).
        let mark = in_chain
            .clone()
            .next()
            .and_then(|r| r.spec.last())
            .map(|m| format!("--comment \"{m}\""))
            .unwrap_or_default();
        let ours: Vec<&str> = listed
            .stdout
            .lines()
            .filter(|l| l.contains(&mark))
            .collect();
        let first_drop = ours.iter().position(|l| l.contains(" -j DROP"));
        let last_accept = ours.iter().rposition(|l| l.contains(" -j ACCEPT"));
        if matches!((first_drop, last_accept), (Some(d), Some(a)) if a > d) {
            out.extend(in_chain.filter(|r| accepts(r) && !absent.contains(r)));
        }
    }
    Ok(out)
}

/// Whether `r` lets packets in (the neighbour discovery of IPv6), rather than dropping.
fn accepts(r: &Rule) -> bool {
    r.spec.windows(2).any(|w| w == ["-j", "ACCEPT"])
}

/// Puts the rules that are missing in place, and accepts found below a drop back above it;
/// returns how many rules were not in effect (missing or buried). A fence already whole is
/// only read.
///
/// Only the order of an accept and the drops below it in its chain matters (the other rules
/// all drop, each on its own match). A repair never opens the fence, not even for a moment:
/// the missing rules go in at the top, in the fence's order; accepts that a drop then sits
/// above (put in now, or by an `ensure` stopped part-way) are moved back above it, one at a
/// time (while one moves, the worst is a neighbour solicitation dropped, never a packet let
/// in). The order is read from the chain each time, so a repair stopped at any point is
/// finished by the next.
pub fn ensure(run: Run, rules: &[Rule]) -> io::Result<usize> {
    let mut missing = Vec::new();
    for r in rules {
        if !present(run, r)? {
            missing.push(r.clone());
        }
    }
    let buried_before = buried(run, rules, &missing)?.len();
    if missing.is_empty() && buried_before == 0 {
        return Ok(0);
    }
    for argv in insert_commands(&missing) {
        succeed(run, &argv)?;
    }
    // Every rule is in place now; which accepts sit below a drop is read again.
    for r in buried(run, rules, &[])?.into_iter().rev() {
        succeed(run, &r.argv("-D"))?;
        succeed(run, &r.argv("-I"))?;
    }
    Ok(missing.len() + buried_before)
}

/// Removes every copy of `rules`; returns how many it removed.
pub fn remove(run: Run, rules: &[Rule]) -> io::Result<usize> {
    let mut n = 0;
    for r in rules {
        // A rule inserted twice (by hand, say) goes twice.
        while present(run, r)? {
            succeed(run, &r.argv("-D"))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// The chains of an iptables held in memory, for `-C`, `-I` (at the top) and `-D` (the
    /// first match), as the real one does them; each rule as its words after the chain.
    #[derive(Default, Clone, PartialEq, Debug)]
    struct Tables(BTreeMap<(String, String), Vec<Vec<String>>>);

    impl Tables {
        fn run(&mut self, argv: &[String]) -> process::Output {
            if argv[2] == "-S" {
                return self.list(&argv[0], &argv[3]);
            }
            let (op, key, spec) = (
                argv[2].as_str(),
                (argv[0].clone(), argv[3].clone()),
                argv[4..].to_vec(),
            );
            let chain = self.0.entry(key).or_default();
            let at = chain.iter().position(|r| *r == spec);
            let status = match (op, at) {
                ("-C", Some(_)) | ("-I", _) | ("-D", Some(_)) => 0,
                _ => 1,
            };
            match (op, at) {
                ("-I", _) => chain.insert(0, spec),
                ("-D", Some(i)) => {
                    chain.remove(i);
                }
                _ => {}
            }
            process::Output {
                status,
                stdout: String::new(),
                stderr: String::new(),
            }
        }

        /// `-S CHAIN` as iptables prints it: the target last, a word with a space quoted.
        fn list(&self, program: &str, chain: &str) -> process::Output {
            let mut stdout = format!("-P {chain} ACCEPT\n");
            for spec in self
                .0
                .get(&(program.to_string(), chain.to_string()))
                .into_iter()
                .flatten()
            {
                let j = spec.iter().position(|w| w == "-j").unwrap();
                let mut words: Vec<String> = spec[..j].to_vec();
                words.extend(spec[j + 2..].iter().cloned());
                words.extend(spec[j..j + 2].iter().cloned());
                let words: Vec<String> = words
                    .into_iter()
                    .map(|w| {
                        if w.contains(' ') {
                            format!("\"{w}\"")
                        } else {
                            w
                        }
                    })
                    .collect();
                stdout.push_str(&format!("-A {chain} {}\n", words.join(" ")));
            }
            process::Output {
                status: 0,
                stdout,
                stderr: String::new(),
            }
        }

        fn has(&self, r: &Rule) -> bool {
            self.0
                .get(&(r.program.to_string(), r.chain.to_string()))
                .is_some_and(|c| c.contains(&r.spec))
        }

        fn index(&self, r: &Rule) -> usize {
            self.0[&(r.program.to_string(), r.chain.to_string())]
                .iter()
                .position(|s| *s == r.spec)
                .unwrap()
        }
    }

    /// A whole fence put up as `up` does, one of the host's own rules in each chain below
    /// it, then the rules of `lost` (bits, in fence order) deleted.
    fn fence_losing(rules: &[Rule], lost: u32) -> Tables {
        let mut t = Tables::default();
        for r in rules {
            t.0.entry((r.program.to_string(), r.chain.to_string()))
                .or_insert_with(|| vec![vec!["-j".into(), "LIBVIRT".into()]]);
        }
        for argv in insert_commands(rules) {
            t.run(&argv);
        }
        for (i, r) in rules.iter().enumerate() {
            if lost & (1 << i) != 0 {
                t.run(&r.argv("-D"));
            }
        }
        t
    }

    /// Every way of losing rules of one chain (the chains are independent), and all.
    fn losses(rules: &[Rule]) -> Vec<u32> {
        let chain_of = |i: usize| (rules[i].program, rules[i].chain);
        let one_chain = |lost: u32| {
            let mut chains = (0..rules.len())
                .filter(|i| lost & (1 << i) != 0)
                .map(chain_of);
            chains.next().is_none_or(|c| chains.all(|d| d == c))
        };
        let all = (1u32 << rules.len()) - 1;
        (0..=all).filter(|l| *l == all || one_chain(*l)).collect()
    }

    /// Runs commands on `tables`, failing every one from the `fail_at`th on; after each, no
    /// drop of `rules` that was in place is gone.
    fn guarded<'a>(
        tables: &'a RefCell<Tables>,
        rules: &'a [Rule],
        fail_at: Option<usize>,
    ) -> impl Fn(&[String]) -> io::Result<process::Output> + 'a {
        let ran = std::cell::Cell::new(0);
        move |argv: &[String]| {
            ran.set(ran.get() + 1);
            if fail_at.is_some_and(|k| ran.get() > k) {
                return Err(io::Error::other("killed"));
            }
            let mut t = tables.borrow_mut();
            let drops: Vec<&Rule> = rules.iter().filter(|r| !accepts(r)).collect();
            let before: Vec<bool> = drops.iter().map(|r| t.has(r)).collect();
            let out = t.run(argv);
            for (r, was) in drops.iter().zip(before) {
                assert!(!was || t.has(r), "{argv:?} opened {r:?}");
            }
            Ok(out)
        }
    }

    /// Each rule there once, each accept above every drop of its chain, the host's own rule
    /// below them all.
    fn assert_whole(t: &Tables, rules: &[Rule], case: &str) {
        for r in rules {
            let chain = &t.0[&(r.program.to_string(), r.chain.to_string())];
            assert_eq!(chain.iter().filter(|s| **s == r.spec).count(), 1, "{case}");
            assert_eq!(chain.last().unwrap(), &["-j", "LIBVIRT"], "{case}");
            if accepts(r) {
                for d in rules
                    .iter()
                    .filter(|d| !accepts(d) && d.program == r.program && d.chain == r.chain)
                {
                    assert!(t.index(r) < t.index(d), "{case}: {r:?} below {d:?}");
                }
            }
        }
    }

    #[test]
    fn a_repair_puts_back_what_is_missing_in_order_and_never_opens_the_fence() {
        let rules = fence("vxbr-seed", "two-netns", true);
        for lost in losses(&rules) {
            let tables = RefCell::new(fence_losing(&rules, lost));
            let run = guarded(&tables, &rules, None);
            assert_eq!(
                missing(&run, &rules).unwrap().missing,
                lost.count_ones() as usize
            );
            let added = ensure(&run, &rules).unwrap();
            assert_eq!(added, lost.count_ones() as usize);
            assert_eq!(missing(&run, &rules).unwrap().missing, 0);
            assert_whole(&tables.borrow(), &rules, &format!("lost {lost:#b}"));
        }
    }

    #[test]
    fn without_ip6tables_its_rules_count_as_missing() {
        let rules = fence("vxbr-seed", "two-netns", true);
        let tables = RefCell::new(fence_losing(&rules, 0));
        let run = |argv: &[String]| -> io::Result<process::Output> {
            if argv[0] == "ip6tables" {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no ip6tables"));
            }
            Ok(tables.borrow_mut().run(argv))
        };
        let v6 = rules.iter().filter(|r| r.program == "ip6tables").count();
        assert_eq!(missing(&run, &rules).unwrap().missing, v6);
    }

    #[test]
    fn a_repair_stopped_at_any_command_is_finished_by_the_next_and_check_sees_it() {
        let rules = fence("vxbr-seed", "two-netns", true);
        for lost in losses(&rules) {
            for k in 0.. {
                let tables = RefCell::new(fence_losing(&rules, lost));
                let stopped = ensure(&guarded(&tables, &rules, Some(k)), &rules).is_err();
                let run = guarded(&tables, &rules, None);
                let seen = missing(&run, &rules).unwrap().missing;
                if !stopped {
                    break;
                }
                // What is not in effect is counted by check and put right by the next
                // repair, which says how much it was.
                assert_eq!(ensure(&run, &rules).unwrap(), seen, "lost {lost:#b}, k {k}");
                assert_whole(&tables.borrow(), &rules, &format!("lost {lost:#b}, k {k}"));
            }
        }
        // Accepts moved below their drop by hand are not in effect: counted, and moved back.
        let tables = RefCell::new(fence_losing(&rules, 0));
        let run = guarded(&tables, &rules, None);
        let buried: Vec<&Rule> = rules.iter().filter(|r| accepts(r)).collect();
        for r in &buried {
            tables.borrow_mut().run(&r.argv("-D"));
            let mut t = tables.borrow_mut();
            let chain = t.0.get_mut(&(r.program.into(), r.chain.into())).unwrap();
            let at = chain.len() - 1;
            chain.insert(at, r.spec.clone());
        }
        assert_eq!(missing(&run, &rules).unwrap().missing, buried.len());
        assert_eq!(ensure(&run, &rules).unwrap(), buried.len());
        assert_whole(&tables.borrow(), &rules, "moved by hand");
    }

    #[test]
    fn the_fence_lets_in_only_answers_and_routes_nothing_through() {
        let rules = fence("vxbr-seed", "two-netns", true);
        let ends = format!("{}-+", crate::plan::host_link_prefix("two-netns"));
        let lines: Vec<String> = insert_commands(&rules)
            .iter()
            .map(|a| a.join(" "))
            .collect();
        let v4: Vec<String> = lines
            .iter()
            .filter(|l| l.starts_with("iptables "))
            .cloned()
            .collect();
        let mark = "-m comment --comment vxlab: two-netns";
        assert_eq!(
            v4,
            [
                format!("iptables -w -I FORWARD -o {ends} ! -i {ends} -j DROP {mark}"),
                format!("iptables -w -I FORWARD -i {ends} ! -o {ends} -j DROP {mark}"),
                format!(
                    "iptables -w -I INPUT -i {ends} -m conntrack ! --ctstate ESTABLISHED,RELATED \
                     -j DROP {mark}"
                ),
                format!("iptables -w -I FORWARD -o vxbr-seed ! -i vxbr-seed -j DROP {mark}"),
                format!("iptables -w -I FORWARD -i vxbr-seed ! -o vxbr-seed -j DROP {mark}"),
                format!(
                    "iptables -w -I INPUT -i vxbr-seed -m conntrack ! --ctstate \
                     ESTABLISHED,RELATED -j DROP {mark}"
                ),
            ]
        );
        // On IPv6 the accepts of neighbour discovery on the bridge are inserted after its
        // drop, so they come before it.
        let v6: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("ip6tables ") && l.contains(" INPUT -i vxbr-seed "))
            .collect();
        assert_eq!(v6.len(), 3);
        assert!(v6[0].contains("-j DROP"));
        assert!(v6[2].contains("neighbour-solicitation -j ACCEPT"));
        assert_eq!(rules.len(), 14);
        // No IPv6 on the host: no ip6tables to run.
        let v4_only = fence("vxbr-seed", "two-netns", false);
        assert!(v4_only.iter().all(|r| r.program == "iptables"));
        assert_eq!(v4_only.len(), 6);
        // The comment is one word of argv, never split or quoted by a shell.
        assert!(rules
            .iter()
            .all(|r| r.spec.last().unwrap() == "vxlab: two-netns"));
    }
}
