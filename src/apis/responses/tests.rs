//! Golden and behaviour tests of the Responses translation, end to end over the fixtures.

use serde_json::{Map, Value, json};

use super::*;
use crate::apis::test_support::{event_names, fixture, golden, run};
use crate::apis::{StreamError, StreamTranslate};

fn shell() -> Shell {
    let Value::Object(request) = json!({"model": "chat-default", "input": "weather in Oslo?", "metadata": {"k": "v"}})
    else {
        unreachable!()
    };
    let translated = translate(request, &[]).unwrap();
    Shell { id: "resp_0123".into(), created_at: 1_700_000_000, model: "chat-default".into(), echo: translated.echo }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap() + "\n"
}

#[test]
fn a_chat_completion_becomes_the_golden_response() {
    let response =
        response::from_completion(fixture("chat_tool_call.json").as_bytes(), &shell(), 1_700_000_001).unwrap();
    golden("responses_tool_call.json", &pretty(&response));
    assert_eq!(response["usage"]["input_tokens_details"]["cached_tokens"], 64);
}

#[test]
fn a_chat_stream_becomes_the_golden_event_stream() {
    let (out, end) =
        run(&mut ResponsesStream::new(shell(), 1_700_000_001), &[fixture("chat_tool_call.sse").as_bytes()]);
    end.unwrap();
    golden("responses_tool_call.sse", std::str::from_utf8(&out).unwrap());
    let names = event_names(&out);
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
}

#[test]
fn sequence_numbers_count_from_zero_without_gaps() {
    let (out, _) = run(&mut ResponsesStream::new(shell(), 0), &[fixture("chat_tool_call.sse").as_bytes()]);
    let numbers: Vec<u64> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());
}

#[test]
fn a_length_cut_is_an_incomplete_response() {
    let (out, end) = run(&mut ResponsesStream::new(shell(), 0), &[fixture("chat_reasoning_length.sse").as_bytes()]);
    end.unwrap();
    golden("responses_incomplete.sse", std::str::from_utf8(&out).unwrap());
    let answer = read_answer(&out, true).unwrap();
    assert_eq!(answer.status, "incomplete");
    assert_eq!(answer.body["incomplete_details"], json!({"reason": "max_output_tokens"}));
    assert_eq!(answer.usage.unwrap().reasoning, 3);
}

#[test]
fn the_stream_and_the_json_answer_read_back_alike() {
    let (out, _) = run(&mut ResponsesStream::new(shell(), 1_700_000_001), &[fixture("chat_tool_call.sse").as_bytes()]);
    let streamed = read_answer(&out, true).unwrap();
    let whole = response::from_completion(fixture("chat_tool_call.json").as_bytes(), &shell(), 1_700_000_001).unwrap();
    assert_eq!(streamed.body, whole);
    assert_eq!(streamed.usage, read_answer(&serde_json::to_vec(&whole).unwrap(), false).unwrap().usage);
}

#[test]
fn a_replayed_response_reads_back_as_itself_with_the_same_events() {
    let (out, _) = run(&mut ResponsesStream::new(shell(), 1_700_000_001), &[fixture("chat_tool_call.sse").as_bytes()]);
    let answer = read_answer(&out, true).unwrap();
    let replayed = replay(&answer.body);
    assert_eq!(read_answer(&replayed, true).unwrap().body, answer.body);
    let mut names = event_names(&out);
    names.dedup();
    let mut replayed_names = event_names(&replayed);
    replayed_names.dedup();
    assert_eq!(names, replayed_names);
}

#[test]
fn a_failure_mid_stream_is_one_error_event_and_nothing_after() {
    let stream = fixture("chat_tool_call.sse");
    let cut = stream.find("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\"").unwrap();
    let upstream_error = "data: {\"error\":{\"message\":\"overloaded\",\"code\":\"server_error\"}}\n\n";
    let mut translator = ResponsesStream::new(shell(), 0);
    let (out, end) = run(&mut translator, &[&stream.as_bytes()[..cut], upstream_error.as_bytes(), b"data: [DONE]\n\n"]);
    assert_eq!(end, Err(StreamError::Upstream { code: Some("server_error".into()), message: "overloaded".into() }));
    let names = event_names(&out);
    assert_eq!(names.last().map(String::as_str), Some("error"));
    assert!(!names.iter().any(|n| n == "response.completed"));
    let mut more = Vec::new();
    assert!(translator.push(b"data: [DONE]\n\n", &mut more).is_err());
    assert!(translator.finish(&mut more).is_err());
    assert!(more.is_empty());
    assert!(read_answer(&out, true).is_none());
}

#[test]
fn an_upstream_that_stops_before_done_fails() {
    let stream = fixture("chat_tool_call.sse");
    let cut = stream.find("data: [DONE]").unwrap();
    let (out, end) = run(&mut ResponsesStream::new(shell(), 0), &[&stream.as_bytes()[..cut]]);
    assert!(matches!(end, Err(StreamError::Malformed(_))));
    assert_eq!(event_names(&out).last().map(String::as_str), Some("error"));
}

#[test]
fn the_response_echoes_the_request() {
    let response = response::from_completion(fixture("chat_tool_call.json").as_bytes(), &shell(), 0).unwrap();
    let object: &Map<String, Value> = response.as_object().unwrap();
    assert_eq!(object["metadata"], json!({"k": "v"}));
    assert_eq!(object["store"], true);
    assert_eq!(object["tool_choice"], "auto");
    assert_eq!(object["output"][1]["call_id"], "call_abc");
}
