//! Hostile input from outside, over real loopback HTTP: request ids a client chooses,
//! feedback on another key's requests, early refusals on a kept-alive connection, log
//! injection, deep JSON, HTTP/2 body amplification, smuggled and oversized requests, and
//! slow headers. Every probe is bounded in time.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use weir::Gateway;

use crate::cli::{ServeGuard, free_port};
use crate::support::{self, ALL_KEY, Behavior, DEADLINE, MockUpstream, TEAM_KEY, Timeouts};

const ADMIN_TOKEN: &str = "adm-0123456789";
const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;

/// The standard fixture with an admin token and one dataset in `dir`.
async fn gateway_with_dataset(upstream: &MockUpstream, dir: &std::path::Path) -> Gateway {
    let yaml = support::standard_yaml(&upstream.url(), Timeouts::default())
        .replace("  max_body: 64KiB\n", &format!("  max_body: 64KiB\n  admin_token: {ADMIN_TOKEN}\n"));
    support::start(&format!("{yaml}datasets:\n  - {{ name: all, dir: {} }}\n", dir.display())).await
}

async fn post(gateway: &Gateway, path: &str, bearer: &str, body: String, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut request = support::http().post(format!("{}{path}", support::base_url(gateway))).bearer_auth(bearer);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.header("content-type", "application/json").body(body).send().await.expect("request reaches weir")
}

async fn feedback(gateway: &Gateway, bearer: &str, request_id: &str) -> (u16, Value) {
    let body = json!({"request_id": request_id, "score": 1}).to_string();
    let (status, _, answer) = support::body_json(post(gateway, "/feedback", bearer, body, &[]).await).await;
    (status.as_u16(), answer)
}

/// Every record line of the dataset in `dir` once the writer flushed `count` of them.
async fn records(dir: &std::path::Path, count: usize) -> Vec<Value> {
    let read = || -> Vec<Value> {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            // Every line must read back: nothing unreadable is recorded.
            lines.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).expect("a readable record line")));
        }
        lines.into_iter().filter(|l| l.get("type").is_none()).collect()
    };
    support::eventually(DEADLINE, || read().len() >= count).await;
    read()
}

#[tokio::test]
async fn request_ids_are_weirs_and_the_clients_is_kept_beside() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with_dataset(&upstream, dir.path()).await;

    // Two clients choosing the same id get different ids from weir.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = post(&gateway, "/chat/completions", TEAM_KEY, CHAT.into(), &[("x-request-id", "dup-7")]).await;
        assert_eq!(response.status(), 200);
        ids.push(response.headers()["x-request-id"].to_str().unwrap().to_owned());
    }
    assert!(ids.iter().all(|id| id.starts_with("req_")), "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    // A long id with bytes that are not UTF-8 is bounded and kept readable.
    let long = format!("{}\u{e9}", "x".repeat(300));
    let response = post(&gateway, "/chat/completions", TEAM_KEY, CHAT.into(), &[("x-request-id", &long)]).await;
    let third = response.headers()["x-request-id"].to_str().unwrap().to_owned();

    let lines = records(dir.path(), 3).await;
    let record = |id: &str| lines.iter().find(|l| l["request_id"] == id).unwrap_or_else(|| panic!("{id}: {lines:#?}"));
    for id in &ids {
        assert_eq!(record(id)["client_request_id"], "dup-7");
    }
    let kept = record(&third)["client_request_id"].as_str().unwrap().to_owned();
    assert!(kept.len() <= 128 && kept.starts_with("xxx"), "{kept}");

    // Feedback names weir's id; the client's id names nothing.
    assert_eq!(feedback(&gateway, TEAM_KEY, &ids[0]).await.0, 200);
    assert_eq!(feedback(&gateway, TEAM_KEY, "dup-7").await.0, 404);
    gateway.shutdown().await;
}

