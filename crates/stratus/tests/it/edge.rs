//! The HTTP edge: requests refused before (or by) the framework still get
//! an answer in the service's own fault shape with a request id, on every
//! path prefix. Sent over a raw socket, since HTTP clients refuse to send
//! most of these.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use super::common::Server;

/// Which fault shape a prefix answers in.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Keystone,
    Nova,
    Glance,
    Placement,
}

/// Every prefix: where a request goes, the method and path that takes a
/// body, and the shape of its faults.
const PREFIXES: &[(&str, &str, &str, Shape)] = &[
    (
        "/identity/v3/users",
        "POST",
        "/identity/v3/users",
        Shape::Keystone,
    ),
    (
        "/compute/v2.1/servers",
        "POST",
        "/compute/v2.1/servers",
        Shape::Nova,
    ),
    (
        "/image/v2/images",
        "POST",
        "/image/v2/images",
        Shape::Glance,
    ),
    (
        "/placement/resource_providers",
        "POST",
        "/placement/resource_providers",
        Shape::Placement,
    ),
    (
        "/edge/v1/nodes/n1/servers",
        "PUT",
        "/edge/v1/nodes/n1",
        Shape::Keystone,
    ),
    ("/no/such/api", "POST", "/no/such/api", Shape::Keystone),
];

/// The default --max-body-bytes, and the agent limit this test sets.
const BODY_LIMIT: usize = 114_688;
const AGENT_BODY_LIMIT: usize = 150_000;

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as it is and reads one answer. The server may answer
/// and close before it has read everything, so a failed write is fine.
fn send(s: &Server, request: &[u8]) -> Answer {
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = tcp.write_all(request);
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => panic!(
                "no complete answer, got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while got.len() < head_end + len {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got[head_end..(head_end + len).min(got.len())]).to_string();
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// Asserts the answer: `status`, a JSON body in `shape`, a request id.
fn check(what: &str, path: &str, shape: Shape, a: &Answer, status: u16) {
    let ctx = format!("{what} on {path}: {} {}", a.status, a.text);
    assert_eq!(a.status, status, "{ctx}");
    let rid = a.header("x-openstack-request-id").unwrap_or_default();
    assert!(rid.starts_with("req-"), "request id: {ctx}");
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.contains("application/json")),
        "content type: {ctx}"
    );
    let b = &a.body;
    match shape {
        Shape::Keystone => {
            assert_eq!(b["error"]["code"], status, "{ctx}");
            assert!(b["error"]["title"].is_string(), "{ctx}");
            assert!(b["error"]["message"].is_string(), "{ctx}");
        }
        Shape::Nova => {
            let name = match status {
                400 => "badRequest",
                413 => "overLimit",
                _ => "computeFault",
            };
            let obj = b.as_object().unwrap_or_else(|| panic!("{ctx}"));
            assert_eq!(obj.len(), 1, "{ctx}");
            assert_eq!(b[name]["code"], status, "{ctx}");
            assert!(b[name]["message"].is_string(), "{ctx}");
        }
        Shape::Glance => {
            let code = b["code"].as_str().unwrap_or_else(|| panic!("{ctx}"));
            assert!(code.starts_with(&format!("{status} ")), "{ctx}");
            assert!(b["title"].is_string(), "{ctx}");
            assert!(b["message"].is_string(), "{ctx}");
        }
        Shape::Placement => {
            let e = &b["errors"][0];
            assert_eq!(e["status"], status, "{ctx}");
            assert!(e["code"].is_string(), "{ctx}");
            assert!(e["detail"].is_string(), "{ctx}");
            assert_eq!(e["request_id"], rid, "{ctx}");
        }
    }
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: stratus\r\nConnection: close\r\n{extra}\r\n").into_bytes()
}

#[test]
fn errors_at_the_http_edge_come_in_each_services_shape() {
    let agent_limit = AGENT_BODY_LIMIT.to_string();
    let s = Server::start_with(&["--driver", "fake", "--max-agent-body-bytes", &agent_limit]);
    let token = s.client().token("admin", &s.admin_password, Some("admin"));
    for &(path, body_method, body_path, shape) in PREFIXES {
        // One header of 1 MiB.
        let big = format!("X-Big: {}\r\n", "a".repeat(1 << 20));
        check(
            "1 MiB header",
            path,
            shape,
            &send(&s, &get(path, &big)),
            431,
        );

        // 200 header fields.
        let many: String = (0..200).map(|i| format!("X-Field-{i}: v\r\n")).collect();
        check(
            "200 headers",
            path,
            shape,
            &send(&s, &get(path, &many)),
            431,
        );

        // A control character in the token.
        let ctl = format!("X-Auth-Token: {}\u{1}x\r\n", &token[..8]);
        check(
            "control character in X-Auth-Token",
            path,
            shape,
            &send(&s, &get(path, &ctl)),
            400,
        );

        // An id that is not UTF-8 once percent-decoded.
        let bad_id = format!("{path}/%C0%AF");
        let auth = format!("X-Auth-Token: {token}\r\n");
        check(
            "invalid UTF-8 id",
            &bad_id,
            shape,
            &send(&s, &get(&bad_id, &auth)),
            400,
        );

        // A 100 KB query string.
        let long = format!("{path}?q={}", "a".repeat(100_000));
        check(
            "100 KB URI",
            path,
            shape,
            &send(&s, &get(&long, &auth)),
            414,
        );

        // A body over the limit, declared up front.
        let limit = if path.starts_with("/edge/") {
            AGENT_BODY_LIMIT
        } else {
            BODY_LIMIT
        };
        let body = format!("{{\"x\": \"{}\"}}", "a".repeat(limit + 1000));
        let req = format!(
            "{body_method} {body_path} HTTP/1.1\r\nHost: stratus\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        check(
            "oversized body",
            body_path,
            shape,
            &send(&s, req.as_bytes()),
            413,
        );

        // The same body, chunked: found over the limit while it is read.
        if !path.starts_with("/no/") {
            let req = format!(
                "{body_method} {body_path} HTTP/1.1\r\nHost: stratus\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            );
            check(
                "oversized chunked body",
                body_path,
                shape,
                &send(&s, req.as_bytes()),
                413,
            );
        }
    }
    // The server is still there and answers normally.
    let r = s.client().get("/users", &token);
    assert_eq!(r.status, 200, "{}", r.body);
}
