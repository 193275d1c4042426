//! Tests of the YAML reader: typing, positions, expansion and reported problems.

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "HOST" => Some("example.com".into()),
        "TRICKY" => Some("a # b: c".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn parse_ok(text: &str) -> Document {
    match parse(text, "t.yaml", &env) {
        Ok(doc) => doc,
        Err(err) => panic!("unexpected error: {err}"),
    }
}

fn parse_err(text: &str) -> Vec<String> {
    match parse(text, "t.yaml", &env) {
        Ok(doc) => panic!("expected an error, got {:?}", doc.root),
        Err(err) => err.problems.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn types_scalars_and_records_positions() {
    let doc = parse_ok("a:\n  b: [1, 2.5, true, ~, x, '7']\n  \"c.d\": { e: 0x10 }\n");
    assert_eq!(doc.root, serde_json::json!({"a": {"b": [1, 2.5, true, null, "x", "7"], "c.d": {"e": 16}}}));
    assert_eq!(doc.value_pos("a.b[4]"), Pos { line: 2, col: 24 });
    assert_eq!(doc.key_pos("a.b"), Pos { line: 2, col: 3 });
    assert_eq!(doc.key_pos("a.\"c.d\".e"), Pos { line: 3, col: 12 });
    assert_eq!(doc.plain_text("a.\"c.d\".e"), Some("0x10"));
    // Unknown paths fall back to the nearest ancestor.
    assert_eq!(doc.value_pos("a.b[9].zz"), Pos { line: 2, col: 6 });
}

#[test]
fn empty_file_is_empty_mapping() {
    assert_eq!(parse_ok("").root, serde_json::json!({}));
    assert_eq!(parse_ok("# only a comment\n").root, serde_json::json!({}));
}

#[test]
fn expands_env_after_parsing() {
    let doc = parse_ok("a: ${TRICKY}\nb: \"${MISSING:-dflt}\"\nc: ${EMPTY:-x}\nd: $${HOST} ${HOST}$\n");
    assert_eq!(doc.root, serde_json::json!({"a": "a # b: c", "b": "dflt", "c": "x", "d": "${HOST} example.com$"}));
}

#[test]
fn references_work_inside_flow_mappings() {
    let doc = parse_ok("a: { k: ${NOPE:-}, h: \"${HOST}\", n: [${MISSING:-x}, 2] }\n# ${IN_COMMENT}\nb: ${HOST}\n");
    assert_eq!(doc.root, serde_json::json!({"a": {"k": "", "h": "example.com", "n": ["x", 2]}, "b": "example.com"}));
    assert_eq!(doc.value_pos("a.n[1]"), Pos { line: 1, col: 53 });
    assert_eq!(doc.value_pos("b"), Pos { line: 3, col: 4 });
}

#[test]
fn missing_env_var_is_positioned() {
    assert_eq!(
        parse_err("a: 1\nb:\n  c: ${NOPE}\n"),
        ["t.yaml:3:6: environment variable `NOPE` is not set (write `${NOPE:-default}` to give a default)"]
    );
    assert!(parse_err("a: ${bad name}\n")[0].starts_with("t.yaml:1:4: invalid variable reference"));
    assert!(parse_err("a: ${OPEN\n")[0].starts_with("t.yaml:1:4: unterminated"));
}

#[test]
fn syntax_error_is_positioned() {
    let problems = parse_err("a: 1\nb: [1, 2\nc: 3\n");
    assert_eq!(problems.len(), 1);
    assert!(problems[0].starts_with("t.yaml:3:"), "{problems:?}");
    let problems = parse_err("a:\n  b: 1\n c: 2\n");
    assert!(problems[0].starts_with("t.yaml:3:"), "{problems:?}");
    assert!(problems[0].contains("invalid YAML"));
}

#[test]
fn duplicate_keys_are_errors() {
    assert_eq!(
        parse_err("a: 1\nb:\n  x: 1\n  x: 2\na: 3\n"),
        ["t.yaml:4:3: duplicate key `x` (first on line 3)", "t.yaml:5:1: duplicate key `a` (first on line 1)",]
    );
}

#[test]
fn anchors_and_aliases_are_supported() {
    let doc = parse_ok("base: &b { x: 1 }\nother: *b\n");
    assert_eq!(doc.root["other"], serde_json::json!({"x": 1}));
    assert_eq!(doc.value_pos("other.x"), Pos { line: 2, col: 8 });
}

#[test]
fn rejects_non_mapping_root_and_complex_keys() {
    assert_eq!(
        parse_err("- a\n"),
        ["t.yaml:1:1: the config must be a mapping of sections (`server:`, `backends:`, ...)"]
    );
    assert!(parse_err("? [a, b]\n: 1\n")[0].contains("mapping keys must be plain words"));
    assert!(parse_err("a: 1\n---\nb: 2\n")[0].starts_with("t.yaml:2:1: only one YAML document"));
}