#[tokio::test]
async fn feedback_is_taken_from_the_requests_key_or_the_admin_token_only() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with_dataset(&upstream, dir.path()).await;
    let response = post(&gateway, "/chat/completions", TEAM_KEY, CHAT.into(), &[]).await;
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let _ = response.text().await;

    // Another valid key is told what an unknown id gets: nothing about whose it is.
    let (status, error) = feedback(&gateway, ALL_KEY, &id).await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"]["code"], "request_not_found");
    assert_eq!(error["error"]["param"], "request_id");
    assert_eq!(feedback(&gateway, "sk-wrong", &id).await.0, 401);
    assert_eq!(feedback(&gateway, TEAM_KEY, &id).await.0, 200);
    assert_eq!(feedback(&gateway, ADMIN_TOKEN, &id).await.0, 200);

    // A request refused before authentication has no owner: only the admin may score it.
    let refused = post(&gateway, "/chat/completions", "sk-wrong", CHAT.into(), &[]).await;
    let refused_id = refused.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(feedback(&gateway, ALL_KEY, &refused_id).await.0, 404);
    assert_eq!(feedback(&gateway, ADMIN_TOKEN, &refused_id).await.0, 200);

    gateway.shutdown().await;
    let lines: Vec<Value> = std::fs::read_dir(dir.path())
        .unwrap()
        .flat_map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap().lines().map(String::from).collect::<Vec<_>>())
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    let scored_by: Vec<&str> =
        lines.iter().filter(|l| l["type"] == "feedback").map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(scored_by, ["team", "admin", "admin"]);
}

