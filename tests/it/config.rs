//! Config files as users write them: the shipped examples validate, a broken file lists every
//! problem with its place, and `weir key hash` gives the form `keys[].key` takes.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::{self, Timeouts, UPSTREAM_KEY, hand};

fn weir() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    // Examples must validate in a bare environment, not thanks to a developer's variables.
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).stdin(Stdio::null());
    command
}

fn check(path: &Path) -> Output {
    weir().arg("check").arg("--config").arg(path).output().expect("run weir check")
}

#[test]
fn every_example_config_checks_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{} must hold the example configs: {err}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no *.yaml example configs; examples are required", dir.display());
    assert!(files.iter().any(|f| f.ends_with("weir.yaml")), "config/weir.yaml (the default config) is missing");
    for file in &files {
        let output = check(file);
        assert!(
            output.status.success(),
            "weir check {} failed ({}):\n{}",
            file.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The configs the Kubernetes overlays mount (deploy/validate.sh checks them rendered, too).
#[test]
fn the_kubernetes_configs_check_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["deploy/kubernetes/base/weir.yaml", "deploy/kubernetes/overlays/production/weir.yaml"] {
        let output = check(&root.join(file));
        assert!(output.status.success(), "weir check {file} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
}

/// 1-based line and column of the first `token` on the first line containing `line_marker`.
fn place(text: &str, line_marker: &str, token: &str) -> (usize, usize) {
    let (index, line) =
        text.lines().enumerate().find(|(_, l)| l.contains(line_marker)).expect("marker line in the fixture");
    let col = line.find(token).expect("token on the marker line") + 1;
    (index + 1, col)
}

#[test]
fn a_broken_config_lists_every_problem_with_its_place() {
    let text = "\
# broken on purpose: three independent problems
server:
  listen: 127.0.0.1:0
  max_body: lots
backends:
  up:
    kind: openai
    base_url: http://127.0.0.1:9/v1
    colour: blue
models:
  chat:
    targets:
      - backend: nowhere
        model: m
";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, text).expect("write fixture");

    let output = check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "exit 1 for an invalid config; stderr:\n{stderr}");

    let origin = path.display().to_string();
    let problems: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&format!("{origin}:"))).collect();
    for line in &problems {
        let rest = &line[origin.len() + 1..];
        let mut parts = rest.splitn(3, ':');
        let line_no = parts.next().and_then(|n| n.parse::<usize>().ok());
        let col_no = parts.next().and_then(|n| n.parse::<usize>().ok());
        let message = parts.next().unwrap_or_default();
        assert!(line_no.is_some() && col_no.is_some(), "not PATH:LINE:COL: message: {line}");
        assert!(message.starts_with(' ') && message.len() > 1, "no message: {line}");
    }
    // A value's problem points at the value; an unknown key at the key.
    let expected = [
        ("bad size", place(text, "max_body", "lots")),
        ("unknown key", place(text, "colour", "colour")),
        ("unknown backend", place(text, "backend: nowhere", "nowhere")),
    ];
    for (what, (line, col)) in expected {
        let prefix = format!("{origin}:{line}:{col}: ");
        assert!(
            problems.iter().any(|p| p.starts_with(&prefix)),
            "no {what} problem at {line}:{col}; stderr:\n{stderr}"
        );
    }
    assert!(problems.len() >= 3, "every problem is listed, not only the first:\n{stderr}");
}

#[test]
fn the_loader_expands_variables_and_units() {
    let yaml = support::standard_yaml("${UP_URL}", Timeouts::default())
        .replace(UPSTREAM_KEY, "${UP_KEY}")
        .replace("shutdown_timeout: 5s", "shutdown_timeout: ${DRAIN:-5s}");
    let config = support::config_with_env(&yaml, &[("UP_URL", "http://127.0.0.1:9/v1/"), ("UP_KEY", UPSTREAM_KEY)]);
    let by_hand = hand::standard_config("http://127.0.0.1:9/v1", Timeouts::default());

    let up = &config.backends["up"];
    assert_eq!(up.base_url, "http://127.0.0.1:9/v1", "base_url without its trailing slash");
    assert_eq!(up.api_key.as_deref(), Some(UPSTREAM_KEY));
    assert_eq!(*up, by_hand.backends["up"]);
    assert_eq!(config.backends["mock"], by_hand.backends["mock"]);
    assert_eq!(config.server.max_body, 64 * 1024);
    assert_eq!(config.server.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(config.auth, by_hand.auth);
    for name in ["chat", "embed", "local"] {
        assert_eq!(config.models[name].targets, by_hand.models[name].targets, "model {name}");
    }
    let keys: Vec<_> = config.keys.iter().map(|k| (k.name.clone(), k.hash, k.models.clone())).collect();
    let hand_keys: Vec<_> = by_hand.keys.iter().map(|k| (k.name.clone(), k.hash, k.models.clone())).collect();
    assert_eq!(keys, hand_keys);
}

#[test]
fn key_hash_prints_the_config_form() {
    for input in ["test", "test\n"] {
        let mut child = weir()
            .args(["key", "hash"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run weir key hash");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write key");
        let output = child.wait_with_output().expect("weir key hash finishes");
        assert!(output.status.success());
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim_end(),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
    assert_eq!(weir::auth::hash_key("test"), "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
}
