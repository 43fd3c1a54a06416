//! Spinlets: customer app processes that start on the first request, stop
//! when idle, and swap releases with zero downtime.
//!
//! This crate owns the app manifest, log capture and the supervisor's
//! lifecycle state machine. How a process is spawned is one trait, so the
//! sandbox slots in without touching the lifecycle.
// `deny`, not `forbid`: the sandbox's syscall module (sandbox/sys.rs) is
// the one place allowed `unsafe`, and says so itself.
#![deny(unsafe_code)]

pub mod logs;
pub mod manifest;
mod ports;
pub mod sandbox;
pub mod spawn;
mod supervisor;

pub use sandbox::{SandboxConfig, SandboxSpawner, SiteSandbox};
pub use spawn::{Launch, PlainSpawner, Spawned, Spawner};
pub use supervisor::{
    AppDial, AppSpec, Candidate, Lease, SecretEnv, SecretEnvFuture, SecretVars, SpinletStatus,
    StartError, State, Supervisor, SupervisorConfig, WakeError,
};
