//! The rules a site's domain must meet before it is stored. The edge
//! matches hosts with [`edge::host::normalize`]; every domain accepted here
//! is already in that normal form, so what was deployed is what matches.

/// Why a domain was refused. Always the client's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 253 characters")]
    TooLong,
    #[error("label `{0}` must be 1 to 63 characters")]
    LabelLength(String),
    #[error(
        "may contain only letters, digits, `-` and `.`; use the xn-- form for other characters"
    )]
    BadCharacter,
    #[error("label `{0}` must not start or end with `-`")]
    Hyphen(String),
    #[error("must be a DNS name, not an IP address")]
    IpLiteral,
    #[error("`*` is allowed only as the whole first label, as in *.example.com")]
    BadWildcard,
    #[error("must have at least two labels, as in example.com")]
    SingleLabel,
    #[error("localhost names are not allowed on this server")]
    Localhost,
}

/// Checks and normalises a site domain: lower case, no trailing dot.
///
/// `allow_localhost` admits `localhost` and names under it, which only
/// ever resolve to the loopback address.
pub fn validate(input: &str, allow_localhost: bool) -> Result<String, DomainError> {
    let name = input
        .trim()
        .strip_suffix('.')
        .unwrap_or(input.trim())
        .to_ascii_lowercase();
    if name.is_empty() {
        return Err(DomainError::Empty);
    }
    if name.len() > 253 {
        return Err(DomainError::TooLong);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*'))
    {
        return Err(DomainError::BadCharacter);
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(DomainError::IpLiteral);
    }

    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if label.is_empty() || label.len() > 63 {
            return Err(DomainError::LabelLength((*label).to_owned()));
        }
        if label.contains('*') && (i != 0 || *label != "*") {
            return Err(DomainError::BadWildcard);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DomainError::Hyphen((*label).to_owned()));
        }
    }
    let last = labels.last().copied().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) {
        // No top-level domain is numeric: this is an IPv4 address in
        // disguise (`127.1`, `1.2.3.4.`).
        return Err(DomainError::IpLiteral);
    }

    let is_localhost = last == "localhost";
    if is_localhost && !allow_localhost {
        return Err(DomainError::Localhost);
    }
    if labels.len() < 2 && !is_localhost {
        return Err(DomainError::SingleLabel);
    }
    if labels.len() == 2 && labels[0] == "*" && !is_localhost {
        // `*.com` would capture a whole top-level domain.
        return Err(DomainError::BadWildcard);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_domains_are_normalised() {
        assert_eq!(
            validate("Hello.Example.COM.", false).as_deref(),
            Ok("hello.example.com")
        );
        assert_eq!(
            validate("*.example.com", false).as_deref(),
            Ok("*.example.com")
        );
        assert_eq!(
            validate("xn--bcher-kva.example", false).as_deref(),
            Ok("xn--bcher-kva.example")
        );
        assert_eq!(
            validate("hello.localhost", true).as_deref(),
            Ok("hello.localhost")
        );
        assert_eq!(validate("a-b.c0.io", false).as_deref(), Ok("a-b.c0.io"));
    }

    #[test]
    fn each_bad_domain_gets_its_own_rule() {
        assert_eq!(validate("", false), Err(DomainError::Empty));
        assert_eq!(
            validate(&format!("{}.com", "a.".repeat(130)), false),
            Err(DomainError::TooLong)
        );
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(matches!(
            validate(&long_label, false),
            Err(DomainError::LabelLength(_))
        ));
        assert!(matches!(
            validate("a..com", false),
            Err(DomainError::LabelLength(_))
        ));
        assert_eq!(validate("a_b.com", false), Err(DomainError::BadCharacter));
        assert_eq!(validate("bücher.de", false), Err(DomainError::BadCharacter));
        assert_eq!(validate("a b.com", false), Err(DomainError::BadCharacter));
        assert_eq!(validate("a/b.com", false), Err(DomainError::BadCharacter));
        assert!(matches!(
            validate("-a.com", false),
            Err(DomainError::Hyphen(_))
        ));
        assert_eq!(validate("127.0.0.1", false), Err(DomainError::IpLiteral));
        assert_eq!(validate("127.1", false), Err(DomainError::IpLiteral));
        assert_eq!(validate("[::1]", false), Err(DomainError::BadCharacter));
        assert_eq!(validate("::1", false), Err(DomainError::BadCharacter));
        assert_eq!(validate("a.*.com", false), Err(DomainError::BadWildcard));
        assert_eq!(validate("*a.com", false), Err(DomainError::BadWildcard));
        assert_eq!(validate("*.com", false), Err(DomainError::BadWildcard));
        assert_eq!(validate("intranet", false), Err(DomainError::SingleLabel));
        assert_eq!(validate("localhost", false), Err(DomainError::Localhost));
        assert_eq!(
            validate("app.localhost", false),
            Err(DomainError::Localhost)
        );
    }

    #[test]
    fn accepted_domains_match_what_the_edge_normalises() {
        for d in ["Hello.Example.com.", "*.example.com", "app.localhost"] {
            let stored = validate(d, true).expect("valid");
            assert_eq!(edge::host::normalize(d).as_deref(), Some(stored.as_str()));
        }
    }
}
