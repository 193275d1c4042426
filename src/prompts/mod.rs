//! Prompts: versioned prompt templates served by weir, rendered into the messages a request
//! sends upstream.
//!
//! Owns: compiling every version of every prompt once per config ([`PromptStore::build`], in
//! the sandboxed dialect of [`crate::config::templates`]); reading a request's `prompt` object
//! ([`PromptCall`]); choosing the version (the request's, else the one the target fixes, else
//! the prompt's default); checking the variables against the version's declarations; rendering
//! ([`Rendered`]) and splicing the rendered messages into the request body a target gets
//! ([`PromptStore::prepare`], `splice`: other fields keep their bytes); the errors, each
//! naming the request field at fault ([`PromptError`]); and the listing `weir prompt list`
//! and `GET /admin/prompts` show ([`PromptStore::list`]).
//! Must not: speak HTTP or choose targets (the router asks for a target's body), or read
//! files (the config brought the prompt files in).

mod splice;

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::templates::{self, MAX_RENDERED_BYTES};
use crate::config::{PromptRef, PromptVariable, PromptsConfig};
use crate::wire::PromptUse;

/// Every prompt of one config, compiled.
#[derive(Debug, Default)]
pub struct PromptStore {
    env: minijinja::Environment<'static>,
    prompts: BTreeMap<String, Prompt>,
}

#[derive(Debug)]
struct Prompt {
    default: String,
    versions: BTreeMap<String, Version>,
    origin: String,
}

#[derive(Debug)]
struct Version {
    /// `(role, template name in the store's environment)`; `Err` for a template that did not
    /// compile (validation makes that unreachable; serving answers it with an error).
    messages: Result<Vec<(String, String)>, String>,
    variables: BTreeMap<String, PromptVariable>,
    /// The declared defaults, converted once for the template context.
    defaults: Vec<(String, minijinja::Value)>,
    /// The messages rendered with the defaults, as JSON objects joined by commas, when no
    /// variable is required: a request that sends no variables reuses them.
    prerendered: Option<Bytes>,
    params: Map<String, Value>,
    hash: String,
}

/// A request's `prompt` object: `{"id": "...", "version"?: "...", "variables"?: {...}}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptCall {
    pub id: String,
    /// `None`: the target's fixed version, else the prompt's default.
    pub version: Option<String>,
    pub variables: Map<String, Value>,
}

/// A rendered prompt: what the upstream gets, and what records name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendered<'s> {
    pub id: &'s str,
    pub version: &'s str,
    pub messages: Vec<RenderedMessage<'s>>,
    /// The version's request defaults, applied where the request set nothing.
    #[serde(skip)]
    pub params: &'s Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderedMessage<'s> {
    pub role: &'s str,
    pub content: String,
}

/// A request body ready for one target, its prompt rendered in.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The client's body with the rendered messages first and no `prompt` field.
    pub body: Bytes,
    /// The prompt version's `params` over the target's: what to fill in where the request
    /// set nothing.
    pub params: Map<String, Value>,
    pub used: PromptUse,
}

/// What a request brings to each target it may be sent to: the prompt store of its snapshot,
/// and its own `prompt`, if any.
#[derive(Debug, Clone, Copy)]
pub struct PromptPlan<'a> {
    pub store: &'a PromptStore,
    pub call: Option<&'a PromptCall>,
}

/// Why a request's prompt cannot be rendered: a client error (400) naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    /// The `prompt` field is not shaped as documented.
    #[error("{message}")]
    Invalid { param: &'static str, message: String },
    #[error("unknown prompt `{id}`")]
    UnknownPrompt { id: String },
    #[error("prompt `{id}` has no version `{version}`")]
    UnknownVersion { id: String, version: String },
    #[error("prompt `{id}@{version}` needs the variable `{name}`")]
    MissingVariable { id: String, version: String, name: String },
    #[error("prompt `{id}@{version}` has no variable `{name}`")]
    UnknownVariable { id: String, version: String, name: String },
    #[error("prompt `{id}@{version}` cannot be rendered: {message}")]
    Render { id: String, version: String, message: String },
}

impl PromptError {
    /// The request field at fault, as OpenAI's `error.param`.
    pub fn param(&self) -> String {
        match self {
            PromptError::Invalid { param, .. } => (*param).to_string(),
            PromptError::UnknownPrompt { .. } => "prompt.id".into(),
            PromptError::UnknownVersion { .. } => "prompt.version".into(),
            PromptError::MissingVariable { name, .. } | PromptError::UnknownVariable { name, .. } => {
                format!("prompt.variables.{name}")
            }
            PromptError::Render { .. } => "prompt".into(),
        }
    }
}

