//! The command line, defined once: `main.rs` parses it, and the man page and shell completions
//! are generated from it.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands;

/// Declarative VXLAN teaching labs on network namespaces or libvirt guests.
#[derive(Parser)]
#[command(name = "vxlab", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Check a lab file and report every problem with its line and column.
    Validate {
        /// Lab file.
        lab: PathBuf,
    },
    /// Print the exact commands `up` will run in each guest.
    Plan {
        /// Lab file.
        lab: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create the lab (or converge a running one), run its checks and report.
    Up {
        /// Lab file.
        lab: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Workshop mode: run this copy of the lab (`[a-z0-9]`, up to 6) beside the others, with
        /// its own names, bridge and underlay subnet.
        #[arg(long, conflicts_with = "count")]
        instance: Option<String>,
        /// Workshop mode: run N copies of the lab, named 1..N.
        #[arg(long)]
        count: Option<u32>,
        /// Print each guest's stage changes with the seconds since `up` started, and a table
        /// of where the time went.
        #[arg(long, conflicts_with_all = ["count", "instance"])]
        timings: bool,
    },
    /// Build the lab step by step, showing after each step what changed in the kernel and why.
    Walk {
        /// Lab file.
        lab: PathBuf,
        /// Never wait for Enter (it waits between steps only on a terminal anyway).
        #[arg(long)]
        no_pause: bool,
    },
    /// Show a guest's vxlan state as tables, each row kind explained.
    Show {
        /// Lab file or name; may be left out when one lab is running.
        #[arg(long)]
        lab: Option<PathBuf>,
        /// Guest name.
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
        #[arg(long)]
        lab: Option<PathBuf>,
        /// Guest whose underlay is captured and which sends the pings.
        guest: String,
        /// Overlay address to ping; default: the first peer of its first vxlan.
        #[arg(long)]
        to: Option<std::net::IpAddr>,
        /// Echo requests to send.
        #[arg(long, default_value_t = 3)]
        count: u32,
        /// Keep the learned FDB and neighbour entries (by default they are flushed first, so
        /// the capture starts with the flood).
        #[arg(long)]
        keep: bool,
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
        lab: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
        /// Write to FILE instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Re-verify a running lab: devices, group membership, FDB, pings.
    Check {
        /// Lab file or name; may be left out when one lab is running.
        lab: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove everything a lab created, also after a failed `up`.
    Down {
        /// Lab file or name; may be left out when one lab is running.
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
        #[arg(long)]
        lab: Option<PathBuf>,
        /// Guest name.
        guest: String,
    },
    /// Attach to a libvirt guest's serial console.
    Console {
        /// Lab file or name; may be left out when one lab is running.
        #[arg(long)]
        lab: Option<PathBuf>,
        /// Guest name.
        guest: String,
    },
    /// Print shell completions for vxlab (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print vxlab's man page (roff): `vxlab man > vxlab.1; man ./vxlab.1`.
    Man,
    /// Run a command in a guest of a running lab.
    Exec {
        /// Lab file or name; may be left out when one lab is running.
        #[arg(long)]
        lab: Option<PathBuf>,
        /// Guest name.
        guest: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build a small Debian image offline from the host's Debian mirror.
    Build {
        /// Image name in the cache.
        #[arg(default_value = "debian-12")]
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

/// Runs the command line; returns the exit status.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Validate { lab } => commands::validate(&lab),
        Command::Plan { lab, json } => commands::plan(&lab, json),
        Command::Up {
            lab,
            json,
            instance,
            count,
            timings,
        } => match (instance, count) {
            (None, None) => commands::up(&lab, json, timings),
            (instance, count) => commands::up_instances(&lab, json, instance.as_deref(), count),
        },
        Command::Walk { lab, no_pause } => commands::walk(&lab, no_pause),
        Command::Show {
            lab,
            guest,
            what,
            json,
        } => commands::show(lab.as_deref(), &guest, what, json),
        Command::Capture {
            lab,
            guest,
            to,
            count,
            keep,
            pcap,
            json,
        } => commands::capture(
            lab.as_deref(),
            &guest,
            &commands::CaptureOptions {
                to,
                count,
                keep,
                pcap,
                json,
            },
        ),
        Command::Graph {
            lab,
            format,
            output,
        } => commands::graph(&lab, format, output.as_deref()),
        Command::Check { lab, json } => commands::check(lab.as_deref(), json),
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
            guest,
            command,
        } => commands::exec(lab.as_deref(), &guest, &command),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "vxlab", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())?;
            Ok(0)
        }
    }
}
