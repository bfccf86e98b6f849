//! The OCI runtime's command line (runc; crun takes the same arguments).
//!
//! Every call has a timeout, and a failed call's stderr is in the error.
//! Containers live under `--root`, inside the driver's state directory, so
//! they are found again after the agent restarts.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::DriverError;

/// How long a runtime call may take before it is killed.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A container's status as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Created,
    Running,
    Paused,
    Stopped,
    Unknown,
}

impl Status {
    fn parse(s: &str) -> Status {
        match s {
            "created" => Status::Created,
            "running" => Status::Running,
            "paused" => Status::Paused,
            "stopped" => Status::Stopped,
            _ => Status::Unknown,
        }
    }
}

pub(crate) struct Runc {
    pub(crate) bin: PathBuf,
    pub(crate) root: PathBuf,
}

/// Wait for `child` at most `timeout`; kill it after that.
pub(crate) fn wait_timeout(
    mut child: Child,
    timeout: Duration,
    what: &str,
) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), DriverError> {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    // Read both pipes on threads so a chatty child cannot fill one and hang.
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(DriverError::Runtime(format!(
                "{what} did not finish within {}s and was killed",
                timeout.as_secs_f32()
            )));
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(25));
    };
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    Ok((status, out, err))
}

impl Runc {
    pub(crate) fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        c
    }

    fn describe(&self, args: &[&str]) -> String {
        let name = self
            .bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "runtime".into());
        format!("{name} {}", args.join(" "))
    }

    /// Run the runtime with `args`; its stdout on success.
    pub(crate) fn call(&self, args: &[&str], timeout: Duration) -> Result<Vec<u8>, DriverError> {
        let what = self.describe(args);
        let child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| DriverError::Runtime(format!("cannot run {what}: {e}")))?;
        let (status, out, err) = wait_timeout(child, timeout, &what)?;
        if status.success() {
            Ok(out)
        } else {
            let msg = String::from_utf8_lossy(&err);
            let msg = msg.trim();
            if msg.contains("does not exist") || msg.contains("not exist") {
                // The one failure callers branch on.
                return Err(DriverError::NotFound(format!("{what}: {msg}")));
            }
            Err(DriverError::Runtime(format!(
                "{what} failed ({status}): {msg}"
            )))
        }
    }

    /// The container's status; `NotFound` when the runtime has no such id.
    pub(crate) fn state(&self, id: &str) -> Result<Status, DriverError> {
        let out = self.call(&["state", id], CALL_TIMEOUT)?;
        let v: Value = serde_json::from_slice(&out)
            .map_err(|e| DriverError::Runtime(format!("runtime state {id}: bad JSON: {e}")))?;
        Ok(Status::parse(v["status"].as_str().unwrap_or("")))
    }

    /// Every container under our root, with its status.
    pub(crate) fn list(&self) -> Result<Vec<(String, Status)>, DriverError> {
        let out = self.call(&["list", "--format", "json"], CALL_TIMEOUT)?;
        let v: Value = serde_json::from_slice(&out)
            .map_err(|e| DriverError::Runtime(format!("runtime list: bad JSON: {e}")))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| {
                        Some((
                            c["id"].as_str()?.to_string(),
                            Status::parse(c["status"].as_str().unwrap_or("")),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `run --detach`: the container's stdio is `/dev/null` in and the
    /// console log out; the runtime's own log goes to `log` and is quoted
    /// in the error when it fails.
    pub(crate) fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        console: &Path,
        log: &Path,
    ) -> Result<(), DriverError> {
        let _ = std::fs::remove_file(log);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(console)?;
        let err = out.try_clone()?;
        let what = format!("{} run {id}", self.bin.display());
        let child = self
            .command()
            .arg("--log")
            .arg(log)
            .args(["run", "--detach", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| DriverError::Runtime(format!("cannot run {what}: {e}")))?;
        let (status, _, _) = wait_timeout(child, CALL_TIMEOUT, &what)?;
        if status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(DriverError::Runtime(format!(
            "{what} failed ({status}): {}",
            tail.join(" | ")
        )))
    }
}
