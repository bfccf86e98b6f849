//! The HTTP/1 listener: hyper's connection loop, run with our limits.
//!
//! Most limits are checked in [`crate::middleware`], where the request is
//! whole. hyper itself answers a request head it cannot parse, before any
//! handler sees it: more header fields than the limit or a head too big
//! for its buffer (431), a URI over 64 KiB (414, the `http` crate's
//! bound), a control character in a header (400). Its answer is an empty
//! body and no request id, which OpenStack clients cannot read. So each
//! connection's I/O goes through [`EdgeIo`], which recognises those
//! answers as hyper writes them and writes the service's fault (by the
//! path on the request line) with a request id instead; the connection
//! then closes, as hyper intends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::ApiError;
use crate::error::Shape;

/// How big a request may be. Defaults follow the OpenStack services behind
/// Apache and oslo.middleware.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Most header fields in one request (Apache's LimitRequestFields: 100).
    pub max_header_count: usize,
    /// Most bytes all header fields of a request take together, names,
    /// values and line ends counted (64 KiB).
    pub max_header_bytes: usize,
    /// Longest request URI, path and query, in bytes (Apache's
    /// LimitRequestLine: 8 KiB); at most 65534.
    pub max_uri_bytes: usize,
    /// Largest request body of the OpenStack APIs, in bytes
    /// (oslo.middleware's max_request_body_size: 112 KiB). Image data is
    /// bounded by the image size cap instead.
    pub max_body_bytes: u64,
    /// Largest request body of the node agents' API (`/edge/v1`), whose
    /// heartbeats list every workload on a node (16 MiB).
    pub max_agent_body_bytes: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_count: 100,
            max_header_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 114_688,
            max_agent_body_bytes: 16 << 20,
        }
    }
}

/// The `http` crate's bound on a URI; hyper answers 414 past it.
pub const MAX_URI_BYTES: usize = (u16::MAX - 1) as usize;

impl HttpLimits {
    /// hyper's read buffer: room for a whole head within the limits (the
    /// request line, the URI, the header fields), so hyper refuses only
    /// heads that are over them.
    fn read_buffer(&self) -> usize {
        (self.max_uri_bytes + self.max_header_bytes + 1024).max(8192)
    }

    pub(crate) fn header_message(&self) -> String {
        format!(
            "The request's header fields are too large: at most {} fields of {} bytes in all are accepted.",
            self.max_header_count, self.max_header_bytes
        )
    }

    pub(crate) fn uri_message(&self) -> String {
        format!(
            "The request URI is too long: at most {} bytes are accepted.",
            self.max_uri_bytes.min(MAX_URI_BYTES)
        )
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Arc::new(limits);
    // `stop` tells connections to finish; every connection holds a
    // `done` receiver, so `done_tx.closed()` waits for the last one.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, done_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, retry.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let io = TokioIo::new(EdgeIo::new(tcp, limits.clone()));
        let service = TowerToHyperService::new(router.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .max_headers(limits.max_header_count)
            .max_buf_size(limits.read_buffer())
            // One buffer per write, so hyper's own answers reach EdgeIo
            // whole.
            .writev(false);
        let mut stop = stop_rx.clone();
        let done = done_rx.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(builder.serve_connection(io, service).with_upgrades());
            let mut stopping = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                        break;
                    }
                    _ = stop.changed(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(done);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_rx);
    done_tx.closed().await;
}

/// How much of a request's start [`EdgeIo`] keeps: enough for the method
/// and the service prefix of the path.
const HEAD_KEPT: usize = 512;

/// A connection's socket, as hyper reads and writes it. It keeps the first
/// bytes of the request being read (to know which API it was for) and
/// replaces hyper's own answers to heads it could not parse with the
/// service's fault.
struct EdgeIo {
    tcp: TcpStream,
    limits: Arc<HttpLimits>,
    /// The start of the request being read: bytes read since the last
    /// answer was written.
    head: Vec<u8>,
    /// An answer was written since `head` was filled: the next read starts
    /// a new request.
    answered: bool,
    /// Our answer in place of hyper's, and how much of it is written.
    replacement: Vec<u8>,
    replaced: usize,
}

impl EdgeIo {
    fn new(tcp: TcpStream, limits: Arc<HttpLimits>) -> Self {
        EdgeIo {
            tcp,
            limits,
            head: Vec::new(),
            answered: false,
            replacement: Vec::new(),
            replaced: 0,
        }
    }

