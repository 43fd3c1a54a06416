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
mod harden_cli;
mod identity_commands;
mod incident_cli;
mod json_log;
mod pack;
mod privacy_cli;
mod sandbox;
mod secrets_cli;
mod serve;
mod shield_cmd;
mod waf_cli;

use clap::Parser;
use std::process::ExitCode;

/// jemalloc instead of glibc's malloc. Measured (docs/BENCHMARKS.md):
/// about 7% less CPU per proxied HTTPS request, and memory this large
/// (Argon2's 19 MiB work area per password hash) is given back to the
/// system as soon as it is freed, where glibc kept it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    // The sandbox's data images are mounted in serve's own mount
    // namespace, so they go away with it; unsharing it needs a process
    // without threads, which is only true here.
    if matches!(cli.command, cli::Command::Serve(_)) && nix::unistd::geteuid().is_root() {
        if let Err(e) = spinlet::sandbox::private_mounts() {
            eprintln!("warning: serve keeps the host's mount namespace: {e}");
        }
    }
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
