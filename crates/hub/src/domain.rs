//! The rules a site's domain must meet before it is stored. The edge
//! matches hosts with [`edge::host::normalize`]; every domain accepted here
//! is already in that normal form, so what was deployed is what matches.
//!
//! Two layers: [`validate`] holds for every caller (shape, and never a
//! public suffix or a wildcard over one); [`claim`] decides whether a
//! non-admin may take a valid name, given who owns the names near it.

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
    #[error(
        "`{0}` is a public suffix, under which anyone may register names; \
         use a name of your own below it"
    )]
    PublicSuffix(String),
    #[error(
        "a wildcard directly below the public suffix `{0}` would match every name \
         registered there; use *.<your-name>.{0}"
    )]
    WildcardOverPublicSuffix(String),
}

/// Checks and normalises a site domain: lower case, no trailing dot. It
/// refuses a public suffix (`co.uk`) and a wildcard directly over one
/// (`*.co.uk`, `*.localhost`) whoever asks.
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
    let base = base(&name);
    let wildcard = base.len() != name.len();
    if base == "localhost" && !wildcard {
        // The one single-label name admitted; [`claim`] keeps it for admins.
        return Ok(name);
    }
    if !base.contains('.') && !wildcard {
        return Err(DomainError::SingleLabel);
    }
    if public_suffix(base) || !base.contains('.') {
        // `*.com`, `*.co.uk`, `*.github.io` and `*.localhost` would capture
        // names that others register; `co.uk` itself is nobody's.
        return Err(if wildcard {
            DomainError::WildcardOverPublicSuffix(base.to_owned())
        } else {
            DomainError::PublicSuffix(base.to_owned())
        });
    }
    Ok(name)
}

/// The name a domain is rooted at: `example.com` for both `example.com`
/// and `*.example.com`.
pub fn base(domain: &str) -> &str {
    domain.strip_prefix("*.").unwrap_or(domain)
}

/// True iff `name` is a public suffix: listed in the Public Suffix List
/// (ICANN and private sections, so `co.uk` and `github.io` both count),
/// or a single label, which the list's default rule makes a suffix
/// (`com`, `test`, `localhost`).
fn public_suffix(name: &str) -> bool {
    psl::suffix(name.as_bytes()).is_some_and(|suffix| suffix.as_bytes() == name.as_bytes())
}

/// True iff the two (valid, normalised) domains can answer for a common
/// host name or one sits under the other: equal, one below the other, or
/// a wildcard covering the other (`*.a.example` and `x.y.a.example`).
/// The wildcard's own base counts too: whoever holds `*.a.example`
/// stands for `a.example`.
pub fn overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (base(a), base(b));
    a == b || is_under(a, b) || is_under(b, a)
}

/// True iff `name` is a strict subdomain of `parent`.
fn is_under(name: &str, parent: &str) -> bool {
    name.len() > parent.len()
        && name.ends_with(parent)
        && name.as_bytes()[name.len() - parent.len() - 1] == b'.'
}

/// Why a non-admin may not take a domain that [`validate`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// A wildcard answers for names nobody has claimed yet, so only the
    /// platform's operators hand one out.
    #[error("wildcard domains are reserved for admins")]
    Wildcard,
    /// Bare `localhost` is the host's own name.
    #[error("`localhost` itself is reserved for admins; use <name>.localhost")]
    Localhost,
    /// The name is equal to, under, or above (or a wildcard over) a site
    /// another customer or the platform holds.
    #[error(
        "overlaps a domain that another customer holds: a domain may not equal, sit \
         under, sit above or cover with a wildcard another customer's domain"
    )]
    OtherCustomer,
}

impl ClaimError {
    /// A short stable name of the rule, for the audit event.
    pub fn rule(self) -> &'static str {
        match self {
            ClaimError::Wildcard => "wildcard_admin_only",
            ClaimError::Localhost => "localhost_admin_only",
            ClaimError::OtherCustomer => "overlaps_other_customer",
        }
    }
}

/// Decides whether a non-admin caller may take `domain` (already
/// [`validate`]d). `foreign` lists the domains of sites that belong to
/// anyone other than the caller's customer, platform sites included.
// Limitation: a name nobody holds yet goes to the first customer that
// claims it; control of the DNS name is not proven (a DNS TXT token
// checked before the claim, behind an admin switch, would lift it).
pub fn claim<'a>(
    domain: &str,
    foreign: impl IntoIterator<Item = &'a str>,
) -> Result<(), ClaimError> {
    if domain.starts_with("*.") {
        return Err(ClaimError::Wildcard);
    }
    if domain == "localhost" {
        return Err(ClaimError::Localhost);
    }
    if foreign.into_iter().any(|other| overlaps(domain, other)) {
        return Err(ClaimError::OtherCustomer);
    }
    Ok(())
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
        assert_eq!(
            validate("*.com", false),
            Err(DomainError::WildcardOverPublicSuffix("com".into()))
        );
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

    #[test]
    fn public_suffixes_and_wildcards_over_them_are_refused_for_everyone() {
        for suffix in ["co.uk", "github.io", "com.au", "s3.amazonaws.com"] {
            assert_eq!(
                validate(suffix, true),
                Err(DomainError::PublicSuffix(suffix.into())),
                "{suffix}"
            );
            assert_eq!(
                validate(&format!("*.{suffix}"), true),
                Err(DomainError::WildcardOverPublicSuffix(suffix.into())),
                "{suffix}"
            );
        }
        assert_eq!(
            validate("*.localhost", true),
            Err(DomainError::WildcardOverPublicSuffix("localhost".into()))
        );
        assert_eq!(validate("*.test", true).ok(), None);
        // One label further down is a registrable name again.
        for ok in [
            "example.co.uk",
            "*.example.co.uk",
            "me.github.io",
            "*.app.localhost",
        ] {
            assert_eq!(validate(ok, true).as_deref(), Ok(ok));
        }
        // Bare `localhost` passes here; `claim` keeps it for admins.
        assert_eq!(validate("localhost", true).as_deref(), Ok("localhost"));
    }

    #[test]
    fn overlaps_means_equal_under_above_or_covered() {
        for (a, b) in [
            ("b.localhost", "b.localhost"),
            ("www.b.localhost", "b.localhost"),
            ("b.localhost", "x.y.b.localhost"),
            ("*.b.localhost", "b.localhost"),
            ("*.b.localhost", "deep.x.b.localhost"),
            ("*.localhost", "a.localhost"),
            ("localhost", "a.localhost"),
        ] {
            assert!(overlaps(a, b), "{a} {b}");
            assert!(overlaps(b, a), "{b} {a}");
        }
        for (a, b) in [
            ("a.localhost", "b.localhost"),
            ("ab.localhost", "b.localhost"),
            ("*.a.example.com", "b.example.com"),
            ("example.com", "example.org"),
        ] {
            assert!(!overlaps(a, b), "{a} {b}");
        }
    }

    #[test]
    fn claim_refuses_wildcards_localhost_and_other_customers_names() {
        let foreign = ["b.localhost", "example.com"];
        assert_eq!(claim("*.a.localhost", foreign), Err(ClaimError::Wildcard));
        assert_eq!(claim("localhost", foreign), Err(ClaimError::Localhost));
        for taken in ["www.b.localhost", "b.localhost", "shop.example.com"] {
            assert_eq!(
                claim(taken, foreign),
                Err(ClaimError::OtherCustomer),
                "{taken}"
            );
        }
        assert_eq!(claim("a.localhost", foreign), Ok(()));
        assert_eq!(claim("example.org", foreign), Ok(()));
        assert_eq!(claim("b.localhost", []), Ok(()));
    }
}