// === impl PromptPlan ===

impl PromptPlan<'_> {
    /// What a cached answer to this request depends on besides its body: the content hashes
    /// of every version it may render (its own prompt's, and those `fixed` by the targets).
    pub fn fingerprint<'r>(&self, fixed: impl Iterator<Item = &'r PromptRef>) -> String {
        let mut ids: Vec<&str> = fixed.map(|f| f.id.as_str()).chain(self.call.map(|c| c.id.as_str())).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut out = String::new();
        for id in ids {
            let Some(prompt) = self.store.prompts.get(id) else { continue };
            out.push_str(id);
            out.push('=');
            out.push_str(&prompt.default);
            for (name, version) in &prompt.versions {
                out.push(';');
                out.push_str(name);
                out.push(':');
                out.push_str(&version.hash);
            }
            out.push('|');
        }
        out
    }
}

// === impl PromptCall ===

impl PromptCall {
    /// Reads a request's `prompt` value.
    pub fn from_json(value: &Value) -> Result<PromptCall, PromptError> {
        let invalid = |param, message: &str| PromptError::Invalid { param, message: message.to_string() };
        let Value::Object(fields) = value else {
            return Err(invalid(
                "prompt",
                "`prompt` must be an object such as {\"id\": \"support-answer\", \"variables\": {}}",
            ));
        };
        let id = match fields.get("id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            Some(_) => return Err(invalid("prompt.id", "`prompt.id` must be a non-empty string")),
            None => return Err(invalid("prompt.id", "`prompt` needs an `id`")),
        };
        let version = match fields.get("version") {
            None | Some(Value::Null) => None,
            Some(Value::String(version)) if !version.is_empty() => Some(version.clone()),
            Some(_) => return Err(invalid("prompt.version", "`prompt.version` must be a non-empty string")),
        };
        let variables = match fields.get("variables") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(variables)) => variables.clone(),
            Some(_) => return Err(invalid("prompt.variables", "`prompt.variables` must be an object")),
        };
        if let Some(other) = fields.keys().find(|k| !matches!(k.as_str(), "id" | "version" | "variables")) {
            let message = format!("unknown field `prompt.{other}` (expected id, version, variables)");
            return Err(PromptError::Invalid { param: "prompt", message });
        }
        Ok(PromptCall { id, version, variables })
    }
}

// === impl PromptStore ===

impl PromptStore {
    /// Compiles every version of every prompt of `config`.
    pub fn build(config: &PromptsConfig) -> PromptStore {
        let mut env = templates::environment();
        let mut prompts = BTreeMap::new();
        for (id, prompt) in &config.by_id {
            let mut versions = BTreeMap::new();
            for (name, version) in &prompt.versions {
                let messages = version
                    .messages
                    .iter()
                    .enumerate()
                    .map(|(i, message)| {
                        let template = format!("{id}@{name}#{i}");
                        env.add_template_owned(template.clone(), message.content.clone())
                            .map(|()| (message.role.clone(), template))
                            .map_err(|err| format!("messages[{i}]: {}", templates::describe(&err, &message.content)))
                    })
                    .collect();
                let defaults = version
                    .variables
                    .iter()
                    .filter_map(|(name, v)| {
                        let default = v.default.as_ref()?;
                        Some((name.clone(), minijinja::Value::from(minijinja::value::Serde(default))))
                    })
                    .collect();
                versions.insert(
                    name.clone(),
                    Version {
                        messages,
                        variables: version.variables.clone(),
                        defaults,
                        prerendered: None,
                        params: version.params.clone(),
                        hash: version.hash.clone(),
                    },
                );
            }
            prompts.insert(
                id.clone(),
                Prompt { default: prompt.default.clone(), versions, origin: prompt.origin.clone() },
            );
        }
        let mut store = PromptStore { env, prompts };
        store.prerender();
        store
    }

