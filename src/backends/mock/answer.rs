//! What the mock says: planned once from the request, then rendered as JSON or SSE chunks.

use serde_json::{Map, Value, json};

use crate::wire::Endpoint;

/// Words the mock writes; chosen by a hash of the prompt so the same prompt gets the same answer.
const WORDS: &[&str] = &[
    "the", "gateway", "routes", "every", "request", "to", "a", "model", "and", "streams", "tokens", "back", "while",
    "it", "records", "latency", "cost", "usage", "for", "each", "virtual", "key", "in", "one", "place", "with", "care",
    "so", "teams", "can", "compare", "variants",
];

/// Answers are this many words long unless `max_tokens` says fewer.
const MIN_WORDS: u64 = 8;
const EXTRA_WORDS: u64 = 17;
const DEFAULT_DIMENSIONS: usize = 16;

#[derive(Debug)]
pub struct Answer {
    pub(super) endpoint: Endpoint,
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) choices: Vec<Choice>,
    pub(super) prompt_tokens: u64,
    pub(super) include_usage: bool,
    pub(super) embeddings: Vec<Vec<f32>>,
    pub(super) base64: bool,
}

#[derive(Debug)]
pub(super) struct Choice {
    pub(super) words: Vec<&'static str>,
    pub(super) finish_reason: &'static str,
    pub(super) tool_call: Option<ToolCall>,
}

#[derive(Debug)]
pub(super) struct ToolCall {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) arguments: String,
}

impl Answer {
    /// Decides the whole answer. Errors are messages for a 400, as OpenAI would send.
    pub fn plan(endpoint: Endpoint, request: &Value) -> Result<Answer, String> {
        let model = request.get("model").and_then(Value::as_str).unwrap_or("mock").to_owned();
        let prompt = prompt_text(endpoint, request);
        let seed = fnv1a(prompt.as_bytes());
        let prompt_tokens = count_tokens(&prompt).max(1);
        let include_usage = request.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
        let mut answer = Answer {
            endpoint,
            id: format!("{}-mock{:016x}", id_prefix(endpoint), seed),
            created: unix_now(),
            model,
            choices: Vec::new(),
            prompt_tokens,
            include_usage,
            embeddings: Vec::new(),
            base64: request.get("encoding_format").and_then(Value::as_str) == Some("base64"),
        };
        if endpoint == Endpoint::Embeddings {
            answer.embeddings = plan_embeddings(request)?;
            return Ok(answer);
        }
        let n = request.get("n").and_then(Value::as_u64).unwrap_or(1);
        if !(1..=128).contains(&n) {
            return Err(format!("n must be between 1 and 128, got {n}"));
        }
        let max_tokens =
            ["max_completion_tokens", "max_tokens"].iter().find_map(|f| request.get(*f).and_then(Value::as_u64));
        let tool = chosen_tool(request);
        for index in 0..n {
            let choice_seed = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            answer.choices.push(plan_choice(choice_seed, max_tokens, tool.as_ref(), index));
        }
        Ok(answer)
    }

    pub fn completion_tokens(&self) -> u64 {
        self.choices.iter().map(Choice::tokens).sum()
    }

