//! `prompts:` and the files of `prompts_dir:`: ids and versions, message roles, variables,
//! params, and each template compiled and rendered once with its declared defaults, so a
//! template error is a config problem at its place instead of a failed request. Also a
//! target's `prompt: ID@VERSION`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Cx;
use crate::config::prompt_files::PromptFiles;
use crate::config::raw::{RawConfig, RawPrompt, RawPromptVersion};
use crate::config::templates::{self, GLOBALS};
use crate::config::yaml::{join_index, join_key};
use crate::config::{PromptConfig, PromptMessage, PromptRef, PromptVariable, PromptVersion, PromptsConfig};

/// Roles a prompt message may have; `tool` messages answer a call and cannot stand first.
const ROLES: [&str; 4] = ["system", "developer", "user", "assistant"];

/// Whether `name` may be a prompt id or version: it appears in file names, `ID@VERSION`,
/// metric labels and CLI arguments.
fn is_prompt_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether `name` is a variable a template can refer to.
fn is_identifier(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Cx<'_> {
    /// Checks the prompt at `prompts.<id>` of this document; `origin` names its file.
    pub(super) fn prompt(&mut self, id: &str, raw: &RawPrompt, origin: &str) -> Option<PromptConfig> {
        let path = join_key("prompts", id);
        let mut ok = true;
        if !is_prompt_name(id) {
            self.key_err(&path, format!("invalid prompt id `{id}`: use letters, digits, `-`, `_` and `.`"));
            ok = false;
        }
        if raw.versions.is_empty() {
            self.key_err(&path, format!("prompt `{id}` needs at least one entry in `versions`"));
            return None;
        }
        let versions_path = join_key(&path, "versions");
        let mut versions = BTreeMap::new();
        for (name, version) in &raw.versions {
            let vp = join_key(&versions_path, name);
            if !is_prompt_name(name) {
                self.key_err(&vp, format!("invalid version name `{name}`: use letters, digits, `-`, `_` and `.`"));
                ok = false;
            }
            versions.insert(name.clone(), self.prompt_version(&vp, version));
        }
        let default = match raw.default.as_deref().map(str::trim) {
            Some(default) if versions.contains_key(default) => default.to_string(),
            Some(default) => {
                let known: Vec<&str> = versions.keys().map(String::as_str).collect();
                self.err(
                    &join_key(&path, "default"),
                    format!("unknown version `{default}` (versions: {})", known.join(", ")),
                );
                return None;
            }
            None if versions.len() == 1 => versions.keys().next().cloned().unwrap_or_default(),
            None => {
                self.key_err(&path, format!("prompt `{id}` has several versions: name the `default` one"));
                return None;
            }
        };
        ok.then(|| PromptConfig { id: id.to_string(), default, versions, origin: origin.to_string() })
    }

    fn prompt_version(&mut self, vp: &str, raw: &RawPromptVersion) -> PromptVersion {
        let variables = self.prompt_variables(&join_key(vp, "variables"), raw);
        let messages_path = join_key(vp, "messages");
        if raw.messages.is_empty() {
            self.key_err(vp, "a prompt version needs at least one entry in `messages`");
        }
        let messages: Vec<PromptMessage> = raw
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mp = join_index(&messages_path, i);
                let role = m.role.trim();
                if role.is_empty() {
                    self.key_err(&mp, "message needs a `role` (system, developer, user or assistant)");
                } else if !ROLES.contains(&role) {
                    self.err(
                        &join_key(&mp, "role"),
                        format!("invalid `role` `{role}`: expected system, developer, user or assistant"),
                    );
                }
                self.template(&join_key(&mp, "content"), &m.content, &variables);
                PromptMessage { role: role.to_string(), content: m.content.clone() }
            })
            .collect();
        let params = self.params(&join_key(vp, "params"), raw.params.as_ref());
        let hash = version_hash(&messages, &variables, &params);
        PromptVersion { messages, variables, params, hash }
    }

    fn prompt_variables(&mut self, path: &str, raw: &RawPromptVersion) -> BTreeMap<String, PromptVariable> {
        let mut variables = BTreeMap::new();
        for (name, v) in &raw.variables {
            let at = join_key(path, name);
            if !is_identifier(name) {
                self.key_err(&at, format!("invalid variable name `{name}`: use letters, digits and `_`"));
                continue;
            }
            let required = v.required.unwrap_or(false);
            if required && v.default.is_some() {
                self.err(
                    &join_key(&at, "default"),
                    format!("variable `{name}` is required: it cannot have a `default`"),
                );
            }
            variables.insert(name.clone(), PromptVariable { required, default: v.default.clone() });
        }
        variables
    }

    /// Compiles the template at `path`, checks it uses only declared variables, and renders
    /// it once with the declared defaults (variables without one left unset).
    fn template(&mut self, path: &str, source: &str, variables: &BTreeMap<String, PromptVariable>) {
        let mut env = templates::environment();
        // Unset variables print empty here: only the serving render insists on them.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        let template = match env.template_from_str(source) {
            Ok(template) => template,
            Err(err) => {
                return self.err(path, format!("template error: {}", templates::describe(&err, source)));
            }
        };
        let undeclared: BTreeSet<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|name| !variables.contains_key(name) && !GLOBALS.contains(&name.as_str()))
            .collect();
        if !undeclared.is_empty() {
            let names: Vec<String> = undeclared.iter().map(|n| format!("`{n}`")).collect();
            return self.err(path, format!("the template uses {} not declared in `variables`", names.join(", ")));
        }
        let defaults: BTreeMap<&str, minijinja::Value> = variables
            .iter()
            .filter_map(|(name, v)| {
                Some((name.as_str(), minijinja::Value::from(minijinja::value::Serde(v.default.as_ref()?))))
            })
            .collect();
        if let Err(err) = template.render(minijinja::Value::from(defaults)) {
            self.err(
                path,
                format!("template fails to render with the declared defaults: {}", templates::describe(&err, source)),
            );
        }
    }

    /// Checks a target's `prompt:` (`ID@VERSION`, or `ID` for its default version) against
    /// the prompts found by [`Cx::prompts`].
    pub(super) fn prompt_ref(&mut self, path: &str, text: &str) -> Option<PromptRef> {
        let text = text.trim();
        let (id, version) = match text.split_once('@') {
            Some((id, version)) => (id, Some(version)),
            None => (text, None),
        };
        let found =
            self.prompts.by_id.get(id).map(|p| (p.default.clone(), p.versions.keys().cloned().collect::<Vec<_>>()));
        let Some((default, versions)) = found else {
            // A prompt that failed its own checks was reported there.
            if !self.failed_prompts.contains(id) {
                let known: Vec<&str> = self.prompts.by_id.keys().map(String::as_str).collect();
                let known = if known.is_empty() {
                    "no prompts are defined".into()
                } else {
                    format!("known: {}", known.join(", "))
                };
                self.err(path, format!("unknown prompt `{id}` ({known}); write ID@VERSION"));
            }
            return None;
        };
        let version = version.map_or(default, str::to_string);
        if !versions.contains(&version) {
            self.err(path, format!("prompt `{id}` has no version `{version}` (versions: {})", versions.join(", ")));
            return None;
        }
        Some(PromptRef { id: id.to_string(), version })
    }

    /// `prompts:` merged with the prompts of `prompts_dir` (checked in their own files): the
    /// result is kept in the pass for the targets' `prompt:` checks.
    pub(super) fn prompts(&mut self, raw: &RawConfig, files: Option<&PromptFiles>, from_files: Vec<PromptConfig>) {
        let mut by_id: BTreeMap<String, PromptConfig> =
            from_files.into_iter().map(|prompt| (prompt.id.clone(), prompt)).collect();
        let origin = self.origin.to_string();
        for (id, prompt) in &raw.prompts {
            let path = join_key("prompts", id);
            if let Some(file) = files.and_then(|files| files.files.iter().find(|file| &file.id == id)) {
                self.key_err(&path, format!("prompt `{id}` is also defined by {}", file.origin));
                continue;
            }
            match self.prompt(id, prompt, &origin) {
                Some(prompt) => {
                    by_id.insert(id.clone(), prompt);
                }
                None => {
                    self.failed_prompts.insert(id.clone());
                }
            }
        }
        self.prompts = PromptsConfig {
            dir: files.map(|files| files.dir.clone()),
            files_hash: files.map(|files| files.hash.clone()),
            by_id,
        };
    }
}

