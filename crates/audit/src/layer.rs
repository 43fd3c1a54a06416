//! The bridge from `tracing`: every event with target `spinforge::audit`
//! becomes a stored audit event, so code that logs its security events
//! that way needs no change to make them durable. Inside an API request
//! (see [`crate::http`]) the event also takes the request's id, client IP
//! and user agent, and the request waits for it to be committed.

use crate::event::{AuditEvent, Outcome};
use crate::http;
use std::net::IpAddr;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// The target that marks a `tracing` event as an audit event.
pub const AUDIT_TARGET: &str = "spinforge::audit";

/// Most events kept from before the log is installed.
const EARLY_MAX: usize = 1024;

static EARLY: Mutex<Vec<AuditEvent>> = Mutex::new(Vec::new());

/// A `tracing_subscriber` layer that stores audit events. Add it beside
/// the formatting layer with its own filter, so a quiet log level never
/// hides audit events from it: [`AuditLayer::filter`].
#[derive(Debug, Default, Clone, Copy)]
pub struct AuditLayer;

impl AuditLayer {
    /// A per-layer filter that passes audit events at every level.
    pub fn filter() -> tracing_subscriber::filter::Targets {
        tracing_subscriber::filter::Targets::new().with_target(AUDIT_TARGET, tracing::Level::TRACE)
    }
}

impl<S: tracing::Subscriber> Layer<S> for AuditLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != AUDIT_TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut audit = fields.into_event();
        let scope = http::current();
        if let Some(scope) = &scope {
            scope.fill(&mut audit);
        }
        crate::tap::publish(&audit);
        match crate::installed() {
            Some(auditor) => match &scope {
                Some(scope) => {
                    let (ack, done) = tokio::sync::oneshot::channel();
                    scope.wait_for(done);
                    let _ = auditor.submit(audit, Some(ack));
                }
                None => {
                    let _ = auditor.submit(audit, None);
                }
            },
            None => {
                let mut early = EARLY.lock().unwrap_or_else(|p| p.into_inner());
                if early.len() < EARLY_MAX {
                    early.push(audit);
                }
            }
        }
    }
}

/// Hands the events seen before [`crate::install`] to the installed log.
pub(crate) fn drain_early_events() {
    let early = std::mem::take(&mut *EARLY.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(auditor) = crate::installed() {
        for event in early {
            let _ = auditor.submit(event, None);
        }
    }
}

/// Collects an event's fields. Known names fill the typed parts; the
/// rest go to the metadata, where secret-looking keys are redacted.
#[derive(Default)]
struct Fields {
    kind: Option<String>,
    event: Option<AuditEvent>,
}

impl Fields {
    fn event(&mut self) -> &mut AuditEvent {
        self.event
            .get_or_insert_with(|| AuditEvent::new("audit.untyped"))
    }

    fn into_event(mut self) -> AuditEvent {
        let kind = self.kind.take();
        let mut event = self
            .event
            .take()
            .unwrap_or_else(|| AuditEvent::new("audit.untyped"));
        if let Some(kind) = kind {
            let explicit = event.metadata.remove("__result");
            event.result = explicit
                .as_ref()
                .and_then(|v| v.as_str())
                .and_then(Outcome::parse)
                .unwrap_or_else(|| Outcome::implied_by(&kind));
            event.kind = kind;
        }
        event.metadata.remove("__result");
        event
    }

    fn put(&mut self, name: &str, text: String, number: Option<i64>) {
        if name == "event" {
            self.kind = Some(text);
            return;
        }
        let event = self.event();
        match name {
            "user" | "user_id" | "actor" => match number.or_else(|| text.parse().ok()) {
                Some(id) => event.actor.user_id = Some(id),
                None => {
                    event.metadata.insert(name.into(), text.into());
                }
            },
            "role" => event.actor.role = Some(text),
            // `api_key` carries the key's id (never its secret part).
            "api_key_id" | "key_id" | "api_key" => {
                event.actor.api_key_id = (!text.is_empty()).then_some(text);
            }
            // An empty address means "none" (an emitter's optional one).
            "client_ip" | "ip" if text.is_empty() => {}
            "client_ip" | "ip" => match text.parse::<IpAddr>() {
                Ok(ip) => event.client_ip = Some(ip),
                Err(_) => {
                    event.metadata.insert(name.into(), text.into());
                }
            },
            "user_agent" => event.user_agent = Some(text),
            "resource" => event.resource = Some(text),
            "site" if event.resource.is_none() => {
                event.resource = Some(format!("site:{text}"));
                event.metadata.insert("site".into(), text.into());
            }
            "action" => event.action = Some(text),
            "result" | "outcome" => {
                event.metadata.insert("__result".into(), text.into());
            }
            "request_id" => event.request_id = Some(text),
            "session_id" | "session" => event.session_id = Some(text),
            "customer" => event.customer = (!text.is_empty()).then_some(text),
            _ => {
                let value = match number {
                    Some(n) => serde_json::Value::from(n),
                    None => serde_json::Value::from(text),
                };
                event.metadata.insert(name.into(), value);
            }
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        // `?text` fields arrive quoted; the quotes are not part of it.
        let text = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Some(inner) if field.name() != "message" => inner.to_owned(),
            _ => text,
        };
        self.put(field.name(), text, None);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), value.to_owned(), None);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), value.to_string(), Some(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), value.to_string(), i64::try_from(value).ok());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "event" {
            return;
        }
        self.event()
            .metadata
            .insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Collects what the visitor builds, without any log installed.
    fn capture(emit: impl FnOnce()) -> AuditEvent {
        EARLY.lock().unwrap().clear();
        let subscriber = tracing_subscriber::registry().with(AuditLayer);
        tracing::subscriber::with_default(subscriber, emit);
        EARLY.lock().unwrap().pop().expect("one event captured")
    }

    #[test]
    fn known_fields_fill_the_typed_parts() {
        let domain = String::from("shop.example");
        let event = capture(|| {
            tracing::info!(target: "spinforge::audit", event = "site.deploy", user = 7,
                site = ?domain, result = "failure", release = "r1", "deployed");
        });
        assert_eq!(event.kind, "site.deploy");
        assert_eq!(event.actor.user_id, Some(7));
        assert_eq!(event.resource.as_deref(), Some("site:shop.example"));
        assert_eq!(event.result, Outcome::Failure);
        assert_eq!(event.metadata["release"], "r1");
        assert_eq!(event.metadata["message"], "deployed");
        assert!(!event.metadata.contains_key("__result"));
    }

    #[test]
    fn the_result_follows_the_type_when_not_given() {
        let event = capture(|| {
            tracing::info!(target: "spinforge::audit", event = "auth.failed", "login failed");
        });
        assert_eq!(event.result, Outcome::Failure);
    }
}
