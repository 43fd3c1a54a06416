use super::*;
use serde_json::json;

fn advisory(id: &str, eco: &str, name: &str, fixed: &str, severity: &str) -> String {
    json!({
        "id": id,
        "modified": "2026-02-01T00:00:00Z",
        "summary": "bad",
        "affected": [{
            "package": {"ecosystem": eco, "name": name},
            "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": fixed}]}],
        }],
        "database_specific": {"severity": severity},
    })
    .to_string()
}

fn database(records: &[String]) -> tempfile::TempDir {
    let data = tempfile::tempdir().expect("tmp");
    let source = tempfile::tempdir().expect("tmp");
    for (i, r) in records.iter().enumerate() {
        std::fs::write(source.path().join(format!("{i}.json")), r).expect("write");
    }
    crate::vulndb::import(source.path(), data.path()).expect("import");
    data
}

#[test]
fn scan_finds_lockfiles_but_not_inside_node_modules() {
    let data = database(&[
        advisory("GHSA-1", "npm", "lodash", "4.17.21", "HIGH"),
        advisory("GHSA-2", "npm", "tiny", "1.0.1", "LOW"),
    ]);
    let bundle = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(bundle.path().join("web/node_modules/x")).expect("mkdir");
    std::fs::write(
        bundle.path().join("web/yarn.lock"),
        "lodash@^4:\n  version \"4.17.20\"\n\ntiny@1:\n  version \"1.0.0\"\n",
    )
    .expect("write");
    std::fs::write(
        bundle.path().join("web/node_modules/x/yarn.lock"),
        "lodash@^4:\n  version \"4.0.0\"\n",
    )
    .expect("write");
    let db = VulnDb::load(data.path()).expect("db");
    let report = scan_dir(bundle.path(), &db).expect("scan");
    assert_eq!(report.lockfiles, vec!["web/yarn.lock".to_owned()]);
    assert_eq!(report.packages, 2);
    let ids: Vec<_> = report
        .findings
        .iter()
        .map(|f| (f.id.as_str(), f.severity))
        .collect();
    assert_eq!(
        ids,
        vec![("GHSA-1", Severity::High), ("GHSA-2", Severity::Low)]
    );
    assert_eq!(report.findings[0].fixed, vec!["4.17.21".to_owned()]);
    assert_eq!(report.at_least(Severity::High).len(), 1);
}

#[test]
fn deploy_policy_refuses_only_at_the_threshold_and_only_where_it_applies() {
    let data = database(&[
        advisory("GHSA-h", "npm", "hi", "2.0.0", "HIGH"),
        advisory("GHSA-m", "npm", "mid", "2.0.0", "MODERATE"),
    ]);
    let bundle = tempfile::tempdir().expect("tmp");
    std::fs::write(
        bundle.path().join("yarn.lock"),
        "mid@1:\n  version \"1.0.0\"\n",
    )
    .expect("write");
    let mut policy = DeployPolicy {
        global: false,
        sites: vec!["shop.example.com".into()],
        threshold: None,
        data_dir: data.path().to_path_buf(),
    };
    assert!(policy
        .check("shop.example.com", bundle.path())
        .expect("scan")
        .is_none());
    std::fs::write(
        bundle.path().join("yarn.lock"),
        "mid@1:\n  version \"1.0.0\"\n\nhi@1:\n  version \"1.5.0\"\n",
    )
    .expect("write");
    let refused = policy
        .check("SHOP.example.com", bundle.path())
        .expect("scan");
    assert_eq!(refused.expect("refused").len(), 1);
    assert!(policy
        .check("blog.example.com", bundle.path())
        .expect("scan")
        .is_none());
    // A malformed lockfile names the file relative to the bundle.
    std::fs::write(bundle.path().join("go.sum"), "junk\n").expect("write");
    let error = policy
        .check("shop.example.com", bundle.path())
        .expect_err("bad go.sum");
    assert_eq!(
        error.to_string(),
        "go.sum:1: expected `MODULE VERSION h1:HASH`"
    );
    std::fs::remove_file(bundle.path().join("go.sum")).expect("rm");
    policy.threshold = Some(Severity::Medium);
    policy.global = true;
    assert_eq!(
        policy
            .check("blog.example.com", bundle.path())
            .expect("scan")
            .expect("refused")
            .len(),
        2
    );
    // No advisories imported: the policy refuses rather than waves through.
    let empty = tempfile::tempdir().expect("tmp");
    policy.data_dir = empty.path().to_path_buf();
    let error = policy
        .check("blog.example.com", bundle.path())
        .expect_err("empty db");
    assert!(error.to_string().contains("vulndb import"), "{error}");
}
