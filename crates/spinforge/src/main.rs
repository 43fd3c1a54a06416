//! The `spinforge` binary: `serve` wires the edge, the hub and the store
//! into one process; every other command is a client of the hub's API,
//! except `admin`, which works on a data directory on the host.
#![forbid(unsafe_code)]

mod admin;
mod audit_cli;
mod certs_cmd;
mod cli;
mod client;
mod commands;
mod config;
mod identity_commands;
mod pack;
mod sandbox;
mod serve;
mod shield_cmd;
mod waf_cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The spinlet sandbox re-runs this binary as its helper, which must
    // stay single-threaded: it is dispatched before anything else starts.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == spinlet::sandbox::HELPER_ARG)
    {
        return spinlet::sandbox::helper_main();
    }
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