    /// Writes what is left of the replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.replaced < self.replacement.len() {
            let n =
                ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.replacement[self.replaced..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.replaced += n;
        }
        Poll::Ready(Ok(()))
    }

    /// The fault, as bytes on the wire, that replaces hyper's answer with
    /// `status`.
    fn render(&self, status: StatusCode) -> Vec<u8> {
        let (method, path) = request_line(&self.head);
        let message = match status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => self.limits.header_message(),
            StatusCode::URI_TOO_LONG => self.limits.uri_message(),
            _ => "The request could not be parsed: its request line or a header field is \
                  malformed (a header value may not hold control characters)."
                .to_string(),
        };
        let id = crate::middleware::new_request_id();
        tracing::info!(request_id = %id, method, path, status = status.as_u16(), "request refused before routing: {message}");
        let resp = Shape::for_path(path).render(ApiError::new(status, message), &id);
        let (parts, body) = resp.into_parts();
        let body = ready_bytes(body);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        )
        .into_bytes();
        for (name, value) in &parts.headers {
            if name != axum::http::header::CONTENT_LENGTH {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(
            format!(
                "content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        if method != "HEAD" {
            out.extend_from_slice(&body);
        }
        out
    }
}

/// The body of a rendered fault (always complete at once).
fn ready_bytes(body: axum::body::Body) -> Vec<u8> {
    let mut fut = std::pin::pin!(axum::body::to_bytes(body, 64 * 1024));
    match fut
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(Ok(b)) => b.to_vec(),
        _ => Vec::new(),
    }
}

/// The method and path of a request's first line, as far as kept.
fn request_line(head: &[u8]) -> (&str, &str) {
    let start = head
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(head.len());
    let line = &head[start..];
    let mut parts = line.splitn(3, |b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path_end = target
        .iter()
        .position(|b| *b == b'?' || *b == b'\r' || *b == b'\n')
        .unwrap_or(target.len());
    let method = std::str::from_utf8(method).unwrap_or("");
    let path = std::str::from_utf8(&target[..path_end]).unwrap_or("");
    (method, path)
}

/// The status of hyper's own answer to a head it could not parse, when
/// `buf` is one: a 400, 414 or 431 head with no body and no headers but
/// `connection`, `content-length: 0` and `date`. Every answer of ours
/// carries a request id and a content type, so never looks like this.
fn hyper_refusal(buf: &[u8]) -> Option<StatusCode> {
    if buf.len() > 512 {
        return None;
    }
    let text = std::str::from_utf8(buf).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = match lines.next()?.strip_prefix("HTTP/1.1 ")?.get(..4)? {
        "400 " => StatusCode::BAD_REQUEST,
        "414 " => StatusCode::URI_TOO_LONG,
        "431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "connection" | "date" => {}
            "content-length" if value.trim() == "0" => {}
            _ => return None,
        }
    }
    Some(status)
}

impl AsyncRead for EdgeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        let this = &mut *self;
        if this.answered {
            this.head.clear();
            this.answered = false;
        }
        let room = HEAD_KEPT.saturating_sub(this.head.len());
        let new = &buf.filled()[before..];
        this.head.extend_from_slice(&new[..new.len().min(room)]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_replacement(cx))?;
        if let Some(status) = hyper_refusal(buf) {
            this.replacement = this.render(status);
            this.replaced = 0;
            // Taken whole; what is left goes out on flush.
            let _ = this.poll_replacement(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        this.answered = true;
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_hyper_refusals_only() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 01:00:22 GMT\r\n\r\n";
        assert_eq!(
            hyper_refusal(hyper),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nx-openstack-request-id: req-1\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_refusal(ours), None);
        let ok = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_refusal(ok), None);
    }

    #[test]
    fn reads_the_request_line() {
        assert_eq!(
            request_line(b"\r\nGET /compute/v2.1/servers?x=1 HTTP/1.1\r\nHost"),
            ("GET", "/compute/v2.1/servers")
        );
        assert_eq!(request_line(b"PUT /placement/tr"), ("PUT", "/placement/tr"));
        assert_eq!(request_line(b""), ("", ""));
    }
}
