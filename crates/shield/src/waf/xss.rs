//! Cross-site scripting: libinjection's HTML5 tokenizer, plus rules for
//! script elements, event handlers, script-running URI schemes, active
//! content elements, DOM sinks after a string break-out and client-side
//! template expressions.
//!
//! Rules match the lower-cased value with entities already decoded, and
//! with tabs and newlines removed for the URI-scheme rule, since browsers
//! ignore them inside `java\tscript:`.

use regex::bytes::Regex;

use super::rules::{compile, Hit};
use super::targets::Target;

pub struct Xss {
    rules: Vec<(u32, u8, Regex)>,
    scheme: Regex,
}

impl Xss {
    pub fn new() -> Result<Xss, regex::Error> {
        let rules = vec![
            (3002, 1, r"<\s*/?\s*script\b"),
            (
                3003,
                1,
                r#"<[a-z!/?][^>]*?[\s/"'`;]on[a-z]{3,30}\s*=|^\s*['"`]?\s*[>/;]?\s*on[a-z]{3,30}\s*=\s*\S|['"`][^<>'"`]{0,80}?[\s/]on[a-z]{3,30}\s*=\s*\S"#,
            ),
            (
                3005,
                1,
                r"<\s*(?:iframe|frame|frameset|object|embed|applet|base|meta|svg|math|isindex|link|style|xml|form|import|xss|bgsound|layer|ilayer)\b",
            ),
            (
                3006,
                1,
                r#"\bdocument\s*\.\s*(?:cookie|write|domain|location)\b|\bwindow\s*\.\s*(?:location|name|open)\b|\.\s*innerhtml\s*=|-moz-binding|\bexpression\s*\(|\bfromcharcode\s*\(|['"`]\s*[;,+)\-*/|&]+\s*(?:alert|prompt|confirm|eval|settimeout|setinterval|atob|fetch|import)\s*[(`]|^\s*(?:alert|prompt|confirm)\s*[(`]"#,
            ),
            (
                3007,
                1,
                r"\{\{[^}]*(?:constructor|\$eval|\$on|alert|\[\]\.|tostring|\bthis\b)",
            ),
            (3008, 2, r"<\s*/?\s*[a-z][a-z0-9]*[\s/>]"),
        ];
        let rules = rules
            .into_iter()
            .map(|(id, pl, re)| Ok((id, pl, compile(re)?)))
            .collect::<Result<_, regex::Error>>()?;
        // A scheme followed by code, not by prose ("javascript: the good
        // parts"), or in an attribute that loads a URL.
        let scheme = compile(
            r#"(?:javascript|vbscript|livescript|mocha)\s*:\s*(?:[\w$]+\s*[(.=`\[]|['"`/]|$)|(?:href|src|action|formaction|data|xlink:href)\s*=\s*['"`]?\s*(?:javascript|vbscript|data)\s*:|\bdata\s*:\s*(?:text/html|image/svg\+xml|application/(?:x-)?javascript)"#,
        )?;
        Ok(Xss { rules, scheme })
    }

    /// Appends the XSS rules that match `t` at paranoia `pl`.
    pub fn check(&self, t: &Target, pl: u8, hits: &mut Vec<Hit>) {
        let lower = &t.value.lower;
        if !lower.contains(['<', '>', '"', '\'', '`', '=', ':', '(', '{', '.']) {
            return;
        }

        // libinjection's contexts all need markup, an attribute or a scheme.
        if lower.contains(['<', '=', ':', '`'])
            && libinjectionrs::detect_xss(t.value.text.as_bytes()).is_injection()
        {
            hits.push(Hit::new(3001, 0..t.value.text.len()));
        }
        let same_offsets = lower.len() == t.value.text.len();
        let at = |r: std::ops::Range<usize>| {
            if same_offsets {
                r
            } else {
                0..t.value.text.len()
            }
        };
        for (id, level, re) in &self.rules {
            if *level > pl {
                continue;
            }
            if let Some(m) = re.find(lower.as_bytes()) {
                hits.push(Hit::new(*id, at(m.range())));
            }
        }
        if lower.contains(':') {
            let squeezed: String = lower
                .chars()
                .filter(|c| !matches!(c, '\t' | '\n' | '\r' | '\0'))
                .collect();
            if self.scheme.is_match(squeezed.as_bytes()) {
                hits.push(Hit::new(3004, 0..t.value.text.len()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::normalize::{normalize, Source};
    use crate::waf::targets::Location;

    fn ids(value: &str, pl: u8) -> Vec<u32> {
        let t = Target {
            location: Location::Query,
            name: "q".into(),
            value: normalize(value.as_bytes(), Source::Decoded),
        };
        let mut hits = Vec::new();
        Xss::new().expect("rules compile").check(&t, pl, &mut hits);
        hits.into_iter().map(|h| h.rule).collect()
    }

    #[test]
    fn script_tags_and_handlers_are_found() {
        assert!(ids("<ScRiPt>alert(1)</script>", 1).contains(&3002));
        assert!(ids("<img src=x onerror=alert(1)>", 1).contains(&3003));
        assert!(ids("\" autofocus onfocus=alert(1) x=\"", 1).contains(&3003));
        assert!(ids("<svg/onload=alert(1)>", 1).contains(&3005));
    }

    #[test]
    fn entity_encoded_and_split_schemes_are_found() {
        assert!(ids("<a href=\"&#106;ava&#x09;script&colon;alert(1)\">x</a>", 1).contains(&3004));
        assert!(ids("javascript:alert(document.cookie)", 1).contains(&3004));
    }

    #[test]
    fn string_breakout_to_a_sink_is_found() {
        assert!(ids("';alert(String.fromCharCode(88))//", 1).contains(&3006));
        assert!(ids("{{constructor.constructor('alert(1)')()}}", 1).contains(&3007));
    }

    #[test]
    fn prose_and_plain_markup_talk_are_not_flagged() {
        for text in [
            "JavaScript: The Good Parts is a classic",
            "Use a <br> between lines, and 2 < 3 > 1",
            "Is the online = offline price the same?",
            "I said \"hello\" and left.",
            "**bold** and _italic_ and [a link](https://example.org/x?y=1)",
        ] {
            assert!(ids(text, 1).is_empty(), "{text}: {:?}", ids(text, 1));
        }
    }

    #[test]
    fn any_tag_counts_only_from_paranoia_two() {
        assert!(!ids("<b>bold</b>", 1).contains(&3008));
        assert!(ids("<b>bold</b>", 2).contains(&3008));
    }
}
