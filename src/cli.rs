//! The command line, defined once: `main.rs` parses it, and the man page and shell completions
//! are generated from it.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use clap_complete::ArgValueCompleter;

use crate::commands;
use crate::complete;

/// Declarative VXLAN teaching labs on network namespaces or libvirt guests.
#[derive(Parser)]
#[command(name = "vxlab", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
    /// Keep and find labs' state in DIR instead of /var/lib/vxlab (or $VXLAB_STATE_DIR).
    // The variable is read where the state directory is (StateDir::from_env), not by clap: an
    // argument clap takes from the environment shows in every usage line as if typed.
    #[arg(long, global = true, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Check a lab file and report every problem with its line and column.
    Validate {
        /// Lab file.
        #[arg(add = ArgValueCompleter::new(complete::lab_files))]
        lab: PathBuf,
    },
    /// Print the exact commands `up` will run in each guest.
    Plan {
        /// Lab file.
        #[arg(add = ArgValueCompleter::new(complete::lab_files))]
        lab: PathBuf,
        /// Print the plan as JSON.
        #[arg(long, conflicts_with = "hosts")]
        json: bool,
        /// With --hosts: show where N copies (1 to 255) of the lab would run (every host is
        /// reached and surveyed; nothing is created).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=255))]
        count: Option<u32>,
        /// The host inventory (YAML) the copies are placed on; default: $VXLAB_HOSTS.
        #[arg(long, value_name = "FILE", requires = "count")]
        hosts: Option<PathBuf>,
    },
    /// Create the lab, or repair a running one to its plan; run its checks and report.
    Up {
        /// Lab file, or a running lab's name.
        #[arg(add = ArgValueCompleter::new(complete::labs_and_files))]
        lab: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Workshop mode: run this copy of the lab (`[a-z0-9]`, up to 6) beside the others, with
        /// its own names, bridge and underlay subnet.
        #[arg(long, conflicts_with = "count", group = "copies")]
        instance: Option<String>,
        /// Workshop mode: run N copies of the lab (1 to 255), named 1..N.
        #[arg(long, group = "copies", value_parser = clap::value_parser!(u32).range(1..=255))]
        count: Option<u32>,
        /// Workshop mode: take each copy's underlay subnet from this pool (default: the lab
        /// file's `workshop: { pool: … }`, else 10.100.0.0/16, or fd00:100::/48 for IPv6).
        #[arg(long, value_name = "PREFIX", requires = "copies")]
        pool: Option<ipnet::IpNet>,
        /// Print each guest's stage changes with the seconds since vxlab began making the
        /// guests, and a table of where the time went (with copies, each guest named
        /// `COPY/GUEST`).
        #[arg(long)]
        timings: bool,
        /// Workshop mode: place the copies on the hosts of this inventory (YAML), whole
        /// copies to the least-loaded host; default: $VXLAB_HOSTS, else this machine.
        #[arg(long, value_name = "FILE", requires = "copies")]
        hosts: Option<PathBuf>,
    },
    /// The hosts of a class bigger than one machine: check them, or put the image on them.
    Hosts {
        #[command(subcommand)]
        command: HostsCommand,
    },
    /// Build the lab step by step, showing after each step what changed in the kernel and why.
    Walk {
        /// Lab file.
        #[arg(add = ArgValueCompleter::new(complete::lab_files))]
        lab: PathBuf,
        /// Never wait for Enter (it waits between steps only on a terminal anyway).
        #[arg(long)]
        no_pause: bool,
    },
    /// Show a guest's vxlan state as tables, each row kind explained.
    Show {
        /// Lab file or name; may be left out when one lab is running.
        #[arg(long, add = ArgValueCompleter::new(complete::labs_and_files))]
        lab: Option<PathBuf>,
        /// Guest name.
        #[arg(add = ArgValueCompleter::new(complete::guests))]
        guest: String,
        /// What to show; everything when left out.
        what: Option<ShowWhat>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Capture a guest's underlay while it pings a peer, and decode every VXLAN packet.
    Capture {
        /// Lab file or name; may be left out when one lab is running.
        #[arg(long, add = ArgValueCompleter::new(complete::labs_and_files))]
        lab: Option<PathBuf>,
        /// Guest whose underlay is captured and which sends the pings.
        #[arg(add = ArgValueCompleter::new(complete::guests))]
        guest: String,
        /// Overlay address to ping; default: the first peer of its first vxlan.
        #[arg(long)]
        to: Option<std::net::IpAddr>,
        /// Echo requests to send, 1 to 100.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        count: u32,
        /// Keep the learned FDB and neighbour entries (by default they are flushed first, so
        /// the capture starts with the flood).
        #[arg(long)]
        keep: bool,
        /// Show only these frames; by default the lesson's: ARP and ICMP inside VXLAN (what
        /// is hidden is counted).
        #[arg(long, value_enum)]
        only: Option<CaptureOnly>,
        /// Also write the capture to FILE (pcap, for Wireshark).
        #[arg(long, value_name = "FILE")]
        pcap: Option<PathBuf>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Draw the lab's topology: Graphviz DOT, Mermaid, or SVG (through Graphviz's `dot`).
    Graph {
        /// Lab file or name.
        #[arg(add = ArgValueCompleter::new(complete::labs_and_files))]
        lab: PathBuf,
        /// Output format; default: from FILE's extension (.svg, .mmd, .dot), else dot.
        #[arg(long, value_enum)]
        format: Option<GraphFormat>,
        /// Write to FILE instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Re-verify a running lab: devices, group membership, FDB, pings.
    Check {
        /// Lab file or name; may be left out when one lab is running.
        #[arg(add = ArgValueCompleter::new(complete::labs_and_files))]
        lab: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Workshop mode: check every running copy of the lab, one line per copy.
        #[arg(long)]
        all: bool,
    },
    /// Return a running lab (or one guest) to its plan and forget what the VTEPs learned, so the
    /// lesson can be done again; a guest that does not answer is created anew.
    Reset {
        /// Lab file or name (a workshop copy's name resets that copy).
        #[arg(add = ArgValueCompleter::new(complete::labs_and_files))]
        lab: PathBuf,
        /// Only this guest.
        #[arg(add = ArgValueCompleter::new(complete::guests))]
        guest: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove everything a lab created, also after a failed `up`.
    Down {
        /// Lab file or name; may be left out when one lab is running.
        #[arg(add = ArgValueCompleter::new(complete::labs_and_files))]
        lab: Option<PathBuf>,
        /// Workshop mode: remove this copy of the lab.
        #[arg(long, conflicts_with = "all")]
        instance: Option<String>,
        /// Workshop mode: remove every running copy of the lab.
        #[arg(long)]
        all: bool,
    },
    /// List running labs and their health.
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build or list guest images for the libvirt driver.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Open a shell on a libvirt guest over SSH.
    Ssh {
        /// Lab file or name; may be left out when one lab is running.
        #[arg(long, add = ArgValueCompleter::new(complete::vm_labs_and_files))]
        lab: Option<PathBuf>,
        /// Guest name.
        #[arg(add = ArgValueCompleter::new(complete::vm_guests))]
        guest: String,
    },
    /// Attach to a libvirt guest's serial console.
    Console {
        /// Lab file or name; may be left out when one lab is running.
        #[arg(long, add = ArgValueCompleter::new(complete::vm_labs_and_files))]
        lab: Option<PathBuf>,
        /// Guest name.
        #[arg(add = ArgValueCompleter::new(complete::vm_guests))]
        guest: String,
    },
    /// Print the shell code that completes vxlab's commands, running labs, lab files and
    /// guest names: `vxlab completions bash > /etc/bash_completion.d/vxlab` (which bash
    /// reads through the bash-completion package).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print vxlab's man page (roff): `mkdir -p /usr/local/share/man/man1 && vxlab man >
    /// /usr/local/share/man/man1/vxlab.1`.
    Man,
    /// Run a command in a guest of a running lab, its output shown as it comes; exits with
    /// the command's status. `vxlab exec vm-a ip -br a` (no `--` needed).
    Exec {
        /// Lab file or name; may be left out when one lab is running.
        #[arg(long, add = ArgValueCompleter::new(complete::labs_and_files))]
        lab: Option<PathBuf>,
        /// Run it on a pseudo-terminal (for programs that need one, such as `bash` or `top`).
        #[arg(short = 't', long)]
        tty: bool,
        /// Guest name.
        #[arg(add = ArgValueCompleter::new(complete::guests))]
        guest: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Serve the class: the instructor's live page of every running lab, and each student's
    /// page of their own copy (topology, tables, terminals) by its secret link.
    Serve {
        /// Address and port to listen on; other than loopback only when asked for.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Serve HTTPS with this certificate chain (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Terminals one student (one link) may have open at once.
        #[arg(long, default_value_t = 8)]
        terminals: usize,
        /// Close a terminal after this many seconds without input or output.
        #[arg(long, value_name = "SECONDS", default_value_t = 900)]
        idle_timeout: u64,
        /// Read each lab's host firewall fence again after this many seconds without other
        /// news of the lab (a rule deleted on the host shows on the grid by then).
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        fence_every: u64,
    },
    /// Print the access sheet of a lab's running copies: one card per student with their
    /// secret link, guests and addresses, and what to try first.
    Sheet {
        /// Lab file or name (its workshop copies), or a running lab's name.
        #[arg(add = ArgValueCompleter::new(complete::labs_and_files))]
        lab: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = SheetFormatArg::Text)]
        format: SheetFormatArg,
        /// The class server's address as the students reach it; default: the running
        /// `vxlab serve`'s, else http://127.0.0.1:8080.
        #[arg(long)]
        url: Option<String>,
    },
    /// Open a shell in a guest, on a real terminal, with the prompt `lab/guest#`: the same
    /// shell as the class server's browser terminals.
    Shell {
        /// Lab file or name; may be left out when one lab is running.
        #[arg(long, add = ArgValueCompleter::new(complete::labs_and_files))]
        lab: Option<PathBuf>,
        /// Guest name.
        #[arg(add = ArgValueCompleter::new(complete::guests))]
        guest: String,
    },
}

#[derive(Subcommand)]
pub enum HostsCommand {
    /// Connect to every host at once and print a table: libvirt, CPUs, free memory,
    /// accelerator, the image (by checksum), /dev/kvm, ip/tcpdump/qemu-img, and how many
    /// copies of LAB fit.
    Check {
        /// The host inventory (YAML); default: $VXLAB_HOSTS.
        file: Option<PathBuf>,
        /// Count the copies of this lab each host can take, and check its image.
        #[arg(long, add = ArgValueCompleter::new(complete::lab_files))]
        lab: Option<PathBuf>,
        /// Print the hosts as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy the guest image to every host that lacks it (a storage volume upload), and
    /// check its checksum there.
    Prepare {
        /// The host inventory (YAML); default: $VXLAB_HOSTS.
        file: Option<PathBuf>,
        /// Put this lab's image there (default: debian-12).
        #[arg(long, add = ArgValueCompleter::new(complete::lab_files))]
        lab: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build a small Debian image offline from the host's Debian mirror.
    Build {
        /// Image name in the cache.
        #[arg(default_value = crate::lab::defaults::IMAGE)]
        name: String,
    },
    /// List the images in the cache.
    List,
}

/// What `vxlab show` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShowWhat {
    /// The vxlan devices and the underlay interface (`ip -d link`).
    Link,
    /// Multicast groups joined on the underlay (`ip maddr`).
    Maddr,
    /// The vxlan devices' forwarding databases (`bridge fdb`).
    Fdb,
    /// The routing table (`ip route`).
    Route,
}

impl ShowWhat {
    fn section(self) -> crate::views::Section {
        use crate::views::Section;
        match self {
            ShowWhat::Link => Section::Link,
            ShowWhat::Maddr => Section::Maddr,
            ShowWhat::Fdb => Section::Fdb,
            ShowWhat::Route => Section::Route,
        }
    }
}

/// What `vxlab capture --only` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CaptureOnly {
    /// ARP (and IPv6 neighbour discovery) inside VXLAN.
    Arp,
    /// ICMP echo requests and replies inside VXLAN.
    Icmp,
    /// Every VXLAN packet, IPv6 autoconfiguration included.
    Vxlan,
    /// Every frame on the guest's underlay link.
    All,
}

impl CaptureOnly {
    fn only(this: Option<Self>) -> crate::wire::Only {
        use crate::wire::Only;
        match this {
            None => Only::Lesson,
            Some(CaptureOnly::Arp) => Only::Arp,
            Some(CaptureOnly::Icmp) => Only::Icmp,
            Some(CaptureOnly::Vxlan) => Only::Vxlan,
            Some(CaptureOnly::All) => Only::All,
        }
    }
}

/// Formats of `vxlab sheet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SheetFormatArg {
    /// Cards as plain text.
    Text,
    /// `instance,lab,url,guests` with a header row, for mail merge.
    Csv,
    /// A printable page, one card per student.
    Html,
}

