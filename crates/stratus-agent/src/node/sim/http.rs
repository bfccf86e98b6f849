//! A minimal HTTP/1.1 client for simulated nodes: one request at a time on
//! a kept-alive connection, bodies with a `content-length` or chunked.
//!
//! Ten thousand nodes each wait in a long-poll at once, so what a waiting
//! connection holds matters more than anything else here: nothing but the
//! socket. The read buffer is only allocated once the socket is readable,
//! and dropped with the answer (a general client keeps a buffer of several
//! KiB per connection for its whole life).

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The largest answer head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The largest answer body accepted (an assignments list of a busy node).
const MAX_BODY: usize = 64 << 20;

/// One answer.
pub struct Response {
    pub status: u16,
    /// `X-Subject-Token` (a login's answer).
    pub subject_token: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request to send.
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    pub token: Option<&'a str>,
    pub content_type: &'a str,
    pub body: Option<&'a [u8]>,
}

/// The controller, reached over plain HTTP, with a small pool of idle
/// connections shared by every simulated node for their short calls
/// (heartbeats, reports, logins). At most `permits` such calls run at
/// once, so the pool never grows past that.
pub struct Controller {
    addr: SocketAddr,
    host: String,
    idle: Mutex<Vec<TcpStream>>,
    permits: Semaphore,
    max_idle: usize,
}

impl Controller {
    /// `url` is `http://host:port` (simulated nodes speak plain HTTP to a
    /// controller they reach directly).
    pub fn new(url: &str, concurrency: usize) -> anyhow::Result<Controller> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| {
                anyhow::anyhow!("simulated nodes reach the controller over http://, not {url}")
            })?
            .trim_end_matches('/');
        anyhow::ensure!(
            !authority.contains('/'),
            "simulated nodes need the controller's root URL (http://host:port), not {url}"
        );
        let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{authority} resolves to no address"))?;
        Ok(Controller {
            addr,
            host: authority.to_string(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(concurrency),
            max_idle: concurrency,
        })
    }

    /// A new connection (for a node's own long-poll).
    pub async fn connect(&self) -> io::Result<TcpStream> {
        let s = TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// A short call on a pooled connection, within `limit`. A kept-alive
    /// connection the controller closed meanwhile is replaced once.
    pub async fn call(&self, req: &Request<'_>, limit: Duration) -> io::Result<Response> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| io::Error::other("closed"))?;
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect().await?,
        };
        let mut result = timed(limit, exchange(&conn, &self.host, req)).await;
        if reused && matches!(&result, Err(e) if e.kind() != io::ErrorKind::TimedOut) {
            conn = self.connect().await?;
            result = timed(limit, exchange(&conn, &self.host, req)).await;
        }
        let (resp, keep) = result?;
        if keep {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.max_idle {
                idle.push(conn);
            }
        }
        Ok(resp)
    }

    /// A call on the caller's own connection (made when there is none, or
    /// when the kept one turns out closed), within `limit`.
    pub async fn call_on(
        &self,
        conn: &mut Option<TcpStream>,
        req: &Request<'_>,
        limit: Duration,
    ) -> io::Result<Response> {
        for attempt in 0..2 {
            let reused = conn.is_some();
            let c = match conn.take() {
                Some(c) => c,
                None => self.connect().await?,
            };
            match timed(limit, exchange(&c, &self.host, req)).await {
                Ok((resp, keep)) => {
                    if keep {
                        *conn = Some(c);
                    }
                    return Ok(resp);
                }
                Err(e) if reused && attempt == 0 && e.kind() != io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("unreachable"))
    }
}

async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")),
    }
}

/// Sends one request and reads its answer; whether the connection may
/// be used again.
async fn exchange(conn: &TcpStream, host: &str, req: &Request<'_>) -> io::Result<(Response, bool)> {
    let mut head = format!("{} {} HTTP/1.1\r\nhost: {host}\r\n", req.method, req.path);
    if let Some(t) = req.token {
        head.push_str("x-auth-token: ");
        head.push_str(t);
        head.push_str("\r\n");
    }
    match req.body {
        Some(b) => {
            head.push_str(&format!(
                "content-type: {}\r\ncontent-length: {}\r\n\r\n",
                req.content_type,
                b.len()
            ));
            let mut out = head.into_bytes();
            out.extend_from_slice(b);
            write_all(conn, &out).await?;
        }
        None => {
            head.push_str("\r\n");
            write_all(conn, head.as_bytes()).await?;
        }
    }
    read_response(conn, req.method == "HEAD").await
}

