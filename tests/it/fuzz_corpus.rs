//! The fuzz targets' corpora as ordinary tests (stable): every file in
//! `fuzz/corpus/<target>/` goes through the same entry point with the same invariants as
//! the fuzz target (`fuzz/src/checks.rs`, shared by path), so what fuzzing found once stays
//! checked on every CI run without nightly.

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::path::Path;

fn corpus_files(target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn run_corpus(target: &str) {
    let (_, check) = checks::TARGETS.iter().find(|(name, _)| *name == target).unwrap();
    let files = corpus_files(target);
    assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
    for file in files {
        let data = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "fuzz/corpus/{target}/{} fails its invariants (message above)", file.display());
    }
}

#[test]
fn every_target_has_a_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, _) in checks::TARGETS {
        assert!(dir.join(target).is_dir(), "no corpus for {target}");
    }
}

#[test]
fn parse_head_corpus() {
    run_corpus("parse_head");
}

#[test]
fn sse_filter_corpus() {
    run_corpus("sse_filter");
}

#[test]
fn assemble_corpus() {
    run_corpus("assemble");
}

#[test]
fn anthropic_stream_corpus() {
    run_corpus("anthropic_stream");
}

#[test]
fn responses_stream_corpus() {
    run_corpus("responses_stream");
}

#[test]
fn messages_stream_corpus() {
    run_corpus("messages_stream");
}
