use super::*;
use serde_json::json;
use std::io::Write;

/// One OSV record for `package` in `ecosystem` with one range.
fn record(id: &str, ecosystem: &str, package: &str, events: serde_json::Value) -> String {
    serde_json::to_string_pretty(&json!({
        "schema_version": "1.6.0",
        "id": id,
        "modified": "2026-01-01T00:00:00Z",
        "summary": format!("{id} summary"),
        "affected": [{
            "package": {"ecosystem": ecosystem, "name": package},
            "ranges": [{"type": "ECOSYSTEM", "events": events}],
        }],
        "database_specific": {"severity": "HIGH"},
    }))
    .expect("json")
}

fn db(records: &[String]) -> VulnDb {
    VulnDb::new(
        records
            .iter()
            .map(|r| {
                parse_record(Path::new("t.json"), r)
                    .expect("valid")
                    .expect("kept")
            })
            .collect(),
    )
}

fn affected(db: &VulnDb, eco: Ecosystem, name: &str, version: &str) -> bool {
    !db.lookup(eco, name, version).is_empty()
}

#[test]
fn npm_ranges_put_pre_releases_of_the_fix_inside_the_range() {
    let db = db(&[record(
        "GHSA-npm-1",
        "npm",
        "left-pad",
        json!([{"introduced": "1.2.0"}, {"fixed": "1.3.0"}]),
    )]);
    assert!(!affected(&db, Ecosystem::Npm, "left-pad", "1.1.9"));
    assert!(affected(&db, Ecosystem::Npm, "left-pad", "1.2.0"));
    assert!(affected(&db, Ecosystem::Npm, "left-pad", "1.3.0-beta.1"));
    assert!(!affected(&db, Ecosystem::Npm, "left-pad", "1.3.0"));
    let hits = db.lookup(Ecosystem::Npm, "left-pad", "1.2.5");
    assert_eq!(hits[0].fixed, vec!["1.3.0".to_owned()]);
    assert_eq!(hits[0].advisory.severity, Severity::High);
}

#[test]
fn cargo_zero_x_ranges_patched_per_minor_line() {
    // RustSec's `patched = [">= 0.3.5, < 0.4", ">= 0.4.2"]` in OSV form.
    let db = db(&[record(
        "RUSTSEC-2026-0001",
        "crates.io",
        "smallthing",
        json!([
            {"introduced": "0"}, {"fixed": "0.3.5"},
            {"introduced": "0.4.0"}, {"fixed": "0.4.2"}
        ]),
    )]);
    let eco = Ecosystem::CratesIo;
    assert!(affected(&db, eco, "smallthing", "0.3.4"));
    assert!(!affected(&db, eco, "smallthing", "0.3.5"));
    assert!(!affected(&db, eco, "smallthing", "0.3.9"));
    assert!(affected(&db, eco, "smallthing", "0.4.1"));
    assert!(!affected(&db, eco, "smallthing", "0.4.2"));
    assert!(
        !affected(&db, eco, "smallthing", "0.10.0"),
        "0.10 > 0.4 numerically"
    );
}

#[test]
fn python_epochs_post_releases_and_pre_releases_follow_pep_440() {
    let db = db(&[record(
        "PYSEC-2026-1",
        "PyPI",
        "Django_Thing",
        json!([{"introduced": "0"}, {"fixed": "2.0.post1"}]),
    )]);
    let eco = Ecosystem::PyPi;
    assert!(
        affected(&db, eco, "django-thing", "2.0"),
        "names normalized"
    );
    assert!(affected(&db, eco, "DJANGO.THING", "2.0rc1"));
    assert!(!affected(&db, eco, "django-thing", "2.0.post1"));
    assert!(!affected(&db, eco, "django-thing", "2.0.post2"));
    // An epoch puts 1!0.1 after every epoch-0 version, past the fix.
    assert!(!affected(&db, eco, "django-thing", "1!0.1"));

    let epoch = db_single(
        "PyPI",
        "epochal",
        json!([{"introduced": "1!1.0"}, {"fixed": "1!1.5"}]),
    );
    assert!(
        !affected(&epoch, eco, "epochal", "3.0"),
        "epoch 0 is before 1!1.0"
    );
    assert!(affected(&epoch, eco, "epochal", "1!1.2"));
    assert!(!affected(&epoch, eco, "epochal", "1!1.5"));
}

