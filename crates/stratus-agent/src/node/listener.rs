//! The agent's own small listener: the controller asks it for a
//! server's console output and diagnostics, joins a remote console to a
//! VM's serial port, and gets it ready to receive a live migration.

use anyhow::Context;

use super::*;

pub(super) fn start_listener(sh: &Arc<Shared>) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(sh.cfg.listen)
        .with_context(|| format!("agent listener on {}", sh.cfg.listen))?;
    let addr = listener.local_addr()?;
    let url = sh
        .cfg
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    *sh.agent_url.lock().unwrap_or_else(|e| e.into_inner()) = Some(url.clone());
    tracing::info!(%url, host = %sh.cfg.host, driver = sh.driver.name(), "node agent listening");
    let sh = sh.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sh = sh.clone();
            std::thread::spawn(move || {
                let incoming = |id: &str, body: &str| incoming(&sh, id, body);
                serve_one(
                    stream,
                    |path| Some((sh.key.as_str(), &*sh.driver, path.to_string())),
                    Some(&incoming),
                )
            });
        }
    });
    Ok(())
}

/// Pre-live-migration: builds the VM of the assignment in `body` as a
/// spawn would and starts it waiting for the stream; the port.
fn incoming(sh: &Shared, id: &str, body: &str) -> Result<u16, String> {
    let s: stratus_wire::Assignment =
        serde_json::from_str(body).map_err(|e| format!("bad assignment: {e}"))?;
    if s.id != id {
        return Err("the assignment is for another server".into());
    }
    let mut spec = tasks::instance_spec(
        sh,
        &s,
        &s.image_id,
        &s.container_format,
        &s.disk_format,
        s.image_checksum.as_deref(),
    )
    .map_err(|e| format!("{e:#}"))?;
    // Its ports are taps here too (the controller lists them for this
    // node while the migration lasts).
    let fresh = sh.net.mark_vm(id);
    (spec.netns, spec.dns, spec.vm_nics) =
        tasks::wire_server(sh, id, fresh).map_err(|e| format!("{e:#}"))?;
    let port = sh
        .driver
        .prepare_incoming(&spec)
        .map_err(|e| e.to_string())?;
    tracing::info!(server = id, port, "waiting for a live migration");
    Ok(port)
}

/// What answers `POST /instances/{id}/incoming` (the server's assignment
/// in, the port out).
pub(super) type Incoming<'a> = &'a dyn Fn(&str, &str) -> Result<u16, String>;

/// A minimal HTTP/1.1 answer for `GET /instances/{id}/console?length=N`,
/// `GET /instances/{id}/diagnostics` and `POST /instances/{id}/incoming`.
/// `node` finds, from the request path, the key the caller must show, the
/// driver that answers and the path left for it (several simulated nodes
/// share one listener).
pub(super) fn serve_one<'a>(
    mut stream: std::net::TcpStream,
    node: impl Fn(&str) -> Option<(&'a str, &'a dyn Driver, String)>,
    incoming: Option<Incoming<'_>>,
) {
    use std::io::{BufRead, BufReader, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut key = None;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("x-stratus-agent-key") {
                key = Some(v.trim().to_string());
            } else if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    // A request body (an assignment) is small.
    let mut body = vec![0u8; length.min(4 << 20)];
    if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
        return;
    }
    let post = line.starts_with("POST ");
    let target = line.split_whitespace().nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let found = node(path);
    if let Some((want, driver, path)) = found.as_ref()
        && !post
        && let Some(id) = path
            .strip_prefix("/instances/")
            .and_then(|r| r.strip_suffix("/serial"))
    {
        let refused = if key.as_deref() != Some(*want) {
            Some(("403 Forbidden", "wrong or missing agent key".to_string()))
        } else if !crate::valid_id(id) {
            Some(("404 Not Found", "unknown path".to_string()))
        } else {
            match driver.serial_console(id).and_then(|p| {
                std::os::unix::net::UnixStream::connect(&p).map_err(crate::DriverError::from)
            }) {
                Ok(console) => {
                    let early = reader.buffer().to_vec();
                    join_serial(stream, console, &early);
                    return;
                }
                Err(e) => Some(("409 Conflict", e.to_string())),
            }
        };
        if let Some((status, body)) = refused {
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        return;
    }
    let length = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("length="))
        .and_then(|v| v.parse::<usize>().ok());
    let mut content_type = "text/plain; charset=utf-8";
    let (status, body) = if let Some((want, _, path)) = found.as_ref()
        && post
    {
        let id = path
            .strip_prefix("/instances/")
            .and_then(|r| r.strip_suffix("/incoming"));
        match (key.as_deref() == Some(*want), id, incoming) {
            (false, _, _) => ("403 Forbidden", "wrong or missing agent key".to_string()),
            (true, Some(id), Some(f)) if crate::valid_id(id) => {
                match f(id, &String::from_utf8_lossy(&body)) {
                    Ok(port) => {
                        content_type = "application/json";
                        ("200 OK", serde_json::json!({ "port": port }).to_string())
                    }
                    Err(e) => ("409 Conflict", e),
                }
            }
            _ => ("404 Not Found", "unknown path".to_string()),
        }
    } else if let Some((want, driver, path)) = found {
        answer(
            key.as_deref() == Some(want),
            driver,
            &path,
            length,
            &mut content_type,
        )
    } else {
        ("404 Not Found", "unknown path".to_string())
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// `GET /instances/{id}/serial`: answers 101 and from then on carries
/// bytes both ways between the caller and the VM's serial port (`early`:
/// what the caller sent after its request), until either side closes.
fn join_serial(
    mut stream: std::net::TcpStream,
    console: std::os::unix::net::UnixStream,
    early: &[u8],
) {
    use std::io::Write;
    let _ = stream.set_read_timeout(None);
    if stream
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: stratus-serial\r\nconnection: upgrade\r\n\r\n")
        .is_err()
    {
        return;
    }
    let (Ok(mut from_caller), Ok(mut to_console)) = (stream.try_clone(), console.try_clone())
    else {
        return;
    };
    if !early.is_empty() && to_console.write_all(early).is_err() {
        return;
    }
    let inbound = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_caller, &mut to_console);
        let _ = to_console.shutdown(std::net::Shutdown::Both);
    });
    let (mut from_console, mut to_caller) = (console, stream);
    let _ = std::io::copy(&mut from_console, &mut to_caller);
    let _ = to_caller.shutdown(std::net::Shutdown::Both);
    let _ = inbound.join();
}

fn answer(
    key_ok: bool,
    driver: &dyn Driver,
    path: &str,
    length: Option<usize>,
    content_type: &mut &'static str,
) -> (&'static str, String) {
    if !key_ok {
        ("403 Forbidden", "wrong or missing agent key".to_string())
    } else if let Some(id) = path
        .strip_prefix("/instances/")
        .and_then(|r| r.strip_suffix("/diagnostics"))
    {
        match driver.diagnostics(id) {
            Ok(items) => {
                *content_type = "application/json";
                let m: serde_json::Map<String, Value> = items
                    .into_iter()
                    .map(|(k, v)| (k, Value::from(v)))
                    .collect();
                ("200 OK", Value::Object(m).to_string())
            }
            Err(e) => ("404 Not Found", e.to_string()),
        }
    } else if let Some(id) = path
        .strip_prefix("/instances/")
        .and_then(|r| r.strip_suffix("/console"))
    {
        match driver.console_output(id, length) {
            Ok(text) => ("200 OK", text),
            Err(e) => ("404 Not Found", e.to_string()),
        }
    } else {
        ("404 Not Found", "unknown path".to_string())
    }
}
