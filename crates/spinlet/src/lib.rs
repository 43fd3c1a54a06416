//! Spinlets: customer app processes that start on the first request, stop
//! when idle, and swap releases with zero downtime.
//!
//! This crate owns the app manifest, log capture and the supervisor's
//! lifecycle state machine. How a process is spawned is one trait, so the
//! sandbox slots in without touching the lifecycle.
#![forbid(unsafe_code)]

pub mod logs;
pub mod manifest;
mod ports;
pub mod spawn;
mod supervisor;

pub use spawn::{Launch, PlainSpawner, Spawner};
pub use supervisor::{
    AppSpec, Candidate, Lease, SpinletStatus, StartError, State, Supervisor, SupervisorConfig,
    WakeError,
};