fn db_single(eco: &str, name: &str, events: serde_json::Value) -> VulnDb {
    db(&[record("X-1", eco, name, events)])
}

#[test]
fn go_module_versions_with_pseudo_versions_and_last_affected() {
    let db = db_single(
        "Go",
        "github.com/example/mod",
        json!([{"introduced": "0"}, {"last_affected": "1.4.0"}]),
    );
    let eco = Ecosystem::Go;
    assert!(affected(&db, eco, "github.com/example/mod", "v1.4.0"));
    assert!(affected(
        &db,
        eco,
        "github.com/example/mod",
        "v0.0.0-20200101000000-abcdefabcdef"
    ));
    assert!(!affected(&db, eco, "github.com/example/mod", "v1.4.1"));
    assert!(!affected(&db, eco, "github.com/example/other", "v1.0.0"));
}

#[test]
fn listed_versions_match_exactly_and_git_ranges_are_skipped() {
    let text = serde_json::to_string(&json!({
        "id": "GHSA-list",
        "affected": [{
            "package": {"ecosystem": "npm", "name": "lst"},
            "ranges": [{"type": "GIT", "repo": "x", "events": [{"introduced": "abc123"}]}],
            "versions": ["2.0.0"],
        }],
    }))
    .expect("json");
    let db = db(&[text]);
    assert!(affected(&db, Ecosystem::Npm, "lst", "2.0.0"));
    assert!(!affected(&db, Ecosystem::Npm, "lst", "2.0.1"));
    assert_eq!(
        db.lookup(Ecosystem::Npm, "lst", "2.0.0")[0]
            .advisory
            .severity,
        Severity::Unknown
    );
}

#[test]
fn cvss_v3_vectors_score_like_the_specification() {
    let critical = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H";
    assert_eq!(cvss3_base_score(critical), Some(9.8));
    let xss = "CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N";
    assert_eq!(cvss3_base_score(xss), Some(6.1));
    assert_eq!(
        cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N"),
        Some(0.0)
    );
    assert_eq!(cvss3_base_score("CVSS:3.1/AV:X"), None);
    assert_eq!(cvss3_base_score("CVSS:4.0/AV:N"), None);

    let text = serde_json::to_string(&json!({
        "id": "CVE-v",
        "severity": [{"type": "CVSS_V3", "score": critical}],
        "affected": [{"package": {"ecosystem": "npm", "name": "v"}, "versions": ["1.0.0"]}],
    }))
    .expect("json");
    let db = db(&[text]);
    assert_eq!(
        db.lookup(Ecosystem::Npm, "v", "1.0.0")[0].advisory.severity,
        Severity::Critical
    );
}

/// Vectors and the scores FIRST's v4.0 calculator (and the GitHub and NVD
/// advisories that carry them) publish for them.
#[test]
fn cvss_v4_vectors_score_like_the_published_calculator() {
    for (vector, score) in [
        // Remote code execution, no user action: 9.3 CRITICAL.
        (
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
            9.3,
        ),
        // ...that also takes the systems behind it: the maximum.
        (
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:H/SI:H/SA:H",
            10.0,
        ),
        // Remote denial of service: 8.7 HIGH.
        (
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:N/VI:N/VA:H/SC:N/SI:N/SA:N",
            8.7,
        ),
        // Local privilege escalation: 8.5 HIGH.
        (
            "CVSS:4.0/AV:L/AC:L/AT:N/PR:L/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
            8.5,
        ),
        // Cross-site scripting, passive user action: 5.3 MEDIUM...
        (
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:P/VC:N/VI:N/VA:N/SC:L/SI:L/SA:N",
            5.3,
        ),
        // ...and with an active one: 5.1.
        (
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:A/VC:N/VI:N/VA:N/SC:L/SI:L/SA:N",
            5.1,
        ),
        // No impact at all.
        (
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:N/VI:N/VA:N/SC:N/SI:N/SA:N",
            0.0,
        ),
    ] {
        assert_eq!(cvss4_score(vector), Some(score), "{vector}");
    }
    for broken in [
        // A base metric missing, an undefined value, a repeated metric,
        // another version's prefix.
        "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N",
        "CVSS:4.0/AV:Q/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
        "CVSS:4.0/AV:N/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
    ] {
        assert_eq!(cvss4_score(broken), None, "{broken}");
    }

    // A record that carries only a v4 vector gets its severity from it,
    // and the worse of a label and a vector wins.
    let record = |id: &str, vector: &str, label: Option<&str>| {
        let mut record = json!({
            "id": id,
            "severity": [{"type": "CVSS_V4", "score": vector}],
            "affected": [{"package": {"ecosystem": "npm", "name": id}, "versions": ["1.0.0"]}],
        });
        if let Some(label) = label {
            record["database_specific"] = json!({"severity": label});
        }
        serde_json::to_string(&record).expect("json")
    };
    let db = db(&[
        record(
            "v4-only",
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
            None,
        ),
        record(
            "v4-label",
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:N/VI:N/VA:H/SC:N/SI:N/SA:N",
            Some("MODERATE"),
        ),
        record("v4-broken", "CVSS:4.0/AV:N", None),
    ]);
    let severity = |name: &str| {
        db.lookup(Ecosystem::Npm, name, "1.0.0")[0]
            .advisory
            .severity
    };
    assert_eq!(severity("v4-only"), Severity::Critical);
    assert_eq!(severity("v4-label"), Severity::High);
    assert_eq!(severity("v4-broken"), Severity::Unknown);
}

