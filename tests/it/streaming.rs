//! Streams end to end: a client that goes away cancels the upstream stream, and a graceful
//! shutdown lets a stream in flight finish while the gateway stops taking new work.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use weir::Gateway;

use crate::support::{self, Behavior, MockUpstream, TEAM_KEY};

/// Three choices of 8+ words each, 100 ms apart: at least three seconds of stream.
const LONG_STREAM: &str =
    r#"{"model":"chat","n":3,"stream":true,"messages":[{"role":"user","content":"tell me a long story"}]}"#;

async fn start_stream(client: &reqwest::Client, gateway: &Gateway, body: &str) -> reqwest::Response {
    let response = client
        .post(format!("{}/chat/completions", support::base_url(gateway)))
        .bearer_auth(TEAM_KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("stream request sent");
    assert_eq!(response.status(), 200);
    response
}

async fn client_disconnect_cancels_upstream(client: reqwest::Client) {
    let upstream = MockUpstream::start(Behavior::paced(Duration::from_millis(100))).await;
    let gateway = support::standard(&upstream).await;

    let response = start_stream(&client, &gateway, LONG_STREAM).await;
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(support::DEADLINE, body.next()).await.expect("first chunk in time");
    assert!(first.is_some_and(|c| c.is_ok()), "the stream started");
    drop(body);
    drop(client);

    assert!(
        support::eventually(Duration::from_millis(1500), || upstream.cancelled() == 1).await,
        "the upstream did not see the client go away (cancelled {}, completed {})",
        upstream.cancelled(),
        upstream.completed()
    );
    assert_eq!(upstream.completed(), 0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_http1_client_going_away_cancels_the_upstream_stream() {
    client_disconnect_cancels_upstream(support::http()).await;
}

#[tokio::test]
async fn an_http2_stream_reset_cancels_the_upstream_stream() {
    // Over HTTP/2 the connection stays up; only the stream is reset.
    client_disconnect_cancels_upstream(support::http_h2c()).await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_streams_in_flight_and_refuses_new_work() {
    let upstream = MockUpstream::start(Behavior::paced(Duration::from_millis(100))).await;
    let gateway = support::standard(&upstream).await;
    let (addr, admin_addr) = (gateway.addr(), gateway.admin_addr());
    let state = Arc::clone(gateway.state());
    let body = r#"{"model":"chat","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"drain me"}]}"#;

    let ready = support::http().get(format!("http://{admin_addr}/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200, "ready before shutdown");

    let client = support::http();
    let response = start_stream(&client, &gateway, body).await;
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let first = tokio::time::timeout(support::DEADLINE, stream.next()).await.expect("first chunk in time");
    text.push_str(std::str::from_utf8(&first.expect("a chunk").expect("chunk ok")).expect("UTF-8"));

    let shutdown = tokio::spawn(gateway.shutdown());

    // New connections are refused while the stream drains.
    let refused = support::eventually(Duration::from_secs(2), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
    })
    .await;
    assert!(refused, "the client port still accepts connections during the drain");
    assert!(!state.is_ready());
    assert!(!shutdown.is_finished(), "shutdown returned while a stream was in flight");

    // The stream in flight completes intact.
    while let Some(chunk) = tokio::time::timeout(support::DEADLINE, stream.next()).await.expect("chunk in time") {
        text.push_str(std::str::from_utf8(&chunk.expect("stream not cut by the shutdown")).expect("UTF-8"));
    }
    let events = support::sse_events(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "stream finished: {text}");
    let words: usize = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|chunk| chunk["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()))
        .count();
    assert_eq!(words, 10, "every token of the stream arrived");
    assert_eq!(upstream.completed(), 1);

    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown returns once the stream is done")
        .expect("shutdown task");
}

#[tokio::test]
async fn readyz_answers_503_during_the_drain() {
    let upstream = MockUpstream::start(Behavior::paced(Duration::from_millis(100))).await;
    let gateway = support::standard(&upstream).await;
    let admin_addr = gateway.admin_addr();
    let body = r#"{"model":"chat","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"drain me"}]}"#;
    let client = support::http();
    let response = start_stream(&client, &gateway, body).await;
    let mut stream = response.bytes_stream();
    tokio::time::timeout(support::DEADLINE, stream.next()).await.expect("first chunk in time");

    let shutdown = tokio::spawn(gateway.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!shutdown.is_finished(), "shutdown returned while a stream was in flight");
    // A load balancer polls /readyz to stop sending traffic; it must get a 503, on a new
    // connection, for as long as the drain lasts.
    match support::http().get(format!("http://{admin_addr}/readyz")).send().await {
        Ok(response) => assert_eq!(response.status(), 503, "/readyz during the drain"),
        Err(err) => panic!("/readyz must answer 503 during the drain, but the admin port is closed: {err}"),
    }
    while let Some(chunk) = tokio::time::timeout(support::DEADLINE, stream.next()).await.expect("chunk in time") {
        chunk.expect("stream not cut by the shutdown");
    }
    tokio::time::timeout(Duration::from_secs(5), shutdown).await.expect("shutdown returns").expect("shutdown task");
}
