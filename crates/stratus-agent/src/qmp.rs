//! QMP, QEMU's JSON machine protocol, over the UNIX socket each VM
//! listens on: one connection per call, capabilities negotiated, events
//! skipped. Nothing here parses human output.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::DriverError;

/// How long one QMP exchange may take before the VM counts as unresponsive.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

fn err(msg: impl Into<String>) -> DriverError {
    DriverError::Runtime(msg.into())
}

impl Qmp {
    /// Connects and leaves capabilities negotiation mode.
    pub fn connect(socket: &Path) -> Result<Qmp, DriverError> {
        let s = UnixStream::connect(socket)
            .map_err(|e| err(format!("QMP socket {}: {e}", socket.display())))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        let writer = s.try_clone()?;
        let mut q = Qmp {
            reader: BufReader::new(s),
            writer,
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(err(format!("not a QMP greeting: {greeting}")));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value, DriverError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| err(format!("QMP read: {e}")))?;
        if n == 0 {
            return Err(err("QMP connection closed"));
        }
        serde_json::from_str(&line).map_err(|e| err(format!("QMP sent bad JSON: {e}")))
    }

    /// Runs one command; its `return` value, or QEMU's error as a
    /// runtime error.
    pub fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, DriverError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| err(format!("QMP write: {e}")))?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(err(format!(
                    "QEMU refused {command}: {}",
                    e["desc"].as_str().unwrap_or("unknown error")
                )));
            }
        }
    }

    /// `query-status`'s `status` (`running`, `paused`, `shutdown`,
    /// `inmigrate`, `postmigrate`, ...).
    pub fn status(&mut self) -> Result<String, DriverError> {
        let r = self.execute("query-status", None)?;
        Ok(r["status"].as_str().unwrap_or("").to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    /// A QMP peer that greets, accepts capabilities, sends an event
    /// before its answer, and refuses one command.
    #[test]
    fn negotiates_skips_events_and_reports_errors() {
        let dir = std::env::temp_dir().join(format!("stratus-qmp-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            s.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("query-status"));
            s.write_all(b"{\"event\": \"RESUME\", \"data\": {}}\n{\"return\": {\"status\": \"paused\", \"running\": false}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("\"arguments\""), "{line}");
            s.write_all(
                b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such thing\"}}\n",
            )
            .unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        let mut q = Qmp::connect(&path).unwrap();
        assert_eq!(q.status().unwrap(), "paused");
        let e = q
            .execute("human-monitor-command", Some(json!({"command-line": "x"})))
            .unwrap_err();
        assert!(e.to_string().contains("no such thing"), "{e}");
        drop(q);
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
