use super::*;

fn names(parsed: &Parsed) -> Vec<(String, String, usize)> {
    parsed
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone(), p.line))
        .collect()
}

fn p(name: &str, version: &str, line: usize) -> (String, String, usize) {
    (name.into(), version.into(), line)
}

#[test]
fn npm_lock_v3_reads_install_paths_and_scoped_names() {
    let text = r#"{
  "name": "app",
  "lockfileVersion": 3,
  "packages": {
    "": {"name": "app", "version": "1.0.0"},
    "node_modules/@scope/pkg": {
      "version": "2.1.0"
    },
    "node_modules/a/node_modules/b": {
      "version": "0.3.0-beta.1"
    },
    "node_modules/local": {"link": true, "resolved": "../local"},
    "node_modules/gitdep": {"version": "git+https://example.invalid/x.git"}
  }
}"#;
    let parsed = npm_lock(Path::new("p"), "package-lock.json", text).expect("valid");
    let mut got = names(&parsed);
    got.sort();
    assert_eq!(
        got,
        vec![p("@scope/pkg", "2.1.0", 6), p("b", "0.3.0-beta.1", 9)]
    );
    assert_eq!(parsed.notes.len(), 1, "{:?}", parsed.notes);
}

#[test]
fn npm_lock_v1_walks_nested_dependencies() {
    let text = r#"{
  "lockfileVersion": 1,
  "dependencies": {
    "x": {"version": "1.0.0", "dependencies": {"y": {"version": "2.0.0"}}}
  }
}"#;
    let parsed = npm_lock(Path::new("p"), "npm-shrinkwrap.json", text).expect("valid");
    let mut got: Vec<_> = names(&parsed).into_iter().map(|(n, v, _)| (n, v)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![("x".into(), "1.0.0".into()), ("y".into(), "2.0.0".into())]
    );
}

#[test]
fn malformed_npm_lock_names_file_and_line() {
    let error = npm_lock(
        Path::new("app/package-lock.json"),
        "x",
        "{\n\"packages\": {\n,}\n}",
    )
    .expect_err("bad json");
    assert!(
        error.to_string().starts_with("app/package-lock.json:3:"),
        "{error}"
    );
    let error = npm_lock(
        Path::new("l"),
        "x",
        "{\n  \"packages\": {\n    \"node_modules/q\": {}\n  }\n}",
    )
    .expect_err("no version");
    assert!(error.to_string().starts_with("l:3:"), "{error}");
}

#[test]
fn yarn_classic_and_berry_entries() {
    let classic = "# yarn lockfile v1\n\n\"@babel/core@^7.0.0\", \"@babel/core@^7.1.0\":\n  version \"7.1.2\"\n  resolved \"https://r/x\"\n  dependencies:\n    debug \"^4\"\n\nleft-pad@1.3.0:\n  version \"1.3.0\"\n";
    let parsed = yarn_lock(Path::new("y"), "yarn.lock", classic).expect("valid");
    assert_eq!(
        names(&parsed),
        vec![p("@babel/core", "7.1.2", 3), p("left-pad", "1.3.0", 9)]
    );

    let berry = "__metadata:\n  version: 6\n\n\"lodash@npm:^4.17.20\":\n  version: 4.17.20\n  resolution: \"lodash@npm:4.17.20\"\n\n\"app@workspace:.\":\n  version: 0.0.0-use.local\n";
    let parsed = yarn_lock(Path::new("y"), "yarn.lock", berry).expect("valid");
    assert_eq!(names(&parsed), vec![p("lodash", "4.17.20", 4)]);

    let error = yarn_lock(
        Path::new("y.lock"),
        "y",
        "a@1:\n  resolved \"x\"\nb@2:\n  version \"2.0.0\"\n",
    )
    .expect_err("no version");
    assert!(error.to_string().starts_with("y.lock:1:"), "{error}");
}

#[test]
fn requirements_pins_extras_markers_hashes_and_notes() {
    let text = "# comment\nDjango==4.2.1  # pinned\nrequests[socks]==2.31.0 ; python_version >= \"3.8\"\nflask>=2.0\n-r other.txt\nurllib3==1.26.5 \\\n    --hash=sha256:abc\ncryptography===41.0.0\n";
    let parsed = requirements(Path::new("r"), "requirements.txt", text).expect("valid");
    assert_eq!(
        names(&parsed),
        vec![
            p("Django", "4.2.1", 2),
            p("requests", "2.31.0", 3),
            p("urllib3", "1.26.5", 6),
            p("cryptography", "41.0.0", 8)
        ]
    );
    assert_eq!(parsed.notes.len(), 2, "{:?}", parsed.notes);
    assert!(parsed.notes[0].contains("flask"));

    let error = requirements(Path::new("req.txt"), "r", "ok==1.0\n??? what\n").expect_err("junk");
    assert!(error.to_string().starts_with("req.txt:2:"), "{error}");
    let error = requirements(Path::new("req.txt"), "r", "x==not_a_version!\n").expect_err("bad");
    assert!(error.to_string().starts_with("req.txt:1:"), "{error}");
}

#[test]
fn cargo_and_poetry_locks_skip_local_and_git_packages() {
    let cargo = "version = 4\n\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\n\n[[package]]\nname = \"smallvec\"\nversion = \"0.6.9\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n\n[[package]]\nname = \"g\"\nversion = \"1.0.0\"\nsource = \"git+https://example.invalid/g\"\n";
    let parsed = cargo_lock(Path::new("c"), "Cargo.lock", cargo).expect("valid");
    assert_eq!(names(&parsed), vec![p("smallvec", "0.6.9", 7)]);
    assert_eq!(parsed.notes.len(), 2);

    let poetry = "[[package]]\nname = \"jinja2\"\nversion = \"2.10\"\n\n[[package]]\nname = \"mine\"\nversion = \"0.1\"\n[package.source]\ntype = \"directory\"\nurl = \"../mine\"\n";
    let parsed = poetry_lock(Path::new("p"), "poetry.lock", poetry).expect("valid");
    assert_eq!(names(&parsed), vec![p("jinja2", "2.10", 1)]);

    let error = cargo_lock(
        Path::new("Cargo.lock"),
        "c",
        "[[package]]\nname = \"x\"\nversion = 1\n",
    )
    .expect_err("bad");
    assert!(error.to_string().starts_with("Cargo.lock:3:"), "{error}");
}

#[test]
fn go_sum_keeps_built_modules_once() {
    let text = "github.com/a/b v1.2.3 h1:abc=\ngithub.com/a/b v1.2.3/go.mod h1:def=\ngithub.com/c/d v0.1.0/go.mod h1:x=\ngolang.org/x/net v0.0.0-20200101000000-abcdefabcdef h1:y=\n";
    let parsed = go_sum(Path::new("g"), "go.sum", text).expect("valid");
    assert_eq!(
        names(&parsed),
        vec![
            p("github.com/a/b", "v1.2.3", 1),
            p("golang.org/x/net", "v0.0.0-20200101000000-abcdefabcdef", 4)
        ]
    );
    let error = go_sum(Path::new("go.sum"), "g", "a v1 h1:x\nbroken line\n").expect_err("bad");
    assert!(error.to_string().starts_with("go.sum:1:"), "{error}");
}