#[test]
fn malformed_records_name_the_file_and_line() {
    let broken = "{\n  \"id\": \"X\",\n  \"affected\": [\n    oops\n  ]\n}";
    let error = parse_record(Path::new("bad.json"), broken).expect_err("not json");
    let text = error.to_string();
    assert!(text.starts_with("bad.json:4:"), "{text}");

    let bad_version = record(
        "X-2",
        "crates.io",
        "c",
        json!([{"introduced": "0"}, {"fixed": "one.two"}]),
    );
    let error = parse_record(Path::new("v.json"), &bad_version).expect_err("bad version");
    let line = bad_version
        .lines()
        .position(|l| l.contains("one.two"))
        .expect("present")
        + 1;
    assert!(
        error.to_string().starts_with(&format!("v.json:{line}:")),
        "{error}"
    );
    assert!(error.to_string().contains("one.two"), "{error}");

    let no_intro = record("X-3", "npm", "n", json!([{"fixed": "1.0.0"}]));
    let error = parse_record(Path::new("n.json"), &no_intro).expect_err("no introduced");
    assert!(error.to_string().contains("introduced"), "{error}");
}

#[test]
fn import_merges_folders_and_zips_and_refuses_bad_input_without_writing() {
    let data = tempfile::tempdir().expect("tmp");
    let source = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(source.path().join("nested")).expect("mkdir");
    std::fs::write(
        source.path().join("nested/a.json"),
        record(
            "GHSA-a",
            "npm",
            "a",
            json!([{"introduced": "0"}, {"fixed": "1.0.0"}]),
        ),
    )
    .expect("write");
    std::fs::write(
        source.path().join("deb.json"),
        record(
            "DSA-1",
            "Debian:12",
            "openssl",
            json!([{"introduced": "0"}]),
        ),
    )
    .expect("write");
    let report = import(source.path(), data.path()).expect("import");
    assert_eq!(
        (report.read, report.imported, report.skipped, report.total),
        (2, 1, 1, 1)
    );

    // A zip with a second advisory is merged in.
    let zip_path = source.path().join("all.zip");
    {
        let file = std::fs::File::create(&zip_path).expect("zip");
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("GHSA-b.json", options).expect("entry");
        zip.write_all(
            record(
                "GHSA-b",
                "npm",
                "b",
                json!([{"introduced": "0"}, {"fixed": "2.0.0"}]),
            )
            .as_bytes(),
        )
        .expect("write");
        zip.finish().expect("finish");
    }
    let report = import(&zip_path, data.path()).expect("zip import");
    assert_eq!(report.total, 2);
    let loaded = VulnDb::load(data.path()).expect("load");
    assert!(affected(&loaded, Ecosystem::Npm, "a", "0.9.0"));
    assert!(affected(&loaded, Ecosystem::Npm, "b", "1.9.0"));

    // A bad record stops the import and the database is unchanged.
    let before = std::fs::read(data.path().join(DB_FILE)).expect("db");
    std::fs::write(source.path().join("nested/zz.json"), "{\"id\": ").expect("write");
    let error = import(source.path(), data.path()).expect_err("bad record");
    assert!(error.to_string().contains("zz.json:1:"), "{error}");
    assert_eq!(
        std::fs::read(data.path().join(DB_FILE)).expect("db"),
        before
    );
}
