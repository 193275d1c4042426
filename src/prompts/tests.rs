use serde_json::{Value, json};

use super::*;
use crate::config::load_str;

const CONFIG: &str = r#"
backends: { mock: { kind: mock } }
models:
  support:
    targets:
      - { backend: mock, model: a, variant: v1, prompt: support-answer@v1 }
      - { backend: mock, model: b, variant: v2, prompt: support-answer@v2 }
auth: { mode: none }
prompts:
  support-answer:
    default: v2
    versions:
      v1:
        messages:
          - { role: system, content: "You answer questions about {{ product }}. Be brief." }
          - { role: user, content: "{{ question }}" }
        variables: { product: { default: weir }, question: { required: true } }
      v2:
        messages:
          - role: system
            content: |
              You are the {{ product }} support desk.
              {% if docs %}
              Cite: {% for d in docs %}{{ d }}{% if not loop.last %}, {% endif %}{% endfor %}
              {% endif %}
          - { role: user, content: "{{ question }}" }
        variables: { product: { default: weir }, question: { required: true }, docs: {} }
        params: { temperature: 0.2 }
  greeting:
    versions:
      only: { messages: [ { role: system, content: "Hello {{ name }}" } ], variables: { name: { default: you } } }
"#;

fn store() -> PromptStore {
    match load_str(CONFIG, "t.yaml", &|_| None) {
        Ok(config) => PromptStore::build(&config.prompts),
        Err(err) => panic!("valid config: {err}"),
    }
}