/// One HTTP/1.1 response read off a raw connection: status, lower-cased headers, body.
async fn read_response(reader: &mut BufReader<TcpStream>) -> Option<(u16, Vec<(String, String)>, String)> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).await.ok()? == 0 {
        return None;
    }
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut body = Vec::new();
    if header(&headers, "transfer-encoding") == Some("chunked") {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await.ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let length: usize = header(&headers, "content-length").and_then(|v| v.parse().ok())?;
        body.resize(length, 0);
        reader.read_exact(&mut body).await.ok()?;
    }
    Some((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

async fn raw(addr: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(addr).await.expect("connect"))
}

fn request(path: &str, key: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn refusals_before_the_body_keep_the_connection_usable() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let mut conn = raw(gateway.addr()).await;
    let big = format!(r#"{{"model":"chat","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(30_000));
    // Wrong keys, an unknown path, wrong-key feedback: all on one connection, then a good one.
    let steps = [
        ("/v1/chat/completions", "sk-wrong", big.as_str(), 401),
        ("/v1/chat/completions", "sk-wrong", CHAT, 401),
        ("/v1/nowhere", TEAM_KEY, big.as_str(), 404),
        ("/v1/feedback", "sk-wrong", r#"{"request_id":"r","score":1}"#, 401),
        ("/v1/chat/completions", "sk-wrong", big.as_str(), 401),
        ("/v1/chat/completions", TEAM_KEY, CHAT, 200),
    ];
    for (path, key, body, expected) in steps {
        let sent = tokio::time::timeout(DEADLINE, async {
            conn.get_mut().write_all(request(path, key, body).as_bytes()).await.unwrap();
            read_response(&mut conn).await
        })
        .await
        .expect("answered in time");
        let (status, headers, text) = sent.unwrap_or_else(|| panic!("{path} with {key}: connection closed"));
        assert_eq!(status, expected, "{path}: {text}");
        assert_eq!(header(&headers, "connection"), None, "{path}: kept alive");
    }

    // The admin port too: a wrong token with a body, then a health check on the same connection.
    let mut conn = raw(gateway.admin_addr()).await;
    for (path, expected) in [("/admin/reload", 401), ("/admin/nowhere", 401), ("/nowhere", 404)] {
        conn.get_mut().write_all(request(path, "wrong-token", &big).as_bytes()).await.unwrap();
        let (status, headers, _) =
            tokio::time::timeout(DEADLINE, read_response(&mut conn)).await.expect("in time").expect("an answer");
        assert_eq!((status, header(&headers, "connection")), (expected, None), "{path}");
    }
    conn.get_mut().write_all(b"GET /healthz HTTP/1.1\r\nhost: weir\r\n\r\n").await.unwrap();
    let answer = tokio::time::timeout(DEADLINE, read_response(&mut conn)).await.expect("in time");
    assert_eq!(answer.map(|(status, _, _)| status), Some(200));

    // A body too big to read off in passing: the refusal says the connection closes, and it does.
    let mut conn = raw(gateway.addr()).await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer sk-wrong\r\ncontent-length: 10000000\r\n\r\n";
    conn.get_mut().write_all(head.as_bytes()).await.unwrap();
    conn.get_mut().write_all(&vec![b' '; 300_000]).await.unwrap();
    let (status, headers, _) =
        tokio::time::timeout(DEADLINE, read_response(&mut conn)).await.expect("in time").expect("an answer");
    assert_eq!(status, 401);
    assert_eq!(header(&headers, "connection"), Some("close"));
    // A client waiting for `100 Continue` is refused without being asked for its body.
    let mut conn = raw(gateway.addr()).await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer sk-wrong\r\nexpect: 100-continue\r\ncontent-length: 5000\r\n\r\n";
    conn.get_mut().write_all(head.as_bytes()).await.unwrap();
    let (status, headers, _) =
        tokio::time::timeout(DEADLINE, read_response(&mut conn)).await.expect("in time").expect("an answer");
    assert_eq!(status, 401, "a final answer, not 100 Continue");
    assert_eq!(header(&headers, "connection"), Some("close"));
    // Over max_body with a valid key: 413, and the connection closes too.
    let mut conn = raw(gateway.addr()).await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer {TEAM_KEY}\r\ncontent-length: 10000000\r\n\r\n"
    );
    conn.get_mut().write_all(head.as_bytes()).await.unwrap();
    let (status, headers, text) =
        tokio::time::timeout(DEADLINE, read_response(&mut conn)).await.expect("in time").expect("an answer");
    assert_eq!(status, 413, "{text}");
    assert_eq!(header(&headers, "connection"), Some("close"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, conn.read_to_end(&mut rest)).await.expect("closed in time");
    assert!(closed.is_ok() || rest.is_empty());
    gateway.shutdown().await;
}

#[tokio::test]
async fn wrong_keys_in_a_row_over_one_pooled_connection() {
    // A pooled client (one idle connection) as SDKs use them: every answer arrives.
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(1).timeout(DEADLINE).build().unwrap();
    let url = format!("{}/chat/completions", support::base_url(&gateway));
    let body = format!(r#"{{"model":"chat","messages":[{{"role":"user","content":"{}"}}]}}"#, "y".repeat(20_000));
    for _ in 0..50 {
        let response = client.post(&url).bearer_auth("sk-wrong").body(body.clone()).send().await.expect("answered");
        assert_eq!(response.status(), 401);
        let _ = response.bytes().await.expect("body");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn deep_json_is_refused_at_the_door_and_nothing_unreadable_is_recorded() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with_dataset(&upstream, dir.path()).await;
    let deep = |levels: usize| {
        format!(
            r#"{{"model":"chat","messages":[{{"role":"user","content":"x","extra":{}0{}}}]}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    let response = post(&gateway, "/chat/completions", TEAM_KEY, deep(30_000), &[]).await;
    let (status, _, error) = support::body_json(response).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "json_too_deep");
    assert!(error["error"]["message"].as_str().unwrap().contains("deeper than 100 levels"), "{error}");
    // Just under the limit is accepted, and its record reads back.
    let response = post(&gateway, "/chat/completions", TEAM_KEY, deep(95), &[]).await;
    assert_eq!(response.status(), 200);
    let _ = response.text().await;
    // Feedback bodies too.
    let feedback = format!(r#"{{"request_id":"r","score":1,"comment":{}1{}}}"#, "[".repeat(500), "]".repeat(500));
    let (status, _, error) = support::body_json(post(&gateway, "/feedback", TEAM_KEY, feedback, &[]).await).await;
    assert_eq!((status.as_u16(), error["error"]["code"].as_str()), (400, Some("json_too_deep")));
    gateway.shutdown().await;
    let lines = records(dir.path(), 2).await;
    assert_eq!(lines.len(), 2, "both requests recorded, each line readable");
    assert!(lines.iter().any(|l| l["status"] == 400 && l["request"].is_null()), "{lines:#?}");
}

#[tokio::test]
async fn malformed_bodies_get_a_clear_error() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let url = format!("{}/chat/completions", support::base_url(&gateway));
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"model\":\"chat\",".to_vec(), 400, "invalid_json"),
        (b"\xff\xfe{}".to_vec(), 400, "invalid_json"),
        (
            b"{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}".to_vec(),
            400,
            "invalid_json",
        ),
        (b"{\"model\":\"ch\\u0000at\\r\\n\",\"messages\":[{\"role\":\"user\"}]}".to_vec(), 404, "model_not_found"),
        (
            b"{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}".to_vec(),
            400,
            "invalid_json",
        ),
        (vec![b'{'; 70_000], 413, "request_too_large"),
        (
            format!(r#"{{"model":"{}","messages":[{{"role":"user"}}]}}"#, "m".repeat(60_000)).into_bytes(),
            400,
            "invalid_value",
        ),
    ];
    for (body, expected, code) in cases {
        let response =
            support::http().post(&url).bearer_auth(TEAM_KEY).body(body.clone()).send().await.expect("answered");
        let (status, _, answer) = support::body_json(response).await;
        assert_eq!(status.as_u16(), expected, "{:?}: {answer}", String::from_utf8_lossy(&body[..body.len().min(80)]));
        if !code.is_empty() {
            assert_eq!(answer["error"]["code"], code, "{answer}");
        }
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn smuggled_and_oversized_heads_are_refused() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;

    // Content-Length and Transfer-Encoding together: hyper refuses the request outright
    // (400, connection closed), so no second request can hide in the body.
    let smuggled = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer {TEAM_KEY}\r\n\
         content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nhost: weir\r\n\r\n"
    );
    let mut conn = raw(gateway.addr()).await;
    conn.get_mut().write_all(smuggled.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(DEADLINE, conn.read_to_end(&mut all)).await.expect("closed in time").unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "one answer, nothing smuggled through: {text}");
    assert!(upstream.requests().is_empty());

    // A header block far over hyper's buffer: 431, not a hang or unbounded memory.
    let mut conn = raw(gateway.addr()).await;
    let huge = format!("GET /v1/models HTTP/1.1\r\nhost: weir\r\nx-big: {}\r\n\r\n", "a".repeat(1 << 20));
    let _ = conn.get_mut().write_all(huge.as_bytes()).await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, conn.read_to_end(&mut all)).await.expect("closed in time");
    let text = String::from_utf8_lossy(&all);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");

    // CR/LF inside a header value (obs-fold or bare CR) is refused by the parser.
    let mut conn = raw(gateway.addr()).await;
    let folded = format!(
        "GET /v1/models HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer {ALL_KEY}\r\nx-request-id: a\rb\r\n\r\n"
    );
    conn.get_mut().write_all(folded.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, conn.read_to_end(&mut all)).await.expect("closed in time");
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&all));
    gateway.shutdown().await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let mut conn = raw(gateway.addr()).await;
    let started = tokio::time::Instant::now();
    // One byte a second, never finishing the head: weir closes it at its 30 s header timeout.
    let dribble = async {
        for byte in b"POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nx-slow: ".iter().cycle() {
            if conn.get_mut().write_all(&[*byte]).await.is_err() {
                return;
            }
            let mut probe = [0u8; 256];
            if let Ok(read) = tokio::time::timeout(Duration::from_secs(1), conn.get_mut().read(&mut probe)).await {
                if read.map_or(true, |n| n == 0 || probe[..n].starts_with(b"HTTP/1.1 408")) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(40), dribble).await.expect("the slow head is cut off within 40 s");
    assert!(started.elapsed() >= Duration::from_secs(25), "not before the header timeout");
    gateway.shutdown().await;
}

type ClientBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// An h2c connection to `addr` (HTTP/2 with prior knowledge), as one hyper client.
async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<ClientBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test]
async fn unfinished_http2_bodies_are_bounded_per_connection() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    // max_body 8 MiB (the default) so each body could grow far past the budget.
    let yaml =
        support::standard_yaml(&upstream.url(), Timeouts::default()).replace("max_body: 64KiB", "max_body: 8MiB");
    let gateway = support::start(&yaml).await;
    let mut sender = h2c(gateway.addr()).await;
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    let mut answers = Vec::new();
    let mut holds = Vec::new();
    // 300 streams, each sending ~1 MiB of body and then never finishing it.
    for _ in 0..300 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::convert::Infallible>>(32);
        for _ in 0..16 {
            let _ = tx.try_send(Ok(http_body::Frame::data(chunk.clone())));
        }
        holds.push(tx);
        let body = StreamBody::new(tokio_stream_from(rx)).boxed_unsync();
        let request = http::Request::post(format!("http://{}/v1/chat/completions", gateway.addr()))
            .header("authorization", format!("Bearer {TEAM_KEY}"))
            .body(body)
            .unwrap();
        sender.ready().await.unwrap();
        answers.push(tokio::spawn(sender.send_request(request)));
    }
    // The excess is refused, clearly and promptly, while the bodies are still unfinished.
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for answer in &mut answers {
        let Ok(Ok(Ok(response))) = tokio::time::timeout_at(deadline, answer).await else { continue };
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        assert!(response.headers().get("connection").is_none(), "no connection header in HTTP/2");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["error"]["code"], "too_many_request_bodies", "{error}");
        refused += 1;
        if refused >= 250 {
            break;
        }
    }
    assert!(refused >= 250, "only {refused} of 300 unfinished bodies were refused");
    // weir still answers everyone else, over HTTP/2 on a new connection too.
    let mut other = h2c(gateway.addr()).await;
    let request = http::Request::post(format!("http://{}/v1/chat/completions", gateway.addr()))
        .header("authorization", format!("Bearer {TEAM_KEY}"))
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())).map_err(|never| match never {}).boxed_unsync())
        .unwrap();
    other.ready().await.unwrap();
    let response = tokio::time::timeout(DEADLINE, other.send_request(request)).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    drop(holds);
    gateway.shutdown().await;
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn client_text_cannot_split_an_access_line() {
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "server:\n  listen: 127.0.0.1:{port}\n  admin_listen: 127.0.0.1:{admin}\n\
         backends:\n  mock: {{ kind: mock, latency: 1ms }}\n\
         models:\n  mock: {{ targets: [ {{ backend: mock, model: mock }} ] }}\n\
         auth: {{ mode: none }}\n",
        admin = free_port()
    );
    let path = cwd.path().join("weir.yaml");
    std::fs::write(&path, config).unwrap();
    let mut serve = ServeGuard::spawn_with_env(
        cwd.path(),
        &["--config", path.to_str().unwrap()],
        &[("RUST_LOG", "info,weir::access=debug")],
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    serve.wait_listening(addr);
    let forged = "mock\r\n2026-01-01T00:00:00.000000Z  WARN weir::access: request failed request_id=forged";
    let body = json!({"model": forged, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let response = support::http()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("x-request-id", "client-1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(serve.terminate().success());
    let log = serve.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("weir::access")).collect();
    assert_eq!(lines.len(), 1, "one access line, none forged: {log}");
    assert!(lines[0].contains(r"mock\r\n2026-01-01"), "escaped: {}", lines[0]);
    assert!(lines[0].contains("client_request_id=client-1"), "{}", lines[0]);
    assert!(!log.lines().any(|l| l.contains("request_id=forged") && !l.contains(r"\r\n")), "{log}");
}
