//! The connection wrapper that lets the shield's [`FramingScanner`] see
//! HTTP/1 request heads before hyper parses them, so smuggling shapes that
//! hyper would repair (Content-Length with Transfer-Encoding, repeated
//! identical Content-Length) are answered 400 instead (see
//! `shield::framing`). Each refusal is an audit event.

use shield::framing::{FramingScanner, SPOILED_END};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct FramingGuard<T> {
    inner: T,
    scanner: FramingScanner,
    peer: SocketAddr,
    /// After a refused head: what is still to be handed to hyper in place
    /// of the client's bytes; then the input ends.
    spoiled: Option<&'static [u8]>,
}

impl<T> FramingGuard<T> {
    pub fn new(inner: T, peer: SocketAddr) -> FramingGuard<T> {
        FramingGuard {
            inner,
            scanner: FramingScanner::new(),
            peer,
            spoiled: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.spoiled {
            // The refused head's spoiled end, then end of input: hyper
            // answers 400 and closes.
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.spoiled = Some(&rest[n..]);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            if !this.scanner.is_done() {
                if let Some(refused) = this.scanner.scan(&buf.filled()[before..]) {
                    tracing::warn!(
                        target: "spinforge::audit", event = "shield.framing_refused",
                        peer = %this.peer, reason = refused.reason,
                        "request with smuggling framing refused (400)"
                    );
                    // Keep the head up to its final line feed, drop the
                    // rest of this read, and hand over the spoiled end.
                    buf.set_filled(before + refused.at);
                    let n = SPOILED_END.len().min(buf.remaining());
                    buf.put_slice(&SPOILED_END[..n]);
                    this.spoiled = Some(&SPOILED_END[n..]);
                }
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
