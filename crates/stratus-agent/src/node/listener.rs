//! The agent's own small listener: the controller asks it for a
//! server's console output and diagnostics.

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
                serve_one(stream, |path| {
                    Some((sh.key.as_str(), &*sh.driver, path.to_string()))
                })
            });
        }
    });
    Ok(())
}

/// A minimal HTTP/1.1 answer for `GET /instances/{id}/console?length=N`
/// and `GET /instances/{id}/diagnostics`. `node` finds, from the request
/// path, the key the caller must show, the driver that answers and the
/// path left for it (several simulated nodes share one listener).
pub(super) fn serve_one<'a>(
    mut stream: std::net::TcpStream,
    node: impl Fn(&str) -> Option<(&'a str, &'a dyn Driver, String)>,
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
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("x-stratus-agent-key")
        {
            key = Some(v.trim().to_string());
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let found = node(path);
    let length = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("length="))
        .and_then(|v| v.parse::<usize>().ok());
    let mut content_type = "text/plain; charset=utf-8";
    let (status, body) = if let Some((want, driver, path)) = found {
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
