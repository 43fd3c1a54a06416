//! The audit log: a durable, queryable, tamper-evident record of every
//! security-relevant act.
//!
//! Events reach it two ways: [`record`] for paths that must fail closed
//! (the caller learns whether the event is on disk), and [`AuditLayer`],
//! which turns every `tracing` event with target `spinforge::audit` into a
//! stored event. Rows are HMAC-chained and checkpoints Ed25519-signed (see
//! [`chain`]); [`verify`] checks both on a stopped data directory. This
//! crate does not decide who may read the log; the hub does.
#![forbid(unsafe_code)]

pub mod chain;
mod config;
mod db;
mod event;
pub mod http;
pub mod keys;
mod layer;
mod owners;
pub mod pii;
mod query;
mod sink;
mod tap;
mod verify;
mod writer;

pub use config::{
    AuditConfig, EdgeOverflow, EmailMode, SinkConfig, SyslogTarget, Unattributed, WebhookSink,
};
pub use db::OpenMode;
pub use event::{
    anonymise_ip, is_secret_key, type_matches, valid_type, Actor, AuditEvent, IpMode, Outcome,
};
pub use layer::{AuditLayer, AUDIT_TARGET};
pub use query::{parse_time, AuditQuery, AuditReader, EventView, Page, TypeFilter};
pub use tap::subscribe;
pub use verify::{verify, Fault, FaultKind, Report};
pub use writer::Auditor;

use std::path::Path;
use std::sync::OnceLock;

/// What can go wrong with the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Our side: the log cannot be written now. Callers on a fail-closed
    /// path refuse the request (503).
    #[error("the audit log cannot be written: {0}")]
    Unavailable(String),
    /// Our side: no audit log is installed in this process.
    #[error("no audit log is running in this process")]
    NotInstalled,
    /// The operator's setup: a key file is missing, unreadable or too open.
    #[error("audit key {path}: {problem}")]
    Key { path: String, problem: String },
    /// The operator's setup: the directory holds no store with an audit
    /// log.
    #[error("{0} holds no SpinForge store with an audit log")]
    NoStore(String),
    /// The client asked for something invalid; `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Our side: the database failed.
    #[error("audit storage: {0}")]
    Storage(#[from] sqlx::Error),
}

impl AuditError {
    pub(crate) fn key(path: &Path, problem: impl std::fmt::Display) -> AuditError {
        AuditError::Key {
            path: path.display().to_string(),
            problem: problem.to_string(),
        }
    }

    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> AuditError {
        AuditError::Invalid {
            field,
            message: message.into(),
        }
    }
}

static INSTALLED: OnceLock<Auditor> = OnceLock::new();

/// Makes `auditor` the process's audit log, for [`record`] and for
/// [`AuditLayer`]. Events the layer saw before this are written now.
/// Returns false if one was installed already (the first one stays).
pub fn install(auditor: Auditor) -> bool {
    let fresh = INSTALLED.set(auditor).is_ok();
    if fresh {
        layer::drain_early_events();
    }
    fresh
}

/// The installed audit log, if any.
pub fn installed() -> Option<&'static Auditor> {
    INSTALLED.get()
}

/// Records `event` and waits until it is durably stored. `Err` means the
/// event is not known to be on disk: a fail-closed caller must refuse the
/// act it describes.
pub async fn record(event: AuditEvent) -> Result<(), AuditError> {
    tap::publish(&event);
    match INSTALLED.get() {
        Some(auditor) => auditor.record(event).await,
        None => Err(AuditError::NotInstalled),
    }
}
