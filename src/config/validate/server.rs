//! Checks `server:`: the two listen addresses (which must differ), TLS paths, body limit and
//! shutdown timeout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Cx;
use crate::config::raw::RawServer;
use crate::config::{ServerConfig, TlsConfig};

impl Cx<'_> {
    fn addr(&mut self, path: &str, field: &str, text: Option<&str>, default: &str) -> SocketAddr {
        let text = text.unwrap_or(default).trim();
        let local = text.strip_prefix("localhost:").map(|port| format!("127.0.0.1:{port}"));
        match local.as_deref().unwrap_or(text).parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.err(path, format!("`{field}`: invalid address `{text}`: expected IP:PORT such as {default}"));
                default.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
            }
        }
    }

    pub(super) fn server(&mut self, raw: &RawServer) -> ServerConfig {
        let listen = self.addr("server.listen", "listen", raw.listen.as_deref(), "127.0.0.1:8080");
        let admin_listen =
            self.addr("server.admin_listen", "admin_listen", raw.admin_listen.as_deref(), "127.0.0.1:9090");
        if listen == admin_listen && listen.port() != 0 {
            self.err("server.admin_listen", format!("`admin_listen` must differ from `listen` ({listen})"));
        }
        let tls = raw.tls.as_ref().map(|tls| {
            for (field, value) in [("cert", &tls.cert), ("key", &tls.key)] {
                if value.trim().is_empty() {
                    self.err(&format!("server.tls.{field}"), format!("`tls.{field}` must be a file path"));
                }
            }
            TlsConfig { cert: PathBuf::from(&tls.cert), key: PathBuf::from(&tls.key) }
        });
        ServerConfig {
            listen,
            admin_listen,
            tls,
            max_body: self.size("server.max_body", "max_body", raw.max_body.as_deref(), 8 << 20),
            admin_token: raw.admin_token.clone().filter(|t| !t.is_empty()),
            shutdown_timeout: self.duration(
                "server.shutdown_timeout",
                "shutdown_timeout",
                raw.shutdown_timeout.as_deref(),
                Duration::from_secs(30),
                false,
            ),
        }
    }
}