/// `sha256:` + hex over what the version renders: messages, variables and params.
fn version_hash(
    messages: &[PromptMessage],
    variables: &BTreeMap<String, PromptVariable>,
    params: &serde_json::Map<String, Value>,
) -> String {
    let messages: Vec<Value> = messages.iter().map(|m| json!([m.role, m.content])).collect();
    let variables: serde_json::Map<String, Value> = variables
        .iter()
        .map(|(name, v)| (name.clone(), json!({ "required": v.required, "default": v.default })))
        .collect();
    let canonical = json!({ "messages": messages, "variables": variables, "params": params });
    format!("sha256:{}", hex::encode(Sha256::digest(canonical.to_string().as_bytes())))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, load_str};

    const BASE: &str = "backends: { mock: { kind: mock } }\nauth: { mode: none }\n";

    fn load(text: &str) -> Result<Config, Vec<String>> {
        load_str(&format!("{BASE}{text}"), "w.yaml", &|_| None)
            .map_err(|e| e.problems.iter().map(ToString::to_string).collect())
    }

    fn problems(text: &str) -> Vec<String> {
        load(text).err().unwrap_or_default()
    }

    const GOOD: &str = r#"prompts:
  support-answer:
    default: v2
    versions:
      v1:
        messages: [ { role: system, content: "About {{ product }}." }, { role: user, content: "{{ question }}" } ]
        variables: { product: { default: weir }, question: { required: true } }
      v2:
        messages: [ { role: user, content: "{% for q in questions %}{{ loop.index }}. {{ q }}\n{% endfor %}" } ]
        variables: { questions: { default: [a, b] } }
        params: { temperature: 0.2 }
