//! The writer behind `--log-format json`. `tracing-subscriber`'s JSON
//! formatter hands over one event object per line; this writer masks the
//! secret values the process knows inside its strings, after JSON
//! unescaping (so a value holding `"` or `\` is caught as well as a plain
//! one), and with `--log-pii masked` shows personal fields as the text log
//! does. Whatever it changes, each line stays one valid JSON object.

use serde_json::Value;
use std::borrow::Cow;
use std::io::Write;

/// Passes JSON log lines to `W` with secret values (and, if `pii_masked`,
/// personal data) masked.
pub struct JsonLogWriter<W> {
    inner: W,
    pii_masked: bool,
}

impl<W: Write> JsonLogWriter<W> {
    pub fn new(inner: W, pii_masked: bool) -> JsonLogWriter<W> {
        JsonLogWriter { inner, pii_masked }
    }
}

impl<W: Write> Write for JsonLogWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => {
                let mut out = String::with_capacity(text.len());
                for line in text.split_inclusive('\n') {
                    let (body, end) = match line.strip_suffix('\n') {
                        Some(body) => (body, "\n"),
                        None => (line, ""),
                    };
                    out.push_str(&mask_line(body, self.pii_masked));
                    out.push_str(end);
                }
                self.inner.write_all(out.as_bytes())?;
            }
            // The formatter writes UTF-8; anything else is masked as
            // bytes by the plain writer.
            Err(_) => secrets::redact::RedactingWriter(&mut self.inner).write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One JSON log line with secret values masked in every string (and
/// every number that spells one), and personal fields masked when
/// `pii_masked`. A line with nothing to mask comes back borrowed.
pub fn mask_line(line: &str, pii_masked: bool) -> Cow<'_, str> {
    // Registered values include their JSON-escaped forms, so a line that
    // does not match holds no secret in any string.
    let hit = matches!(secrets::redact::redact(line), Cow::Owned(_));
    if !hit && !pii_masked {
        return Cow::Borrowed(line);
    }
    let Ok(mut event) = serde_json::from_str::<Value>(line) else {
        // Not an object this writer knows: masked as text (fail closed).
        return Cow::Owned(secrets::redact::redact(line).into_owned());
    };
    mask_value(None, &mut event, pii_masked);
    match serde_json::to_string(&event) {
        Ok(masked) => Cow::Owned(masked),
        Err(_) => Cow::Owned(secrets::redact::redact(line).into_owned()),
    }
}

/// Masks `value` (the field `key` of its object, if any) in place.
/// Returns false iff the field is to be left out.
fn mask_value(key: Option<&str>, value: &mut Value, pii_masked: bool) -> bool {
    match value {
        Value::String(text) => {
            if let Cow::Owned(masked) = secrets::redact::redact(text) {
                *text = masked;
            }
            // The message is shown as written, as in the text log.
            match key.filter(|k| pii_masked && *k != "message") {
                Some(key) => match audit::pii::mask_log_value(key, text) {
                    None => true,
                    Some(None) => false,
                    Some(Some(masked)) => {
                        *text = masked;
                        true
                    }
                },
                None => true,
            }
        }
        Value::Number(number) => {
            let text = number.to_string();
            if let Cow::Owned(masked) = secrets::redact::redact(&text) {
                *value = Value::String(masked);
            }
            true
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                mask_value(None, item, pii_masked);
            }
            true
        }
        Value::Object(fields) => {
            fields.retain(|name, field| mask_value(Some(name), field, pii_masked));
            true
        }
        Value::Bool(_) | Value::Null => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(line: &str, pii_masked: bool) -> String {
        let mut out = Vec::new();
        JsonLogWriter::new(&mut out, pii_masked)
            .write_all(line.as_bytes())
            .expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn a_secret_with_quotes_and_backslashes_is_masked_inside_json_strings() {
        let secret = "json-\"quoted\\secret\n-2b7f";
        secrets::redact::register(secret);
        let line = serde_json::json!({
            "message": format!("token is {secret}"),
            "path": format!("/probe/{secret}"),
        })
        .to_string();
        assert!(!line.contains(secret), "the JSON form is escaped");
        let out = write(&format!("{line}\n"), false);
        assert!(out.ends_with('\n'));
        let parsed: Value = serde_json::from_str(out.trim_end()).expect("still JSON");
        assert_eq!(parsed["message"], "token is [redacted]");
        assert_eq!(parsed["path"], "/probe/[redacted]");
    }

    #[test]
    fn a_number_that_spells_a_secret_becomes_a_masked_string() {
        secrets::redact::register("90817263");
        let out = write("{\"port\":90817263,\"n\":5}\n", false);
        let parsed: Value = serde_json::from_str(out.trim_end()).expect("JSON");
        assert_eq!(parsed["port"], "[redacted]");
        assert_eq!(parsed["n"], 5);
    }

    #[test]
    fn lines_without_secrets_pass_unchanged() {
        let line = "{\"message\":\"nothing here\",\"client_ip\":\"192.0.2.7\"}\n";
        assert_eq!(write(line, false), line);
    }

    #[test]
    fn personal_fields_are_masked_as_in_the_text_log() {
        let line = serde_json::json!({
            "message": "login failed for someone@example.com",
            "client_ip": "192.0.2.7",
            "user_agent": "curl/8",
            "subject": "\"someone@example.com\"",
            "span": {"peer": "192.0.2.8:4000"},
        })
        .to_string();
        let out = write(&line, true);
        let parsed: Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(parsed["client_ip"], "192.0.2.0");
        assert!(parsed.get("user_agent").is_none());
        assert_eq!(parsed["subject"], "s***@example.com");
        assert_eq!(parsed["span"]["peer"], "192.0.2.0");
        assert_eq!(parsed["message"], "login failed for someone@example.com");
    }
}
