//! Upstream connections: keep-alive reuse, and connections the upstream closes between
//! requests (closed idle connections are noticed or the request is sent again, never failed).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{self, ALL_KEY, Behavior, MockUpstream, Timeouts};

const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"reuse me"}]}"#;

async fn chat_status(base: &str) -> u16 {
    let response = support::http()
        .post(format!("{base}/chat/completions"))
        .bearer_auth(ALL_KEY)
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await
        .expect("request reaches weir");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    if status != 200 {
        eprintln!("weir answered {status}: {}", String::from_utf8_lossy(&body));
    }
    status
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let base = support::base_url(&gateway);
    for _ in 0..5 {
        assert_eq!(chat_status(&base).await, 200);
    }
    let stream = r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"and me"}]}"#;
    for _ in 0..3 {
        let response = support::http()
            .post(format!("{base}/chat/completions"))
            .bearer_auth(ALL_KEY)
            .body(stream)
            .send()
            .await
            .expect("stream");
        assert!(response.text().await.expect("stream body").ends_with("data: [DONE]\n\n"));
    }
    assert_eq!(upstream.requests().len(), 8);
    assert_eq!(upstream.connections(), 1, "keep-alive: every request reused the first connection");
    gateway.shutdown().await;
}

#[tokio::test]
async fn connection_close_from_the_upstream_opens_a_new_one() {
    let json = r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[]}"#;
    let upstream = MockUpstream::start(Behavior::reply(200, json).with_header("connection", "close")).await;
    let gateway = support::standard(&upstream).await;
    let base = support::base_url(&gateway);
    for _ in 0..3 {
        assert_eq!(chat_status(&base).await, 200);
    }
    assert_eq!(upstream.connections(), 3);
    gateway.shutdown().await;
}

/// An upstream that answers one request per connection as keep-alive, then closes the
/// socket shortly after without saying so: the next request must not fail on the dead one.
async fn silently_closing_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut read = 0;
                // Headers and a small body arrive together; wait for the end of the JSON.
                while !buffer[..read].ends_with(b"}") {
                    match socket.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let body = r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[]}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
                // Dropping the socket closes it: an idle keep-alive connection gone.
            });
        }
    });
    (format!("http://{addr}/v1"), accepted)
}

#[tokio::test]
async fn an_idle_connection_closed_by_the_upstream_is_not_used() {
    let (url, accepted) = silently_closing_upstream().await;
    let gateway = support::standard_at(&url, Timeouts::default()).await;
    let base = support::base_url(&gateway);
    for _ in 0..3 {
        assert_eq!(chat_status(&base).await, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_request_racing_an_upstream_close_is_sent_again() {
    let (url, accepted) = silently_closing_upstream().await;
    let gateway = support::standard_at(&url, Timeouts::default()).await;
    let base = support::base_url(&gateway);
    // No pause: the second request may find the first connection still looking open.
    for _ in 0..10 {
        assert_eq!(chat_status(&base).await, 200);
    }
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 10);
    gateway.shutdown().await;
}
