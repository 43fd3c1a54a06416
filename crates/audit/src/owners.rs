//! Whose personal data each field of an event is, so that every field is
//! sealed under the key of the person it names (see [`crate::pii`]).
//!
//! - The client IP and user agent belong to the actor: the acting user,
//!   else the address the event is about (a failed login).
//! - `target_*` metadata (an admin creating or editing someone) belongs
//!   to the target: `target_user`, else `target_email`.
//! - Any metadata value holding an e-mail address also belongs to that
//!   address: to the user who has it now, else to the address itself.
//!   A value naming several people is sealed once per person, so erasing
//!   any of them hides it.
//!
//! This module only decides; sealing and opening are in [`crate::pii`].

use crate::event::AuditEvent;
use crate::pii::{is_personal_key, Vault};
use serde_json::Value;
use sqlx::{QueryBuilder, Row as _, Sqlite, SqlitePool};
use std::collections::{BTreeSet, HashMap};

/// Most distinct people one metadata value is sealed for; a value naming
/// more stays readable only while the first ones are not erased (the
/// rest are still sealed by the outer layers).
pub(crate) const MAX_LAYERS: usize = 4;

/// Addresses per lookup statement, far below SQLite's parameter cap.
const LOOKUP_CHUNK: usize = 500;

/// Whose key seals each personal field of one event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Owner of the client IP and user agent; `None`: nobody known.
    pub(crate) actor: Option<String>,
    /// Metadata key → the subjects that seal it, innermost first.
    pub(crate) fields: Vec<(String, Vec<String>)>,
}

impl Plan {
    /// Every subject the plan needs a key for.
    pub(crate) fn subjects(&self) -> impl Iterator<Item = &String> {
        self.actor
            .iter()
            .chain(self.fields.iter().flat_map(|(_, s)| s.iter()))
    }
}

/// The e-mail addresses in `text`, lower-cased: tokens with one `@`, a
/// local part and a dotted domain.
pub(crate) fn addresses_in(text: &str) -> Vec<String> {
    if !text.contains('@') {
        return Vec::new();
    }
    let mut out = Vec::new();
    let separators = |c: char| c.is_whitespace() || "<>()[]{},;:\"'`|=".contains(c);
    for token in text.split(separators) {
        let token = token.trim_matches(|c: char| c == '.' || c == '!' || c == '?');
        let Some((local, domain)) = token.split_once('@') else {
            continue;
        };
        let plausible = !local.is_empty()
            && !local.contains('*')
            && domain.contains('.')
            && !domain.contains('@')
            && !domain.starts_with('.')
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
        if plausible {
            let address = token.to_lowercase();
            if !out.contains(&address) {
                out.push(address);
            }
        }
    }
    out
}

/// Every address named anywhere in the metadata of `events`.
pub(crate) fn addresses_of<'a>(
    events: impl IntoIterator<Item = &'a AuditEvent>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for event in events {
        for value in event.metadata.values() {
            if let Value::String(text) = value {
                out.extend(addresses_in(text));
            }
        }
    }
    out
}

/// The subject of each address: `user:ID` of the user who has it now,
/// else the address's own subject. A failed lookup (no users table, as
/// in a bare audit store) falls back to the address subjects: still
/// sealed, still erasable by address.
pub(crate) async fn resolve(
    vault: &Vault,
    pool: &SqlitePool,
    addresses: BTreeSet<String>,
) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    let list: Vec<String> = addresses.iter().cloned().collect();
    for chunk in list.chunks(LOOKUP_CHUNK) {
        // `users.email` is COLLATE NOCASE, and so is this comparison.
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT id, email FROM users WHERE email IN (");
        let mut names = sql.separated(", ");
        for address in chunk {
            names.push_bind(address.as_str());
        }
        sql.push(")");
        match sql.build().fetch_all(pool).await {
            Ok(rows) => {
                for row in rows {
                    let (Ok(id), Ok(email)) = (
                        row.try_get::<i64, _>("id"),
                        row.try_get::<String, _>("email"),
                    ) else {
                        continue;
                    };
                    out.insert(email.to_lowercase(), format!("user:{id}"));
                }
            }
            Err(e) => tracing::debug!(error = %e, "audit: addresses not matched to users"),
        }
    }
    for address in addresses {
        if let std::collections::hash_map::Entry::Vacant(slot) = out.entry(address) {
            let subject = vault.email_subject(slot.key());
            slot.insert(subject);
        }
    }
    out
}