    /// Renders once, with their defaults, the versions that need no variable from a request.
    fn prerender(&mut self) {
        let mut done = Vec::new();
        for (id, prompt) in &self.prompts {
            for (name, v) in &prompt.versions {
                if v.variables.values().any(|var| var.required) {
                    continue;
                }
                if let Ok(messages) = self.render_version(id, name, v, None) {
                    done.push((id.clone(), name.clone(), Bytes::from(messages_json(&messages))));
                }
            }
        }
        for (id, name, json) in done {
            if let Some(v) = self.prompts.get_mut(&id).and_then(|p| p.versions.get_mut(&name)) {
                v.prerendered = Some(json);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// Renders what a request to a target asks for: the request's `prompt` if it has one, else
    /// the prompt the target fixes, with no variables. `fixed` gives the version when the
    /// request names the same prompt but no version. `Ok(None)`: no prompt at all.
    pub fn render_for<'s>(
        &'s self,
        call: Option<&PromptCall>,
        fixed: Option<&PromptRef>,
    ) -> Result<Option<Rendered<'s>>, PromptError> {
        let Some(Choice { id, version, variables }) = choose(call, fixed) else { return Ok(None) };
        let (id, version, v) = self.lookup(id, version)?;
        let messages = self.render_version(id, version, v, variables)?;
        Ok(Some(Rendered { id, version, messages, params: &v.params }))
    }

    /// The body for a target that fixes `fixed` (or none): the prompt rendered and spliced in,
    /// with the version's params over the target's. `Ok(None)`: nothing to render, the body
    /// goes as it is.
    pub fn prepare(
        &self,
        call: Option<&PromptCall>,
        fixed: Option<&PromptRef>,
        body: &[u8],
        target_params: &Map<String, Value>,
    ) -> Result<Option<Prepared>, PromptError> {
        let Some(Choice { id, version, variables }) = choose(call, fixed) else { return Ok(None) };
        let (id, version, v) = self.lookup(id, version)?;
        let rendered: std::borrow::Cow<'_, [u8]> = match (&v.prerendered, variables) {
            (Some(json), None) => json.as_ref().into(),
            (Some(json), Some(variables)) if variables.is_empty() => json.as_ref().into(),
            _ => messages_json(&self.render_version(id, version, v, variables)?).into(),
        };
        let body = splice::splice(body, &rendered).map_err(|message| PromptError::Render {
            id: id.clone(),
            version: version.clone(),
            message,
        })?;
        let mut params = target_params.clone();
        for (field, value) in &v.params {
            // `max_tokens` and `max_completion_tokens` are one limit: the prompt's replaces both.
            match field.as_str() {
                "max_tokens" => drop(params.remove("max_completion_tokens")),
                "max_completion_tokens" => drop(params.remove("max_tokens")),
                _ => {}
            }
            params.insert(field.clone(), value.clone());
        }
        let used =
            PromptUse { id: id.clone(), version: version.clone(), variables: variables.cloned().unwrap_or_default() };
        Ok(Some(Prepared { body, params, used }))
    }

