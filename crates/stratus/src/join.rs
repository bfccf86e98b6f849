//! A node's own credential: obtained once with a join token
//! (`POST /edge/v1/join`), kept in the agent's state dir
//! (`node-credential.json`, mode 0600) and reused on every later start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use stratus_wire::{JoinReply, JoinRequest, NodeCredential};

/// The file the credential is kept in.
pub fn credential_path(state_dir: &Path) -> PathBuf {
    state_dir.join("node-credential.json")
}

/// The credential this state dir joined with, if it has one.
pub fn load(state_dir: &Path) -> anyhow::Result<Option<NodeCredential>> {
    let p = credential_path(state_dir);
    match std::fs::read_to_string(&p) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("reading {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Redeems `token` with the controller for `host`'s credential and keeps
/// it in `state_dir`.
pub fn join(
    controller: &str,
    host: &str,
    token: &str,
    state_dir: &Path,
) -> anyhow::Result<NodeCredential> {
    let http: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let body = serde_json::to_string(&JoinRequest {
        join_token: token.trim().to_string(),
        host: host.to_string(),
    })?;
    // A controller that is not up yet is waited for, as registering does.
    let mut resp = loop {
        match http
            .post(&format!("{controller}/edge/v1/join"))
            .header("content-type", "application/json")
            .send(body.as_str())
        {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, %controller, "cannot reach the controller to join; retrying");
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    if status != 201 {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let msg = v
            .as_object()
            .and_then(|o| o.values().find_map(|e| e["message"].as_str()))
            .unwrap_or(&text)
            .to_string();
        anyhow::bail!("the controller refused the join token ({status}): {msg}");
    }
    let cred = serde_json::from_str::<JoinReply>(&text)
        .context("the controller's join answer")?
        .node;
    crate::datadir::private_dir(state_dir)?;
    crate::datadir::write_private(
        &credential_path(state_dir),
        &serde_json::to_string_pretty(&cred)?,
    )?;
    tracing::info!(host, path = %credential_path(state_dir).display(), "joined the controller; the node's credential is kept for later starts");
    Ok(cred)
}
