//! Black-box: the real `weir serve` binary, as a user starts it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support;

/// Kills the child when the test ends, however it ends.
pub(crate) struct ServeGuard {
    child: Child,
    stderr_path: std::path::PathBuf,
}

impl ServeGuard {
    pub(crate) fn spawn(cwd: &Path, args: &[&str]) -> ServeGuard {
        Self::spawn_with_env(cwd, args, &[])
    }

    pub(crate) fn spawn_with_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> ServeGuard {
        let stderr_path = cwd.join("weir.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("serve")
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn weir serve");
        ServeGuard { child, stderr_path }
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until `addr` accepts connections; fails clearly if the process exits or the
    /// deadline passes.
    pub(crate) fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + support::DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("weir serve exited with {status} before listening on {addr}:\n{}", self.stderr());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "weir serve did not listen on {addr} in time:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `kill -NAME` to the process.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status();
        assert!(status.expect("run kill").success(), "kill -{name} failed");
    }

    /// SIGTERM, then the exit status; fails if the process does not exit promptly.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "weir serve ignored SIGTERM for 5s:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeGuard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A chat for model `mock` without a key, the way a first-time user tries it.
async fn chat_with_mock(addr: SocketAddr) {
    let response = support::http()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"mock","messages":[{"role":"user","content":"hello"}]}"#)
        .send()
        .await
        .expect("request to weir serve");
    let (status, headers, body) = support::body_json(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers.get("x-weir-backend").expect("x-weir-backend"), "mock");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{body}");
}

#[tokio::test]
async fn serve_without_a_config_uses_the_embedded_default() {
    let addr: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    let admin: SocketAddr = "127.0.0.1:9090".parse().expect("addr");
    for port in [addr, admin] {
        if let Err(err) = TcpListener::bind(port) {
            panic!("{port} is busy ({err}); the embedded default listens there, so this test needs it free");
        }
    }
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut serve = ServeGuard::spawn(cwd.path(), &[]);
    serve.wait_listening(addr);

    chat_with_mock(addr).await;
    let ready = support::http().get(format!("http://{admin}/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);

    let status = serve.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}:\n{}", serve.stderr());
}

#[tokio::test]
async fn serve_with_a_config_file() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let (port, admin_port) = (free_port(), free_port());
    let config = format!(
        "server:\n  listen: 127.0.0.1:{port}\n  admin_listen: 127.0.0.1:{admin_port}\n\
         backends:\n  mock: {{ kind: mock, latency: 1ms }}\n\
         models:\n  mock: {{ targets: [ {{ backend: mock, model: mock }} ] }}\n\
         auth: {{ mode: none }}\n"
    );
    let path = cwd.path().join("test.yaml");
    std::fs::write(&path, config).expect("write config");
    let mut serve = ServeGuard::spawn(cwd.path(), &["--config", path.to_str().expect("UTF-8 path")]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    serve.wait_listening(addr);

    chat_with_mock(addr).await;

    let status = serve.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}:\n{}", serve.stderr());
}

/// An HTTPS upstream (self-signed for `localhost`, ALPN h2 and http/1.1) answering chat with
/// weir's mock model; it records the HTTP version of each request it gets.
async fn tls_upstream(dir: &Path) -> (u16, std::path::PathBuf, std::sync::Arc<std::sync::Mutex<Vec<http::Version>>>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_path = dir.join("upstream-ca.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).expect("key");
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let versions = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = versions.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().expect("versions").push(request.version());
                        let body = http_body_util::BodyExt::collect(request.into_body()).await?.to_bytes();
                        let json: serde_json::Value = serde_json::from_slice(&body).expect("json body");
                        let answer = weir::backends::mock::Answer::plan(weir::wire::Endpoint::ChatCompletions, &json)
                            .expect("answer");
                        let mut response =
                            http::Response::new(http_body_util::Full::new(bytes::Bytes::from(answer.to_json())));
                        response
                            .headers_mut()
                            .insert("content-type", http::HeaderValue::from_static("application/json"));
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, cert_path, versions)
}

#[tokio::test]
async fn an_https_backend_is_reached_over_tls_with_http2() {
    support::init();
    let cwd = tempfile::tempdir().expect("tempdir");
    let (upstream_port, ca_path, versions) = tls_upstream(cwd.path()).await;
    let (port, admin_port) = (free_port(), free_port());
    let config = format!(
        "server:\n  listen: 127.0.0.1:{port}\n  admin_listen: 127.0.0.1:{admin_port}\n\
         backends:\n  mock: {{ kind: openai, base_url: \"https://localhost:{upstream_port}/v1\", api_key: sk-x }}\n\
         models:\n  mock: {{ targets: [ {{ backend: mock, model: gpt-secure }} ] }}\n\
         auth: {{ mode: none }}\n"
    );
    let path = cwd.path().join("tls-backend.yaml");
    std::fs::write(&path, config).expect("write config");
    // The platform trust store is read from SSL_CERT_FILE, as in any rustls-native-certs program.
    let ca = ca_path.to_str().expect("UTF-8 path");
    let mut serve = ServeGuard::spawn_with_env(
        cwd.path(),
        &["--config", path.to_str().expect("UTF-8 path")],
        &[("SSL_CERT_FILE", ca)],
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    serve.wait_listening(addr);

    for _ in 0..2 {
        chat_with_mock(addr).await;
    }
    let versions = versions.lock().expect("versions").clone();
    assert_eq!(
        versions,
        [http::Version::HTTP_2, http::Version::HTTP_2],
        "TLS upstream offered h2 by ALPN:\n{}",
        serve.stderr()
    );
    let status = serve.terminate();
    assert!(status.success(), "{}", serve.stderr());
}