impl SheetFormatArg {
    fn format(self) -> commands::SheetFormat {
        match self {
            SheetFormatArg::Text => commands::SheetFormat::Text,
            SheetFormatArg::Csv => commands::SheetFormat::Csv,
            SheetFormatArg::Html => commands::SheetFormat::Html,
        }
    }
}

/// Formats of `vxlab graph`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT.
    Dot,
    /// A Mermaid flowchart (paste into Markdown).
    Mermaid,
    /// SVG, drawn by Graphviz's `dot`.
    Svg,
}

impl GraphFormat {
    fn format(self) -> crate::graph::Format {
        use crate::graph::Format;
        match self {
            GraphFormat::Dot => Format::Dot,
            GraphFormat::Mermaid => Format::Mermaid,
            GraphFormat::Svg => Format::Svg,
        }
    }
}

/// The command line's definition, for completions and the man page.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// The environment variable with which the shell asks vxlab for completions.
pub const COMPLETE_VAR: &str = "COMPLETE";

/// Runs the command line; returns the exit status.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    if let Some(dir) = &cli.state_dir {
        // Every part of vxlab (and the processes it starts) finds the state directory in the
        // environment; set before any thread starts.
        std::env::set_var("VXLAB_STATE_DIR", dir);
    }
    match cli.command {
        Command::Validate { lab } => commands::validate(&lab),
        Command::Plan {
            lab,
            json,
            count,
            hosts,
        } => match count {
            Some(n) => commands::plan_placement(&lab, n, hosts.as_deref()),
            None => commands::plan(&lab, json),
        },
        Command::Hosts {
            command: HostsCommand::Check { file, lab, json },
        } => commands::hosts::check(file.as_deref(), lab.as_deref(), json),
        Command::Hosts {
            command: HostsCommand::Prepare { file, lab },
        } => commands::hosts::prepare(file.as_deref(), lab.as_deref()),
        Command::Up {
            lab,
            json,
            instance,
            count,
            pool,
            timings,
            hosts,
        } => match (instance, count) {
            (None, None) => commands::up(&lab, json, timings),
            (instance, count) => commands::up_instances(
                &lab,
                commands::Copies {
                    instance: instance.as_deref(),
                    count,
                    pool,
                    hosts: hosts.as_deref(),
                },
                json,
                timings,
            ),
        },
        Command::Walk { lab, no_pause } => commands::walk(&lab, no_pause),
        Command::Show {
            lab,
            guest,
            what,
            json,
        } => commands::show(lab.as_deref(), &guest, what.map(ShowWhat::section), json),
        Command::Capture {
            lab,
            guest,
            to,
            count,
            keep,
            only,
            pcap,
            json,
        } => commands::capture(
            lab.as_deref(),
            &guest,
            &commands::CaptureOptions {
                to,
                count,
                keep,
                only: CaptureOnly::only(only),
                pcap,
                json,
            },
        ),
        Command::Graph {
            lab,
            format,
            output,
        } => {
            match crate::graph::Format::choose(format.map(GraphFormat::format), output.as_deref()) {
                Ok(f) => commands::graph(&lab, f, output.as_deref()),
                Err(why) => Err(commands::Usage(why).into()),
            }
        }
        Command::Check { lab, json, all } => commands::check(lab.as_deref(), json, all),
        Command::Reset { lab, guest, json } => commands::reset(&lab, guest.as_deref(), json),
        Command::Down { lab, instance, all } => {
            commands::down_instances(lab.as_deref(), instance.as_deref(), all)
        }
        Command::Status { json } => commands::status(json),
        Command::Image {
            command: ImageCommand::Build { name },
        } => commands::image_build(&name),
        Command::Image {
            command: ImageCommand::List,
        } => commands::image_list(),
        Command::Ssh { lab, guest } => commands::ssh(lab.as_deref(), &guest),
        Command::Console { lab, guest } => commands::console(lab.as_deref(), &guest),
        Command::Exec {
            lab,
            tty,
            guest,
            command,
        } => commands::exec(lab.as_deref(), &guest, &command, tty),
        Command::Shell { lab, guest } => commands::shell(lab.as_deref(), &guest),
        Command::Serve {
            listen,
            tls_cert,
            tls_key,
            terminals,
            idle_timeout,
            fence_every,
        } => commands::serve(&commands::ServeArgs {
            listen,
            tls_cert,
            tls_key,
            terminals,
            idle_secs: idle_timeout,
            fence_secs: fence_every,
        }),
        Command::Sheet { lab, format, url } => {
            commands::sheet(&lab, format.format(), url.as_deref())
        }
        Command::Completions { shell } => {
            let shells = clap_complete::env::Shells::builtins();
            let name = shell.to_string();
            let Some(completer) = shells.completer(&name) else {
                anyhow::bail!("vxlab cannot complete for {name}");
            };
            // The shell then asks `vxlab` (on PATH) for candidates as the user types.
            completer.write_registration(
                COMPLETE_VAR,
                "vxlab",
                "vxlab",
                "vxlab",
                &mut std::io::stdout(),
            )?;
            Ok(0)
        }
        Command::Man => {
            print!("{}", crate::manual::render(command()));
            Ok(0)
        }
    }
}
