//! The `vxlab` command line: parses arguments and hands them to [`vxlab::cli::run`].

use std::process::ExitCode;

use clap::Parser;
use vxlab::cli::{self, Cli};
use vxlab::commands;
use vxlab::driver::libvirt::remote;

fn main() -> ExitCode {
    // Output piped into `head` ends quietly, as other command-line tools do.
    // SAFETY: restoring the default SIGPIPE action before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // A shell asking for completions (`COMPLETE=bash vxlab -- …`) is answered and exits here.
    clap_complete::CompleteEnv::with_factory(cli::command)
        .var(cli::COMPLETE_VAR)
        .complete();
    let code = match cli::run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            commands::exit_code(&e)
        }
    };
    if remote::linked() {
        remote::exit_now(code);
    }
    ExitCode::from(code)
}