    pub(super) fn usage(&self) -> Value {
        let completion = self.completion_tokens();
        if self.endpoint == Endpoint::Embeddings {
            return json!({"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens});
        }
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }
}

impl Choice {
    pub(super) fn tokens(&self) -> u64 {
        match &self.tool_call {
            Some(call) => 1 + count_tokens(&call.arguments),
            None => self.words.len() as u64,
        }
    }

    pub(super) fn text(&self) -> String {
        self.words.join(" ")
    }
}

fn plan_choice(seed: u64, max_tokens: Option<u64>, tool: Option<&(String, Value)>, index: u64) -> Choice {
    if let Some((name, parameters)) = tool {
        let arguments = mock_arguments(parameters).to_string();
        let id = format!("call_mock{:08x}{index}", seed as u32);
        return Choice {
            words: Vec::new(),
            finish_reason: "tool_calls",
            tool_call: Some(ToolCall { id, name: name.clone(), arguments }),
        };
    }
    let natural = MIN_WORDS + seed % EXTRA_WORDS;
    let length = max_tokens.map_or(natural, |max| natural.min(max));
    let mut state = seed | 1;
    let words = (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            WORDS[(state % WORDS.len() as u64) as usize]
        })
        .collect();
    let finish_reason = if length < natural { "length" } else { "stop" };
    Choice { words, finish_reason, tool_call: None }
}

/// The tool the mock calls: the one `tool_choice` names, else the first, unless `tool_choice`
/// is `none` or there are no tools.
fn chosen_tool(request: &Value) -> Option<(String, Value)> {
    let tools = request.get("tools")?.as_array()?;
    let choice = request.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") {
        return None;
    }
    let wanted = choice.and_then(|c| c.pointer("/function/name")).and_then(Value::as_str);
    let tool =
        tools.iter().find(|t| wanted.is_none_or(|w| t.pointer("/function/name").and_then(Value::as_str) == Some(w)))?;
    let name = tool.pointer("/function/name")?.as_str()?.to_owned();
    let parameters = tool.pointer("/function/parameters").cloned().unwrap_or(Value::Null);
    Some((name, parameters))
}

/// Arguments that satisfy the tool's JSON schema at the first level: each property gets a
/// placeholder of its type.
fn mock_arguments(parameters: &Value) -> Value {
    let mut arguments = Map::new();
    if let Some(properties) = parameters.get("properties").and_then(Value::as_object) {
        for (name, schema) in properties {
            let value = match schema.get("type").and_then(Value::as_str) {
                Some("integer") | Some("number") => json!(0),
                Some("boolean") => json!(true),
                Some("array") => json!([]),
                Some("object") => json!({}),
                _ => schema.pointer("/enum/0").cloned().unwrap_or_else(|| json!("mock")),
            };
            arguments.insert(name.clone(), value);
        }
    }
    Value::Object(arguments)
}

fn plan_embeddings(request: &Value) -> Result<Vec<Vec<f32>>, String> {
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(d) => {
            d.as_u64().filter(|d| (1..=8192).contains(d)).ok_or("dimensions must be an integer from 1 to 8192")?
                as usize
        }
    };
    let inputs: Vec<String> = match request.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![Value::Array(items.clone()).to_string()]
        }
        Some(Value::Array(items)) => {
            items.iter().map(|item| item.as_str().map_or_else(|| item.to_string(), str::to_owned)).collect()
        }
        _ => return Err("input must be a string or an array".into()),
    };
    Ok(inputs.iter().map(|input| unit_vector(fnv1a(input.as_bytes()), dimensions)).collect())
}

fn unit_vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = seed | 1;
    let raw: Vec<f32> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

/// All prompt text, for the seed and the token count.
fn prompt_text(endpoint: Endpoint, request: &Value) -> String {
    match endpoint {
        // The inbound APIs reach backends as chat, except where a kind speaks them natively.
        Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => {
            let mut text = String::new();
            for message in request.get("messages").and_then(Value::as_array).into_iter().flatten() {
                push_content(&mut text, message.get("content"));
            }
            text
        }
        Endpoint::Completions => request.get("prompt").map(value_text).unwrap_or_default(),
        Endpoint::Embeddings => request.get("input").map(value_text).unwrap_or_default(),
    }
}

fn push_content(text: &mut String, content: Option<&Value>) {
    match content {
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(parts)) => {
            for part in parts {
                if let Some(s) = part.get("text").and_then(Value::as_str) {
                    text.push_str(s);
                    text.push(' ');
                }
            }
        }
        _ => {}
    }
    text.push('\n');
}

fn value_text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

/// The mock's tokenizer: one token per whitespace-separated word.
fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn id_prefix(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => "chatcmpl",
        Endpoint::Completions => "cmpl",
        Endpoint::Embeddings => "emb",
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
