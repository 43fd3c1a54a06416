//! Host names as the edge compares them: lower case, no port, no trailing
//! dot. The hub uses the same rules when it checks a site's domain, so a
//! name that was accepted at deploy time is the name that matches here.

/// Normalises a `Host` header value or URI authority for route lookup.
///
/// Returns `None` iff the value cannot be a DNS name we route: empty, an
/// IP literal in brackets, or characters outside letters, digits, `-`,
/// `.`, `_` and a leading `*.`.
pub fn normalize(host: &str) -> Option<String> {
    let without_port = strip_port(host)?;
    let name = without_port.strip_suffix('.').unwrap_or(without_port);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'));
    if !ok {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

fn strip_port(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        // IPv6 literals are never site names.
        return None;
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

/// The parent suffixes a wildcard route may match for `name`, most
/// specific first: `a.b.example.com` yields `b.example.com`, `example.com`
/// and `com`.
pub fn parent_suffixes(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('.').map(move |(i, _)| &name[i + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_trailing_dot_and_case_are_normalised() {
        assert_eq!(
            normalize("Hello.Example.COM:8080").as_deref(),
            Some("hello.example.com")
        );
        assert_eq!(
            normalize("hello.example.com.").as_deref(),
            Some("hello.example.com")
        );
        assert_eq!(
            normalize("hello.example.com.:443").as_deref(),
            Some("hello.example.com")
        );
    }

    #[test]
    fn junk_hosts_do_not_normalise() {
        assert_eq!(normalize(""), None);
        assert_eq!(normalize(":80"), None);
        assert_eq!(normalize("[::1]:80"), None);
        assert_eq!(normalize("a b.com"), None);
        assert_eq!(normalize("a.com:80x"), None);
        assert_eq!(normalize("a/b.com"), None);
        assert_eq!(normalize(&"a".repeat(254)), None);
    }

    #[test]
    fn parent_suffixes_go_from_specific_to_general() {
        let got: Vec<_> = parent_suffixes("a.b.example.com").collect();
        assert_eq!(got, ["b.example.com", "example.com", "com"]);
        assert_eq!(parent_suffixes("com").count(), 0);
    }
}
