//! A read-only tap on audit events as they are recorded, for in-process
//! consumers that react to them (incident detection). Subscribers get a
//! copy of each event before the log anonymises its client IP, so they
//! must not store it elsewhere unredacted. A slow subscriber loses the
//! oldest events, never slows the log.

use crate::event::AuditEvent;
use std::sync::OnceLock;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it loses the oldest.
const TAP_CAPACITY: usize = 4096;

static TAP: OnceLock<broadcast::Sender<AuditEvent>> = OnceLock::new();

/// A receiver of every audit event recorded from now on, through
/// [`crate::record`] or the `tracing` layer.
pub fn subscribe() -> broadcast::Receiver<AuditEvent> {
    TAP.get_or_init(|| broadcast::channel(TAP_CAPACITY).0)
        .subscribe()
}

/// Hands a copy of `event` to the subscribers, if there are any.
pub(crate) fn publish(event: &AuditEvent) {
    if let Some(tap) = TAP.get() {
        if tap.receiver_count() > 0 {
            let _ = tap.send(event.clone());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_get_each_event_published_after_they_subscribe() {
        publish(&AuditEvent::new("tap_test.before"));
        let mut rx = subscribe();
        publish(&AuditEvent::new("tap_test.after").resource("site:a.example"));
        // Other tests of this crate may publish meanwhile: look at ours.
        let mut ours = Vec::new();
        while let Ok(event) = rx.try_recv() {
            if event.kind.starts_with("tap_test.") {
                ours.push(event);
            }
        }
        assert_eq!(ours.len(), 1, "{ours:?}");
        assert_eq!(ours[0].kind, "tap_test.after");
        assert_eq!(ours[0].resource.as_deref(), Some("site:a.example"));
    }
}
