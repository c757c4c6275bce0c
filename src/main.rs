//! The `vxlab` command line: parses arguments and calls one library function per command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vxlab::commands;

/// Declarative VXLAN teaching labs on network namespaces or libvirt guests.
#[derive(Parser)]
#[command(name = "vxlab", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
enum ImageCommand {
    /// Build a small Debian image offline from the host's Debian mirror.
    Build {
        /// Image name in the cache.
        #[arg(default_value = "debian-12")]
        name: String,
    },
    /// List the images in the cache.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { lab } => commands::validate(&lab),
        Command::Plan { lab, json } => commands::plan(&lab, json),
        Command::Up { lab, json } => commands::up(&lab, json),
        Command::Check { lab, json } => commands::check(lab.as_deref(), json),
        Command::Down { lab } => commands::down(lab.as_deref()),
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
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(commands::exit_code(&e))
        }
    }
}
