//! Fixtures, golden files and stream drivers shared by the translators' tests.

use std::path::PathBuf;

use super::{StreamError, StreamTranslate};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/apis").join(name)
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(path(name)).unwrap_or_else(|err| panic!("{name}: {err}"))
}

/// Compares with a golden file; `UPDATE_GOLDEN=1` rewrites it (then review the diff).
pub fn golden(name: &str, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path(name), actual).expect("write golden");
        return;
    }
    assert_eq!(actual, fixture(name), "golden file {name} differs (UPDATE_GOLDEN=1 rewrites it)");
}

/// Runs `pieces` through a translator, then ends it.
pub fn run(translator: &mut dyn StreamTranslate, pieces: &[&[u8]]) -> (Vec<u8>, Result<(), StreamError>) {
    let mut out = Vec::new();
    for piece in pieces {
        if let Err(err) = translator.push(piece, &mut out) {
            return (out, Err(err));
        }
    }
    let end = translator.finish(&mut out);
    (out, end)
}

/// The `event:` names of an SSE text, in order.
pub fn event_names(sse: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(sse).lines().filter_map(|l| l.strip_prefix("event: ")).map(str::to_owned).collect()
}
