//! Golden and behaviour tests of the Messages translation, end to end over the fixtures.

use serde_json::{Value, json};

use super::*;
use crate::apis::test_support::{event_names, fixture, golden, run};
use crate::apis::{StreamError, StreamTranslate};

fn translator() -> MessagesStream {
    MessagesStream::new("msg_0123".into(), "claude-public".into(), 100)
}

#[test]
fn a_chat_stream_becomes_the_golden_messages_stream() {
    let (out, end) = run(&mut translator(), &[fixture("chat_tool_call.sse").as_bytes()]);
    end.unwrap();
    golden("messages_tool_call.sse", std::str::from_utf8(&out).unwrap());
    assert_eq!(
        event_names(&out),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
}

#[test]
fn reasoning_streams_as_a_thinking_block() {
    let (out, end) = run(&mut translator(), &[fixture("chat_reasoning_length.sse").as_bytes()]);
    end.unwrap();
    golden("messages_thinking.sse", std::str::from_utf8(&out).unwrap());
    let answer = read_answer(&out, true).unwrap();
    assert_eq!(answer.body["content"][0], json!({"type": "thinking", "thinking": "Thinking.", "signature": ""}));
    assert_eq!(answer.body["content"][1], json!({"type": "text", "text": "Hello wor"}));
    assert_eq!(answer.stop_reason.as_deref(), Some("max_tokens"));
}

#[test]
fn the_stream_and_the_json_answer_read_back_alike() {
    let (out, _) = run(&mut translator(), &[fixture("chat_tool_call.sse").as_bytes()]);
    let streamed = read_answer(&out, true).unwrap();
    let whole =
        response::from_completion(fixture("chat_tool_call.json").as_bytes(), "msg_0123", "claude-public").unwrap();
    assert_eq!(streamed.body, whole);
    let usage = streamed.usage.unwrap();
    assert_eq!((usage.input, usage.cached_input, usage.output), (120, 64, 20));
}

#[test]
fn a_replayed_message_reads_back_as_itself() {
    let whole =
        response::from_completion(fixture("chat_tool_call.json").as_bytes(), "msg_0123", "claude-public").unwrap();
    let replayed = replay(&whole);
    assert_eq!(read_answer(&replayed, true).unwrap().body, whole);
    let (out, _) = run(&mut translator(), &[fixture("chat_tool_call.sse").as_bytes()]);
    let mut names = event_names(&out);
    names.dedup();
    let mut replayed_names = event_names(&replayed);
    replayed_names.dedup();
    assert_eq!(names, replayed_names);
}

#[test]
fn a_native_anthropic_stream_reads_back_with_cache_counts() {
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":300,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":7}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let answer = read_answer(stream.as_bytes(), true).unwrap();
    let usage = answer.usage.unwrap();
    assert_eq!((usage.input, usage.cached_input, usage.cache_write, usage.output), (317, 300, 5, 7));
    assert_eq!(answer.body["content"], json!([{"type": "text", "text": "Hi"}]));
    let cut = stream.find("event: message_stop").unwrap();
    assert!(read_answer(&stream.as_bytes()[..cut], true).is_none(), "no message_stop, no answer");
}

#[test]
fn a_failure_mid_stream_is_one_error_event_and_nothing_after() {
    let stream = fixture("chat_tool_call.sse");
    let cut = stream.find("data: [DONE]").unwrap();
    let mut t = translator();
    let (out, end) = run(&mut t, &[&stream.as_bytes()[..cut], b"data: {not json\n\n", b"data: [DONE]\n\n"]);
    assert!(matches!(end, Err(StreamError::Malformed(_))));
    let names = event_names(&out);
    assert_eq!(names.last().map(String::as_str), Some("error"));
    assert_eq!(names.iter().filter(|n| *n == "error").count(), 1);
    assert!(!names.iter().any(|n| n == "message_stop"));
    let last: Value = serde_json::from_str(
        String::from_utf8_lossy(&out).lines().rfind(|l| !l.is_empty()).unwrap().strip_prefix("data: ").unwrap(),
    )
    .unwrap();
    assert_eq!(last["error"]["type"], "api_error");
    let mut more = Vec::new();
    assert!(t.finish(&mut more).is_err());
    assert!(more.is_empty());
}