models:
  m:
    targets:
      - { backend: mock, model: a, variant: a, prompt: support-answer@v1 }
      - { backend: mock, model: b, variant: b, prompt: support-answer }
"#;

    #[test]
    fn a_valid_prompt_section_loads_typed() {
        let config = match load(GOOD) {
            Ok(config) => config,
            Err(problems) => panic!("{problems:?}"),
        };
        let prompt = &config.prompts.by_id["support-answer"];
        assert_eq!(prompt.default, "v2");
        assert_eq!(prompt.origin, "w.yaml");
        let v1 = &prompt.versions["v1"];
        assert_eq!(v1.messages[1].content, "{{ question }}");
        assert!(v1.variables["question"].required);
        assert_eq!(v1.variables["product"].default, Some(serde_json::json!("weir")));
        assert_eq!(prompt.versions["v2"].params.get("temperature"), Some(&serde_json::json!(0.2)));
        let targets = &config.models["m"].targets;
        assert_eq!(targets[0].prompt.as_ref().map(ToString::to_string).as_deref(), Some("support-answer@v1"));
        // A bare id fixes the prompt's default version.
        assert_eq!(targets[1].prompt.as_ref().map(ToString::to_string).as_deref(), Some("support-answer@v2"));
    }

    #[test]
    fn template_errors_are_placed_at_the_message() {
        let text = "prompts:\n  p:\n    versions:\n      v1:\n        messages:\n          - { role: system, content: \"{% if x %}open\" }\n        variables: { x: {} }\n";
        let found = problems(text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("w.yaml:8:38: template error: syntax error"), "{found:?}");
    }

    #[test]
    fn undeclared_variables_and_failing_defaults_are_problems() {
        let text = "prompts:\n  p:\n    versions:\n      v1:\n        messages:\n          - { role: system, content: \"{{ prodcut }}\" }\n          - { role: user, content: \"{{ n + 'x' }}\" }\n        variables: { product: {}, n: { default: 1 } }\n";
        let found = problems(text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("uses `prodcut` not declared in `variables`"), "{found:?}");
        assert!(found[1].contains("fails to render with the declared defaults"), "{found:?}");
    }

    #[test]
    fn names_roles_defaults_and_references_are_checked() {
        let text = r#"prompts:
  p:
    versions:
      v1: { messages: [ { role: robot, content: hi } ], variables: { "bad name": {}, q: { required: true, default: x } } }
      v2: { messages: [] }
  "x@y": { versions: { v1: { messages: [ { role: user, content: hi } ] } } }
  q: { default: v3, versions: { v1: { messages: [ { role: user, content: hi } ] } } }
models:
  m:
    targets:
      - { backend: mock, model: a, variant: a, prompt: nope@v1 }
      - { backend: mock, model: b, variant: b, prompt: p@v1 }
      - { backend: mock, model: c, variant: c, prompt: q@v1 }
"#;
        let found = problems(text).join("\n");
        for expected in [
            "invalid `role` `robot`",
            "invalid variable name `bad name`",
            "variable `q` is required: it cannot have a `default`",
            "a prompt version needs at least one entry in `messages`",
            "prompt `p` has several versions: name the `default` one",
            "invalid prompt id `x@y`",
            "unknown version `v3` (versions: v1)",
            "unknown prompt `nope` (known: ) ",
        ] {
            if expected.starts_with("unknown prompt") {
                assert!(found.contains("unknown prompt `nope`"), "{found}");
            } else {
                assert!(found.contains(expected), "missing {expected:?} in:\n{found}");
            }
        }
        // Targets naming a prompt that was reported invalid are not reported again.
        assert!(!found.contains("unknown prompt `p`") && !found.contains("unknown prompt `q`"), "{found}");
    }

    #[test]
    fn prompt_files_are_read_from_prompts_dir_and_placed_in_their_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let prompts = dir.path().join("prompts");
        std::fs::create_dir(&prompts)?;
        std::fs::write(
            prompts.join("faq.yaml"),
            "default: v1\nversions:\n  v1:\n    messages:\n      - { role: system, content: \"Costs ${PRICE}: {{ topic }}\" }\n    variables: { topic: { default: all } }\n",
        )?;
        std::fs::write(
            prompts.join("broken.yml"),
            "versions:\n  v1:\n    messages: [ { role: user, content: \"{{ x\" } ]\n    colour: red\n",
        )?;
        let config_path = dir.path().join("weir.yaml");
        std::fs::write(
            &config_path,
            format!(
                "{BASE}prompts_dir: prompts/\nprompts:\n  faq: {{ versions: {{ v1: {{ messages: [ {{ role: user, content: hi }} ] }} }} }}\n"
            ),
        )?;
        let err = match crate::config::load_file(&config_path) {
            Ok(_) => panic!("problems expected"),
            Err(err) => err.to_string(),
        };
        let broken = prompts.join("broken.yml").display().to_string();
        let faq = prompts.join("faq.yaml").display().to_string();
        assert!(err.contains(&format!("{broken}:3:40: template error")), "{err}");
        assert!(
            err.contains(&format!("{broken}:4:5: unknown key `colour` (expected one of: messages, variables, params)")),
            "{err}"
        );
        assert!(err.contains(&format!("prompt `faq` is also defined by {faq}")), "{err}");

        // Fixed: the file's prompt is served, `${PRICE}` kept as written.
        std::fs::remove_file(prompts.join("broken.yml"))?;
        std::fs::write(&config_path, format!("{BASE}prompts_dir: prompts/\n"))?;
        let config = crate::config::load_file(&config_path)?;
        let faq_prompt = &config.prompts.by_id["faq"];
        assert_eq!(faq_prompt.origin, faq);
        assert_eq!(faq_prompt.versions["v1"].messages[0].content, "Costs ${PRICE}: {{ topic }}");
        assert_eq!(config.prompts.dir.as_deref(), Some(prompts.join("").as_path()));
        assert!(config.prompts.files_hash.is_some());
        Ok(())
    }

    #[test]
    fn a_missing_prompts_dir_is_placed_at_the_key() {
        let found = problems("prompts_dir: /nonexistent/prompts\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("w.yaml:3:14: `prompts_dir` /nonexistent/prompts: cannot list the directory"),
            "{found:?}"
        );
    }
}
