//! Remote serial consoles of VMs: a URL with a one-time token from Nova's
//! remote-consoles API (and the real `openstack console url show
//! --serial`), opened as a websocket the way Tempest's client does, with
//! bytes flowing both ways through the node agent to QEMU's serial port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::compute::Cloud;
use super::compute_real::{console_until, image_id, require_qemu, require_runtime, test_images};

/// A websocket opened with a hand-made upgrade (as Tempest's own client
/// does): the status line of the answer, and the socket.
fn ws_open(url: &str) -> (String, TcpStream) {
    let rest = url.strip_prefix("ws://").expect("a ws:// URL");
    let (hostport, target) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(hostport).expect("connect to the console proxy");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /{target} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("HTTP/1.1 101") {
        let accept = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("sec-websocket-accept:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default();
        // RFC 6455's own example key and answer.
        assert_eq!(
            accept.to_ascii_lowercase(),
            "hsmrc0smlyukagmm5oppg2hagwk=",
            "{head}"
        );
    }
    (head.lines().next().unwrap_or("").to_string(), s)
}

/// Sends `data` as one masked binary frame.
fn ws_send(s: &mut TcpStream, data: &[u8]) {
    assert!(data.len() < 126);
    let mask = [7u8, 2, 1, 9];
    let mut f = vec![0x82, 0x80 | data.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f).unwrap();
}

/// The next frame: its opcode and payload (None when the socket ends).
fn ws_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    assert_eq!(h[1] & 0x80, 0, "a server never masks its frames");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).ok()?;
            u16::from_be_bytes(l) as usize
        }
        127 => panic!("a console frame over 64 KiB"),
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some((h[0] & 0x0f, payload))
}

fn remote_console(c: &Cloud, token: &str, id: &str, body: Value) -> super::common::Resp {
    c.req(
        "POST",
        &format!("/servers/{id}/remote-consoles"),
        token,
        Some(body),
    )
}

#[test]
fn compute_real_vm_serial_console_over_a_websocket_with_a_one_time_token() {
    require_runtime();
    require_qemu();
    let dir = test_images();
    let c = Cloud::start(&["--import-images", dir.to_str().unwrap()]);
    c.wait_nodes(1);
    let img = image_id(&c, "busybox-vm");
    let r = c.boot(&c.admin, "vm", &img, "1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    console_until(&c, &c.admin, &id, "tick 1");

    let serial = json!({"remote_console": {"protocol": "serial", "type": "serial"}});
    let r = remote_console(&c, &c.admin, &id, serial.clone());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["remote_console"]["type"], "serial", "{}", r.body);
    let url = r.body["remote_console"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        url.starts_with("ws://") && url.contains("/websockify?token="),
        "{url}"
    );
    let token = url.rsplit("token=").next().unwrap().to_string();

    // An admin can look the unused token up (2.31+).
    let t = c.nova.raw(
        "GET",
        &format!("/os-console-auth-tokens/{token}"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.31")],
        None,
    );
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["console"]["instance_uuid"], id.as_str());
    let (_, member) = c.project("peek");
    assert_eq!(
        c.req(
            "GET",
            &format!("/os-console-auth-tokens/{token}"),
            &member,
            None
        )
        .status,
        403
    );

    // Typed bytes reach the guest's tty, which echoes them; its own
    // output (the ticks) comes out too.
    let (status, mut ws) = ws_open(&url);
    assert!(status.contains("101"), "{status}");
    let typed = b"stratus-serial-hello\n";
    ws_send(&mut ws, typed);
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(seen.contains("stratus-serial-hello") && seen.contains("tick ")) {
        assert!(Instant::now() < deadline, "no echo and ticks: {seen:?}");
        let (op, payload) = ws_frame(&mut ws).expect("the console stays open");
        assert!(payload.len() <= 125, "small frames only");
        if op == 2 {
            seen.push_str(&String::from_utf8_lossy(&payload));
        }
    }
    drop(ws);

    // The token opened one console: the same URL again is refused.
    let (status, _) = ws_open(&url);
    assert!(status.contains("401"), "{status}");
    let (status, _) = ws_open(&url.replace(&token, "made-up"));
    assert!(status.contains("401"), "{status}");

    // A new URL opens it again, and the legacy action gives one too; the
    // token may also come in a cookie, as Tempest's client sends it.
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &c.admin,
        Some(json!({"os-getSerialConsole": {"type": "serial"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let legacy = r.body["console"]["url"].as_str().unwrap().to_string();
    let hostport = legacy
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let legacy_token = legacy.rsplit("token=").next().unwrap();
    let mut s = TcpStream::connect(&hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /websockify HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nCookie: token={legacy_token}\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 101", "cookie token");
    drop(s);

    // Bad requests: Nova's answers.
    for (body, want) in [
        (
            json!({"remote_console": {"protocol": "vnc", "type": "novnc"}}),
            400,
        ),
        (
            json!({"remote_console": {"protocol": "serial", "type": "novnc"}}),
            400,
        ),
        (
            json!({"remote_console": {"protocol": "telnet", "type": "serial"}}),
            400,
        ),
        (json!({"remote_console": {"protocol": "serial"}}), 400),
        (json!({"console": {}}), 400),
    ] {
        let r = remote_console(&c, &c.admin, &id, body.clone());
        assert_eq!(r.status, want, "{body}: {}", r.body);
    }
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &c.admin,
        Some(json!({"os-getVNCConsole": {"type": "novnc"}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let old = c.nova.raw(
        "POST",
        &format!("/servers/{id}/remote-consoles"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.5")],
        Some(serial.to_string()),
    );
    assert_eq!(old.status, 404, "remote-consoles starts at 2.6");
    // Another project sees no such server.
    let (_, other) = c.project("stranger");
    assert_eq!(remote_console(&c, &other, &id, serial.clone()).status, 404);

    // The real CLI prints a URL that opens.
    if let Some(os) = super::cli::Os::new(&c.server) {
        let out = os.ok(&[
            "console", "url", "show", "--serial", &id, "-f", "value", "-c", "url",
        ]);
        let (status, _) = ws_open(out.trim());
        assert!(status.contains("101"), "{out}: {status}");
    }

    // A stopped VM has no serial console running: 409.
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &c.admin,
        Some(json!({"os-stop": null})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&c.admin, &id, "SHUTOFF");
    assert_eq!(
        remote_console(&c, &c.admin, &id, serial.clone()).status,
        409
    );

    // A container has no serial port: 400, with the reason.
    let busybox = image_id(&c, "busybox");
    let r = c.boot(&c.admin, "ct", &busybox, "1", json!({}));
    let ct = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &ct, "ACTIVE");
    let r = remote_console(&c, &c.admin, &ct, serial);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.to_string().contains("container"), "{}", r.body);
    for s in [&id, &ct] {
        assert_eq!(
            c.req("DELETE", &format!("/servers/{s}"), &c.admin, None)
                .status,
            204
        );
        c.wait_gone(&c.admin, s);
    }
}
