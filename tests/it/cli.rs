//! Black-box: the real `weir serve` binary, as a user starts it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support;

/// Kills the child when the test ends, however it ends.
struct ServeGuard {
    child: Child,
    stderr_path: std::path::PathBuf,
}

impl ServeGuard {
    fn spawn(cwd: &Path, args: &[&str]) -> ServeGuard {
        let stderr_path = cwd.join("weir.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("serve")
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn weir serve");
        ServeGuard { child, stderr_path }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until `addr` accepts connections; fails clearly if the process exits or the
    /// deadline passes.
    fn wait_listening(&mut self, addr: SocketAddr) {
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

    /// SIGTERM, then the exit status; fails if the process does not exit promptly.
    fn terminate(&mut self) -> ExitStatus {
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

fn free_port() -> u16 {
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
