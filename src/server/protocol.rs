//! Which HTTP version a connection speaks, decided before hyper reads a byte.
//!
//! Owns: telling HTTP/1 from HTTP/2 with prior knowledge (h2c) by peeking at the first bytes
//! of a plaintext connection, and by ALPN on TLS, and the connection builder for each.
//! Must not: consume bytes from the socket, or read past the HTTP/2 preface's length.
//!
//! Why not hyper-util's auto-detection: it reads the first 24 bytes itself and hands them
//! back to hyper, whose HTTP/1 read buffer then grows from 8 to 16 KiB to fit the rest of the
//! request head behind them. Every open HTTP/1 connection carried that extra 8 KiB for its
//! whole life (the largest single cost of 8,000 open streams, measured with heaptrack).

use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

/// What a client with prior knowledge of HTTP/2 sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How often a connection that has sent only part of the preface so far is looked at again.
const PARTIAL_PREFACE_RETRY: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
    /// Not known up front (TLS without ALPN): hyper-util detects it.
    Detect,
}

impl Protocol {
    /// The protocol TLS negotiated, if ALPN picked one.
    pub(super) fn from_alpn(alpn: Option<&[u8]>) -> Protocol {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Detect,
        }
    }
}

/// Peeks at a plaintext connection until its first bytes tell the protocol: the HTTP/2
/// preface, or anything else (HTTP/1). `None` when the client closes or fails first.
pub(super) async fn sniff(stream: &TcpStream) -> Option<Protocol> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let seen = stream.peek(&mut first).await.ok().filter(|n| *n > 0)?;
        let (head, _) = first.split_at(seen);
        if !H2_PREFACE.starts_with(head) {
            return Some(Protocol::Http1);
        }
        if seen == H2_PREFACE.len() {
            return Some(Protocol::Http2);
        }
        // Only part of the preface has arrived; `peek` would return the same bytes at once.
        tokio::time::sleep(PARTIAL_PREFACE_RETRY).await;
    }
}

/// One connection builder per protocol, configured alike. HTTP/1 uses hyper's own builder:
/// its connection is less than half the size of hyper-util's auto connection (which has room
/// for every protocol), and an open connection's task holds it for the connection's life.
pub(super) struct Builders {
    pub(super) http1: hyper::server::conn::http1::Builder,
    http2: auto::Builder<TokioExecutor>,
    detect: auto::Builder<TokioExecutor>,
}

impl Builders {
    /// `auto` is configured for both protocols; `http1` alike for HTTP/1.
    pub(super) fn new(http1: hyper::server::conn::http1::Builder, auto: auto::Builder<TokioExecutor>) -> Builders {
        Builders { http1, http2: auto.clone().http2_only(), detect: auto }
    }

    /// The builder for HTTP/2 or an unknown protocol (HTTP/1 goes to [`Builders::http1`]).
    pub(super) fn auto(&self, protocol: Protocol) -> &auto::Builder<TokioExecutor> {
        match protocol {
            Protocol::Http2 => &self.http2,
            Protocol::Http1 | Protocol::Detect => &self.detect,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    async fn sniffed(sent: &[&[u8]]) -> Option<Protocol> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        for part in sent {
            client.write_all(part).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if sent.is_empty() {
            drop(client);
        }
        tokio::time::timeout(Duration::from_secs(5), sniff(&server)).await.unwrap()
    }

    #[tokio::test]
    async fn http1_is_told_from_the_first_differing_byte() {
        assert_eq!(sniffed(&[b"POST /v1/chat/completions HTTP/1.1\r\n"]).await, Some(Protocol::Http1));
        assert_eq!(sniffed(&[b"P", b"O"]).await, Some(Protocol::Http1));
        assert_eq!(sniffed(&[b"GET / HTTP/1.1\r\n\r\n"]).await, Some(Protocol::Http1));
    }

    #[tokio::test]
    async fn the_h2_preface_is_recognised_even_in_pieces() {
        assert_eq!(sniffed(&[H2_PREFACE]).await, Some(Protocol::Http2));
        assert_eq!(sniffed(&[&H2_PREFACE[..3], &H2_PREFACE[3..10], &H2_PREFACE[10..]]).await, Some(Protocol::Http2));
    }

    #[tokio::test]
    async fn a_client_that_leaves_first_is_none() {
        assert_eq!(sniffed(&[]).await, None);
    }

    #[test]
    fn alpn_picks_the_builder() {
        assert_eq!(Protocol::from_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::from_alpn(None), Protocol::Detect);
    }
}