    /// Renders version `version` (default: the prompt's default) of prompt `id`.
    pub fn render<'s>(
        &'s self,
        id: &str,
        version: Option<&str>,
        variables: &Map<String, Value>,
    ) -> Result<Rendered<'s>, PromptError> {
        let (id, version, v) = self.lookup(id, version)?;
        let messages = self.render_version(id, version, v, Some(variables))?;
        Ok(Rendered { id, version, messages, params: &v.params })
    }

    /// The prompt `id` and its version `version` (default: the prompt's default).
    fn lookup(&self, id: &str, version: Option<&str>) -> Result<(&String, &String, &Version), PromptError> {
        let (id, prompt) =
            self.prompts.get_key_value(id).ok_or_else(|| PromptError::UnknownPrompt { id: id.to_string() })?;
        let version = version.unwrap_or(&prompt.default);
        let (version, v) = prompt
            .versions
            .get_key_value(version)
            .ok_or_else(|| PromptError::UnknownVersion { id: id.clone(), version: version.to_string() })?;
        Ok((id, version, v))
    }

    fn render_version<'s>(
        &'s self,
        id: &str,
        version: &str,
        v: &'s Version,
        variables: Option<&Map<String, Value>>,
    ) -> Result<Vec<RenderedMessage<'s>>, PromptError> {
        let context = context(id, version, v, variables)?;
        let render_error =
            |message: String| PromptError::Render { id: id.to_string(), version: version.to_string(), message };
        let templates = v.messages.as_ref().map_err(|message| render_error(message.clone()))?;
        let mut messages = Vec::with_capacity(templates.len());
        let mut total = 0usize;
        for (role, name) in templates {
            let template = self.env.get_template(name).map_err(|err| render_error(err.to_string()))?;
            let content =
                template.render(&context).map_err(|err| render_error(templates::describe(&err, template.source())))?;
            total = total.saturating_add(content.len());
            if total > MAX_RENDERED_BYTES {
                return Err(render_error(format!("the rendered messages exceed {MAX_RENDERED_BYTES} bytes")));
            }
            messages.push(RenderedMessage { role, content });
        }
        Ok(messages)
    }

    /// Every prompt and version, for `weir prompt list` and `GET /admin/prompts`.
    pub fn list(&self) -> Vec<PromptListing<'_>> {
        self.prompts
            .iter()
            .map(|(id, prompt)| PromptListing {
                id,
                default: &prompt.default,
                origin: &prompt.origin,
                versions: prompt
                    .versions
                    .iter()
                    .map(|(name, v)| VersionListing {
                        version: name,
                        hash: &v.hash,
                        messages: v.messages.as_ref().map_or(0, Vec::len),
                        variables: v
                            .variables
                            .iter()
                            .map(|(name, var)| VariableListing {
                                name,
                                required: var.required,
                                default: var.default.as_ref(),
                            })
                            .collect(),
                        params: &v.params,
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Which prompt a request to a target renders.
struct Choice<'a> {
    id: &'a str,
    /// `None`: the prompt's default.
    version: Option<&'a str>,
    /// `None`: the target's prompt, for a request without one.
    variables: Option<&'a Map<String, Value>>,
}

fn choose<'a>(call: Option<&'a PromptCall>, fixed: Option<&'a PromptRef>) -> Option<Choice<'a>> {
    match (call, fixed) {
        (Some(call), fixed) => {
            let fixed_version = fixed.filter(|f| f.id == call.id).map(|f| f.version.as_str());
            let version = call.version.as_deref().or(fixed_version);
            Some(Choice { id: &call.id, version, variables: Some(&call.variables) })
        }
        (None, Some(fixed)) => Some(Choice { id: &fixed.id, version: Some(&fixed.version), variables: None }),
        (None, None) => None,
    }
}

/// Rendered messages as JSON objects joined by commas (the inside of a `messages` list).
fn messages_json(messages: &[RenderedMessage<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(messages.iter().map(|m| m.content.len() + 32).sum());
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Two strings into a Vec: serialising cannot fail.
        let _ = serde_json::to_writer(&mut out, message);
    }
    out
}

/// The template context: each declared variable the request set, else its default; an
/// undeclared one, or a required one left out, is the client's error.
fn context(
    id: &str,
    version: &str,
    v: &Version,
    variables: Option<&Map<String, Value>>,
) -> Result<minijinja::Value, PromptError> {
    let variables = variables.filter(|vars| !vars.is_empty());
    if let Some(name) = variables.and_then(|vars| vars.keys().find(|name| !v.variables.contains_key(*name))) {
        return Err(PromptError::UnknownVariable { id: id.into(), version: version.into(), name: name.clone() });
    }
    let mut context: BTreeMap<&str, minijinja::Value> =
        v.defaults.iter().map(|(name, value)| (name.as_str(), value.clone())).collect();
    for (name, declared) in &v.variables {
        match variables.and_then(|vars| vars.get(name)) {
            Some(value) => {
                context.insert(name.as_str(), minijinja::Value::from(minijinja::value::Serde(value)));
            }
            None if declared.required => {
                return Err(PromptError::MissingVariable {
                    id: id.into(),
                    version: version.into(),
                    name: name.clone(),
                });
            }
            None => {}
        }
    }
    Ok(minijinja::Value::from(context))
}

/// One prompt as listed.
#[derive(Debug, Clone, Serialize)]
pub struct PromptListing<'s> {
    pub id: &'s str,
    pub default: &'s str,
    /// The config file or prompt file it comes from.
    pub origin: &'s str,
    pub versions: Vec<VersionListing<'s>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionListing<'s> {
    pub version: &'s str,
    /// `sha256:` + hex of what the version renders.
    pub hash: &'s str,
    pub messages: usize,
    pub variables: Vec<VariableListing<'s>>,
    pub params: &'s Map<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VariableListing<'s> {
    pub name: &'s str,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<&'s Value>,
}

#[cfg(test)]
mod tests;