/// The plan of `event`, with `resolved` from [`resolve`] over its
/// addresses.
// Limitation: a name in free text (an incident title) is not recognised,
// only names under personal keys (a per-user list of names to look for
// would lift it); and an address that was Bob's neither when written nor
// at erasure stays under its own subject (an address history per user
// would lift it).
pub(crate) fn plan(event: &AuditEvent, resolved: &HashMap<String, String>) -> Plan {
    let of_address = |text: &str| -> Option<String> {
        addresses_in(text)
            .first()
            .and_then(|a| resolved.get(a).cloned())
    };
    let meta_text = |key: &str| event.metadata.get(key).and_then(Value::as_str);

    let actor = event
        .actor
        .user_id
        .map(|id| format!("user:{id}"))
        .or_else(|| {
            ["subject", "email", "user_email"]
                .iter()
                .find_map(|key| of_address(meta_text(key)?))
        });
    let target = match event.metadata.get("target_user") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .map(|id| format!("user:{id}"))
    .or_else(|| of_address(meta_text("target_email")?));

    let mut fields = Vec::new();
    for (key, value) in &event.metadata {
        let Value::String(text) = value else { continue };
        if text.is_empty() {
            continue;
        }
        let mut subjects: Vec<String> = Vec::new();
        let mut add = |s: &String| {
            if !subjects.contains(s) && subjects.len() < MAX_LAYERS {
                subjects.push(s.clone());
            }
        };
        if is_personal_key(key) {
            // A name has no address to tell whose it is: the target's if
            // the key says so, else the actor's.
            let owner = if key.starts_with("target_") {
                &target
            } else {
                &actor
            };
            if let Some(owner) = owner {
                add(owner);
            }
        }
        for address in addresses_in(text) {
            if let Some(subject) = resolved.get(&address) {
                add(subject);
            }
        }
        if !subjects.is_empty() {
            fields.push((key.clone(), subjects));
        }
    }
    Plan { actor, fields }
}

/// The first product token of a user agent (`curl/8.5.0` of
/// `curl/8.5.0 (x86_64-pc-linux-gnu)`), which names the software but
/// little of the person: what an event with no known person keeps.
pub(crate) fn product_token(agent: &str) -> String {
    agent
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .chars()
        .take(64)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn resolved() -> HashMap<String, String> {
        [
            ("bob@example.org", "user:2"),
            ("stranger@example.net", "email:ab"),
        ]
        .map(|(a, s)| (a.to_owned(), s.to_owned()))
        .into()
    }

    #[test]
    fn addresses_are_found_inside_text_and_lower_cased() {
        assert_eq!(
            addresses_in("Brute-force login: account Bob@Example.org locked."),
            ["bob@example.org"]
        );
        assert_eq!(addresses_in("<a@b.io>, c@d.io"), ["a@b.io", "c@d.io"]);
        assert!(addresses_in("b***@example.org").is_empty(), "masked");
        assert!(addresses_in("user@localhost").is_empty());
        assert!(addresses_in("no address here").is_empty());
    }

    #[test]
    fn an_admins_edit_seals_the_targets_fields_under_the_target() {
        let event = AuditEvent::new("user.updated")
            .user(1)
            .meta("target_user", 2)
            .meta("target_email", "bob@example.org")
            .meta("target_name", "Bob Builder")
            .meta("role", "developer");
        let plan = plan(&event, &resolved());
        assert_eq!(plan.actor.as_deref(), Some("user:1"));
        let mut fields = plan.fields.clone();
        fields.sort();
        assert_eq!(
            fields,
            [
                ("target_email".to_owned(), vec!["user:2".to_owned()]),
                ("target_name".to_owned(), vec!["user:2".to_owned()]),
            ]
        );
    }

    #[test]
    fn an_address_anywhere_is_sealed_for_its_owner_and_the_actor_keeps_its_own() {
        let event = AuditEvent::new("incident.contain")
            .user(1)
            .meta("target", "bob@example.org")
            .meta("message", "bob@example.org and stranger@example.net")
            .meta("name", "Admin Person");
        let plan = plan(&event, &resolved());
        let get = |k: &str| {
            plan.fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, s)| s.clone())
        };
        assert_eq!(get("target"), Some(vec!["user:2".to_owned()]));
        assert_eq!(
            get("message"),
            Some(vec!["user:2".to_owned(), "email:ab".to_owned()])
        );
        assert_eq!(get("name"), Some(vec!["user:1".to_owned()]));
    }

    #[test]
    fn a_failed_login_belongs_to_the_address_tried() {
        let event = AuditEvent::new("auth.failed").meta("subject", "stranger@example.net");
        let plan = plan(&event, &resolved());
        assert_eq!(plan.actor.as_deref(), Some("email:ab"));
        let event = AuditEvent::new("auth.token_rejected").meta("path", "/api/v1/sites");
        assert_eq!(plan_of(&event), Plan::default());
    }

    fn plan_of(event: &AuditEvent) -> Plan {
        plan(event, &resolved())
    }

    #[test]
    fn only_the_product_of_a_user_agent_is_kept() {
        assert_eq!(
            product_token("Mozilla/5.0 (X11; Linux x86_64) Firefox/120"),
            "Mozilla/5.0"
        );
        assert_eq!(product_token(""), "");
    }
}
