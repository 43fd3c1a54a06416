//! SQL injection: libinjection's tokenizer and fingerprints, plus rules
//! for what fingerprints miss (UNION queries hidden in longer input, blind
//! timing functions, schema probes, stacked statements).
//!
//! Rules run on the value lower-cased with SQL comments and whitespace
//! folded, so `UnIoN/**/SeLeCt` reads as `union select`.

use libinjectionrs::{SqliFlags, SqliState};
use regex::bytes::Regex;

use super::normalize::sql_fold;
use super::rules::{compile, Hit};
use super::targets::Target;

pub struct Sqli {
    rules: Vec<(u32, u8, Regex)>,
    /// Cheap test: a value without any of these cannot match a rule.
    trigger: aho_corasick::AhoCorasick,
}

/// Characters and words without which no SQL rule below can match.
const TRIGGERS: &[&str] = &[
    "'",
    "\"",
    "`",
    "(",
    ";",
    "=",
    "<",
    ">",
    "-",
    "#",
    "/*",
    "select",
    "union",
    "sleep",
    "waitfor",
    "information_schema",
    "@@",
    "exec",
    "drop",
    "insert",
    "delete",
    "update",
    "shutdown",
];

impl Sqli {
    pub fn new() -> Result<Sqli, regex::Error> {
        let rules = vec![
            (2002, 1, r"\bunion(?: all| distinct)? ?\(* ?select\b"),
            (
                2003,
                1,
                // Not after a `.`: `time.sleep(5)` is a method call in code.
                r"(?:^|[^.\w$])(?:sleep|benchmark|pg_sleep|randomblob|dbms_lock\.sleep|dbms_pipe\.receive_message) ?\(|\bwaitfor (?:delay|time) ?'",
            ),
            (
                2004,
                1,
                // A closed string or a number, a boolean operator, then a
                // comparison of two operands (or NOT(, TRUE, a number and a
                // comment). The operands must be there: prose "18" and is".
                r#"(?:['"`]|\b\d+)\s?\)* ?(?:(?:or|and|xor)\b|&&|\|\|) ?\(* ?(?:(?:['"`][\w.-]*['"`]?|-?[\w.]+) ?(?:=|<>|!=|<=?|>=?|\blike\b|\brlike\b|\bregexp\b|\bsounds like\b) ?\(* ?(?:['"`][\w.-]*|-?[\w.]+)|not ?\(|(?:true|false)\b|\d+ ?(?:--|#))"#,
            ),
            (
                2005,
                1,
                r"; ?(?:drop (?:table|database|user)|insert into|delete from|update \w+ set|truncate table|alter table|create (?:table|user)|exec(?:ute)? ?(?:\(|master|xp_|sp_)|declare @|shutdown\b|select\b.+\bfrom\b)",
            ),
            (
                2006,
                1,
                r"information_schema|\bpg_catalog\b|\bmysql\.user\b|\bsys\.(?:objects|tables|columns|databases)\b|\bsysobjects\b|\bsyscolumns\b|\bmsysobjects\b|\ball_tables\b|\bsqlite_master\b|\bload_file ?\(|\binto (?:out|dump)file\b|\bxp_cmdshell\b|@@(?:version|datadir|hostname|servername)\b|\butl_(?:http|inaddr)\b|\b(?:extractvalue|updatexml|group_concat|concat_ws|sys_context|version) ?\(|\b(?:char|chr) ?\( ?\d+ ?(?:, ?\d+ ?)+\)|\bcast ?\(.{1,64}\bas (?:int|char|varchar|numeric)\b|\bconvert ?\( ?int ?,",
            ),
            (
                2009,
                1,
                // A subquery with SQL syntax, or ORDER BY n probing columns;
                // "(select one)" in prose has neither.
                r"\( ?select ?(?:\(|case\b|count ?\(|\d+ ?(?:,|from\b)|\* ?from\b|@@|[\w.]+ ?\()|(?:^|['\x22`)\d] ?)order by \d+ ?(?:--|#|/\*|$)",
            ),
            (2007, 2, r#"['"`] ?\)* ?(?:--(?: |$)|#|/\*|;\x00)"#),
            (
                2008,
                2,
                r#"\b(?:select|union|insert|update|delete|drop|having|order by|group by|where)\b.{0,40}['"`=()]"#,
            ),
        ];
        let rules = rules
            .into_iter()
            .map(|(id, pl, re)| Ok((id, pl, compile(re)?)))
            .collect::<Result<_, regex::Error>>()?;
        let trigger = aho_corasick::AhoCorasick::new(TRIGGERS)
            .map_err(|e| regex::Error::Syntax(e.to_string()))?;
        Ok(Sqli { rules, trigger })
    }

    /// Appends the SQL rules that match `t` at paranoia `pl`.
    pub fn check(&self, t: &Target, pl: u8, hits: &mut Vec<Hit>) {
        let text = &t.value.text;
        let full = 0..text.len();

        let mut lib = SqliState::new(text.as_bytes(), SqliFlags::FLAG_NONE);
        if lib.detect() {
            let mut hit = Hit::new(2001, full.clone());
            hit.detail = Some(format!("fingerprint {}", lib.fingerprint_string()));
            hits.push(hit);
        }

        if !self.trigger.is_match(&t.value.lower) {
            return;
        }
        let folded = sql_fold(&t.value.lower);
        let same_offsets = folded.len() == text.len();
        for (id, level, re) in &self.rules {
            if *level > pl {
                continue;
            }
            if let Some(m) = re.find(folded.as_bytes()) {
                let at = if same_offsets {
                    m.range()
                } else {
                    full.clone()
                };
                hits.push(Hit::new(*id, at));
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
        Sqli::new().expect("rules compile").check(&t, pl, &mut hits);
        hits.into_iter().map(|h| h.rule).collect()
    }

    #[test]
    fn classic_tautology_is_found_by_libinjection_and_rule() {
        let ids = ids("1' OR '1'='1", 1);
        assert!(ids.contains(&2001), "{ids:?}");
        assert!(ids.contains(&2004), "{ids:?}");
    }

    #[test]
    fn mixed_case_union_with_inline_comments_is_found() {
        assert!(ids("-1 UnIoN/**/SeLeCt 1,2,3", 1).contains(&2002));
        assert!(ids("1 /*!50000UNION*/ /*!50000SELECT*/ user()", 1).contains(&2002));
    }

    #[test]
    fn blind_timing_functions_are_found() {
        assert!(ids("1 and sleep(5)", 1).contains(&2003));
        assert!(ids("1'; waitfor delay '0:0:5'--", 1).contains(&2003));
    }

    #[test]
    fn stacked_statements_and_schema_probes_are_found() {
        assert!(ids("x'; DROP TABLE users; --", 1).contains(&2005));
        assert!(ids(
            "1 and 1=(select count(*) from information_schema.tables)",
            1
        )
        .contains(&2006));
    }

    #[test]
    fn prose_with_apostrophes_and_sql_words_is_not_flagged() {
        for text in [
            "I'm sure it's fine, isn't it?",
            "Select the option you want; then update your profile.",
            "Rock 'n' roll or jazz? I'd say both",
            "The union of the two sets",
            "Choose a plan (select one) and order by 5pm",
            "44 O'Connell Street, Val-d'Or 49941",
            "The chain measures 18\" and is made of brass",
            "time.sleep(5)  # wait for the server",
            "O'Reilly & Sons, 12 Baker St.",
        ] {
            assert!(ids(text, 1).is_empty(), "{text}: {:?}", ids(text, 1));
        }
    }

    #[test]
    fn comment_after_quote_runs_only_from_paranoia_two() {
        assert!(!ids("she said 'hi' -- then left", 1).contains(&2007));
        assert!(ids("she said 'hi' -- then left", 2).contains(&2007));
    }
}