fn vars(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn contents(rendered: &Rendered<'_>) -> Vec<(String, String)> {
    rendered.messages.iter().map(|m| (m.role.to_string(), m.content.clone())).collect()
}

#[test]
fn renders_the_default_version_with_defaults_and_request_variables() {
    let store = store();
    let rendered = store.render("support-answer", None, &vars(json!({"question": "How?", "docs": ["a", "b"]})));
    let rendered = rendered.map_err(|e| e.to_string());
    let Ok(rendered) = rendered else { panic!("{rendered:?}") };
    assert_eq!((rendered.id, rendered.version), ("support-answer", "v2"));
    assert_eq!(
        contents(&rendered),
        [
            ("system".to_string(), "You are the weir support desk.\nCite: a, b".to_string()),
            ("user".to_string(), "How?".to_string())
        ]
    );
    assert_eq!(rendered.params.get("temperature"), Some(&json!(0.2)));
}

#[test]
fn an_optional_variable_left_out_is_falsy_and_a_request_value_beats_the_default() {
    let store = store();
    let rendered = store.render("support-answer", Some("v1"), &vars(json!({"question": "Q", "product": "Acme"})));
    assert_eq!(
        rendered.map(|r| contents(&r)[0].1.clone()),
        Ok("You answer questions about Acme. Be brief.".to_string())
    );
    let rendered = store.render("support-answer", Some("v2"), &vars(json!({"question": "Q"})));
    assert_eq!(rendered.map(|r| contents(&r)[0].1.clone()), Ok("You are the weir support desk.\n".to_string()));
}

#[test]
fn each_error_names_its_field() {
    let store = store();
    let param = |r: Result<Rendered<'_>, PromptError>| r.err().map(|e| e.param());
    assert_eq!(param(store.render("nope", None, &Map::new())), Some("prompt.id".into()));
    assert_eq!(param(store.render("support-answer", Some("v9"), &Map::new())), Some("prompt.version".into()));
    assert_eq!(param(store.render("support-answer", None, &Map::new())), Some("prompt.variables.question".into()));
    let extra = vars(json!({"question": "q", "colour": "red"}));
    assert_eq!(param(store.render("support-answer", None, &extra)), Some("prompt.variables.colour".into()));
    let err = store.render("support-answer", None, &Map::new()).err().map(|e| e.to_string());
    assert_eq!(err.as_deref(), Some("prompt `support-answer@v2` needs the variable `question`"));
}

#[test]
fn a_template_that_fails_on_the_clients_values_is_a_render_error() {
    let store = store();
    // Iterating a number fails at render time.
    let bad = vars(json!({"question": "q", "docs": 5}));
    let err = store.render("support-answer", Some("v2"), &bad).err();
    assert!(matches!(err, Some(PromptError::Render { .. })), "{err:?}");
    assert_eq!(err.map(|e| e.param()), Some("prompt".into()));
}

#[test]
fn the_request_version_beats_the_targets_and_the_targets_beats_the_default() {
    let store = store();
    let v1 = PromptRef { id: "support-answer".into(), version: "v1".into() };
    let call = PromptCall { id: "support-answer".into(), version: None, variables: vars(json!({"question": "q"})) };
    let version = |r: Result<Option<Rendered<'_>>, PromptError>| r.ok().flatten().map(|r| r.version.to_string());
    assert_eq!(version(store.render_for(Some(&call), Some(&v1))), Some("v1".into()));
    assert_eq!(version(store.render_for(Some(&call), None)), Some("v2".into()));
    let pinned = PromptCall { version: Some("v2".into()), ..call.clone() };
    assert_eq!(version(store.render_for(Some(&pinned), Some(&v1))), Some("v2".into()));
    // Another prompt's target version does not apply.
    let other = PromptRef { id: "greeting".into(), version: "only".into() };
    assert_eq!(version(store.render_for(Some(&call), Some(&other))), Some("v2".into()));
    // No prompt in the request: the target's, with defaults.
    assert_eq!(version(store.render_for(None, Some(&other))), Some("only".into()));
    assert_eq!(store.render_for(None, None), Ok(None));
}

#[test]
fn prompt_calls_are_read_strictly() {
    let call = PromptCall::from_json(&json!({"id": "p", "version": "v1", "variables": {"a": 1}}));
    assert_eq!(call, Ok(PromptCall { id: "p".into(), version: Some("v1".into()), variables: vars(json!({"a": 1})) }));
    let param = |v: Value| PromptCall::from_json(&v).err().map(|e| e.param());
    assert_eq!(param(json!("p")), Some("prompt".into()));
    assert_eq!(param(json!({})), Some("prompt.id".into()));
    assert_eq!(param(json!({"id": 3})), Some("prompt.id".into()));
    assert_eq!(param(json!({"id": "p", "version": 2})), Some("prompt.version".into()));
    assert_eq!(param(json!({"id": "p", "variables": []})), Some("prompt.variables".into()));
    assert_eq!(param(json!({"id": "p", "vars": {}})), Some("prompt".into()));
}

#[test]
fn a_client_cannot_make_a_template_run_away() {
    let config = CONFIG.replace(
        "Hello {{ name }}",
        "{% for i in range(n) %}{% for j in range(n) %}{{ name }}{% endfor %}{% endfor %}",
    );
    let config = config
        .replace("variables: { name: { default: you } }", "variables: { name: { default: you }, n: { default: 1 } }");
    let store = match load_str(&config, "t.yaml", &|_| None) {
        Ok(config) => PromptStore::build(&config.prompts),
        Err(err) => panic!("valid config: {err}"),
    };
    let huge = vars(json!({"n": 100000, "name": "x".repeat(1000)}));
    let err = store.render("greeting", None, &huge).err();
    assert!(matches!(err, Some(PromptError::Render { .. })), "{err:?}");
}

#[test]
fn the_listing_has_every_version_with_its_hash() {
    let store = store();
    let listing = serde_json::to_value(store.list()).unwrap_or_default();
    assert_eq!(listing[1]["id"], "support-answer");
    assert_eq!(listing[1]["default"], "v2");
    assert_eq!(listing[1]["versions"][0]["version"], "v1");
    let hash = listing[1]["versions"][0]["hash"].as_str().unwrap_or_default();
    assert!(hash.starts_with("sha256:") && hash.len() == 71, "{hash}");
    assert_ne!(listing[1]["versions"][0]["hash"], listing[1]["versions"][1]["hash"]);
    assert_eq!(listing[1]["versions"][0]["variables"][1], json!({"name": "question", "required": true}));
}

#[test]
fn the_cache_fingerprint_follows_the_content_of_every_version_in_play() {
    let edited = CONFIG.replace("Be brief.", "Be very brief.");
    let stores = [CONFIG, edited.as_str()].map(|text| match load_str(text, "t.yaml", &|_| None) {
        Ok(config) => PromptStore::build(&config.prompts),
        Err(err) => panic!("valid config: {err}"),
    });
    let call = PromptCall { id: "support-answer".into(), ..PromptCall::default() };
    let fingerprint =
        |store: &PromptStore, call: Option<&PromptCall>| PromptPlan { store, call }.fingerprint(std::iter::empty());
    assert_ne!(fingerprint(&stores[0], Some(&call)), fingerprint(&stores[1], Some(&call)));
    assert_eq!(fingerprint(&stores[0], None), "");
    let greeting = PromptRef { id: "greeting".into(), version: "only".into() };
    let fixed = PromptPlan { store: &stores[0], call: None }.fingerprint(std::iter::once(&greeting));
    assert!(fixed.starts_with("greeting=only;only:sha256:"), "{fixed}");
    assert_eq!(fixed, PromptPlan { store: &stores[1], call: None }.fingerprint(std::iter::once(&greeting)));
}