/// Writes all of `data` (tokio's `io-util` is not built here; this is
/// all of it that is needed).
async fn write_all(conn: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        conn.writable().await?;
        match conn.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads more of the answer into `buf`; the buffer grows only once
/// there is something to read.
async fn read_more(conn: &TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    loop {
        conn.readable().await?;
        let mut chunk = [0u8; 4096];
        match conn.try_read(&mut chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn read_response(conn: &TcpStream, head_only: bool) -> io::Result<(Response, bool)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("answer head too long"));
        }
        read_more(conn, &mut buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("answer head not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut keep = version == "HTTP/1.1";
    let mut length = None;
    let mut chunked = false;
    let mut subject_token = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| bad("bad content-length"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            keep = !v.eq_ignore_ascii_case("close");
        } else if k.eq_ignore_ascii_case("x-subject-token") {
            subject_token = Some(v.to_string());
        }
    }
    let body = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if chunked {
        read_chunked(conn, buf, head_end).await?
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(bad("answer body too big"));
        }
        while buf.len() < head_end + n {
            read_more(conn, &mut buf).await?;
        }
        buf[head_end..head_end + n].to_vec()
    } else {
        // Until the controller closes the connection.
        keep = false;
        loop {
            match read_more(conn, &mut buf).await {
                Ok(()) if buf.len() - head_end > MAX_BODY => {
                    return Err(bad("answer body too big"));
                }
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        buf[head_end..].to_vec()
    };
    Ok((
        Response {
            status,
            subject_token,
            body,
        },
        keep,
    ))
}

async fn read_chunked(conn: &TcpStream, mut buf: Vec<u8>, mut pos: usize) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = find(&buf[pos..], b"\r\n") {
                break pos + p;
            }
            read_more(conn, &mut buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[pos..line_end]).map_err(|_| bad("bad chunk"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let end = loop {
                    if let Some(p) = find(&buf[pos..], b"\r\n") {
                        break pos + p;
                    }
                    read_more(conn, &mut buf).await?;
                };
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(bad("answer body too big"));
        }
        while buf.len() < pos + size + 2 {
            read_more(conn, &mut buf).await?;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a request head and its body (by content-length).
    async fn read_request(s: &TcpStream) -> String {
        let mut buf = Vec::new();
        let end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            read_more(s, &mut buf).await.unwrap();
        };
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map(|v| v.trim().parse::<usize>().unwrap())
            .unwrap_or(0);
        while buf.len() < end + len {
            read_more(s, &mut buf).await.unwrap();
        }
        String::from_utf8(buf).unwrap()
    }

    /// Serves `answers` in order on one connection, each after reading a
    /// request head (and its body, by content-length).
    async fn serve(answers: Vec<&'static [u8]>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut seen = Vec::new();
            for a in answers {
                seen.push(read_request(&s).await);
                write_all(&s, a).await.unwrap();
            }
            seen
        });
        (url, h)
    }

    #[tokio::test]
    async fn keeps_one_connection_for_lengths_chunks_and_no_content() {
        let (url, h) = serve(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-subject-token: tok\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let c = Controller::new(&url, 4).unwrap();
        let mut conn = None;
        let get = Request {
            method: "GET",
            path: "/a?b=1",
            token: Some("t"),
            content_type: "",
            body: None,
        };
        let r = c
            .call_on(&mut conn, &get, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "hello"));
        assert_eq!(r.subject_token.as_deref(), Some("tok"));
        let r = c
            .call_on(&mut conn, &get, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "abcde"));
        let post = Request {
            method: "POST",
            path: "/r",
            token: None,
            content_type: "application/json",
            body: Some(b"{\"x\":1}"),
        };
        let r = c
            .call_on(&mut conn, &post, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        let seen = h.await.unwrap();
        assert!(
            seen[0].starts_with("GET /a?b=1 HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(seen[0].contains("x-auth-token: t\r\n"));
        assert!(seen[2].ends_with("{\"x\":1}"), "{}", seen[2]);
    }

    #[tokio::test]
    async fn a_closed_kept_connection_is_replaced() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            // First connection: one answer, then closed; second: one more.
            for _ in 0..2 {
                let (s, _) = l.accept().await.unwrap();
                read_request(&s).await;
                write_all(&s, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
        });
        let c = Controller::new(&url, 2).unwrap();
        let get = Request {
            method: "GET",
            path: "/",
            token: None,
            content_type: "",
            body: None,
        };
        for _ in 0..2 {
            let r = c.call(&get, Duration::from_secs(5)).await.unwrap();
            assert_eq!(r.text(), "ok");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
