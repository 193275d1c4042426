//! A client that stops reading cannot hold a connection (and what its response holds: the
//! backend's place in flight, the upstream connection) for longer than [`SEND_TIMEOUT`].
//!
//! Owns: [`SendTimeout`], a wrapper of an accepted connection whose writes fail once one has
//! waited on the client for that long without progress, as nginx's `send_timeout` does.
//! hyper then closes the connection and drops the response body, which ends the request
//! (`client_gone`) and releases everything it held. Backpressure that clears in time costs
//! nothing but a timer reset.
//! Must not: time reads (idle keep-alive and slow request bodies have their own limits) or
//! touch a write that makes progress.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Longest a write may wait on a client that does not read.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

pub struct SendTimeout<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write waits on the client; created on the first such wait.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> SendTimeout<S> {
        SendTimeout { inner, limit, timer: None, armed: false }
    }

    /// A write is waiting on the client: start (or go on) counting.
    fn waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let deadline = Instant::now() + self.limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        if timer.as_mut().poll(cx).is_ready() {
            let message = format!("the client read nothing for {:?}", self.limit);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)));
        }
        Poll::Pending
    }

    fn progressed<T>(&mut self, result: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.waiting(cx),
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progressed(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.progressed(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_after_the_timeout() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut server = SendTimeout::new(server, Duration::from_secs(60));
        let started = Instant::now();
        let chunk = vec![b'x'; 512];
        // The client reads a little, then stops: writes fill its buffer and wait.
        server.write_all(&chunk).await.unwrap();
        let mut read = vec![0; 256];
        client.read_exact(&mut read).await.unwrap();
        let err = loop {
            if let Err(err) = server.write_all(&chunk).await {
                break err;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(60), "{:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(61), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut() {
        let (server, mut client) = tokio::io::duplex(64);
        let mut server = SendTimeout::new(server, Duration::from_secs(60));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 32];
            let mut total = 0;
            while total < 64 * 100 {
                tokio::time::sleep(Duration::from_secs(30)).await;
                total += client.read(&mut buf).await.unwrap();
            }
        });
        for _ in 0..100 {
            server.write_all(&[b'y'; 64]).await.expect("each write progresses within the timeout");
        }
        drop(server);
        reader.await.unwrap();
    }
}
