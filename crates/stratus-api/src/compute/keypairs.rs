//! Key pairs: SSH public keys of a user, imported or generated.
//!
//! A key pair belongs to a user, not a project. Admins may act on another
//! user's key pairs with `user_id` (2.10). Generated keys are RSA 2048 made
//! by `ssh-keygen`; the private key is returned once and never stored.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use md5::Digest;
use serde_json::{Value, json};
use stratus_store::Query as StoreQuery;

use super::model::Keypair;
use super::quotas::{self, Resource};
use super::{Mv, body, next_link, page, paging};
use crate::identity::policy::Ctx;
use crate::timeutil::{iso_naive, now_us};
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/os-keypairs", get(list).post(create))
        .route("/os-keypairs/{name}", get(show).delete(delete))
}

fn nova_time(us: i64) -> String {
    let s = iso_naive(us);
    if s.contains('.') {
        s
    } else {
        format!("{s}.000000")
    }
}

/// The user acted on: the caller, or (admins, 2.10+) `user_id`.
fn target_user(ctx: &Ctx, mv: Mv, asked: Option<&str>) -> Result<String, ApiError> {
    match asked {
        Some(u) if mv.at_least(10) && u != ctx.user_id() => {
            if ctx.is_admin() {
                Ok(u.to_string())
            } else {
                Err(super::policy_denied("os_compute_api:os-keypairs"))
            }
        }
        _ => Ok(ctx.user_id().to_string()),
    }
}

fn not_found(user: &str, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Keypair {name} not found for user {user}"),
    )
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let user = target_user(&ctx, mv, q.get("user_id").map(String::as_str))?;
    let mut keys = state.store.list::<Keypair>(&StoreQuery::owner(&user))?;
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    let (limit, marker) = if mv.at_least(35) {
        paging(&q)?
    } else {
        (None, None)
    };
    let keys = page(keys, limit, marker.as_deref(), |k| &k.name).map_err(|_| {
        ApiError::bad_request(format!(
            "Invalid input for query parameters marker. Value: {}.",
            marker.clone().unwrap_or_default()
        ))
    })?;
    let items: Vec<Value> = keys
        .iter()
        .map(|k| {
            let mut v =
                json!({"name": k.name, "public_key": k.public_key, "fingerprint": k.fingerprint});
            if mv.at_least(2) {
                v["type"] = json!(k.key_type);
            }
            json!({"keypair": v})
        })
        .collect();
    let mut out = json!({"keypairs": items});
    if mv.at_least(35)
        && let Some(l) = next_link(
            &state,
            "os-keypairs",
            &q,
            limit,
            keys.last().map(|k| k.name.as_str()),
            keys.len(),
        )
    {
        out["keypairs_links"] = l;
    }
    Ok(axum::Json(out))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let user = target_user(&ctx, mv, q.get("user_id").map(String::as_str))?;
    let k = state
        .store
        .get::<Keypair>(&Keypair::key(&user, &name))?
        .ok_or_else(|| not_found(&user, &name))?;
    let mut v = json!({
        "name": k.name, "public_key": k.public_key, "fingerprint": k.fingerprint,
        "user_id": k.user_id, "created_at": nova_time(k.created_us), "updated_at": null,
        "deleted": false, "deleted_at": null, "id": k.seq,
    });
    if mv.at_least(2) {
        v["type"] = json!(k.key_type);
    }
    Ok(axum::Json(json!({"keypair": v})))
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let user = target_user(&ctx, mv, q.get("user_id").map(String::as_str))?;
    if !state
        .store
        .write(|tx| tx.delete::<Keypair>(&Keypair::key(&user, &name)))?
    {
        return Err(not_found(&user, &name));
    }
    Ok(if mv.at_least(2) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::ACCEPTED
    })
}

fn invalid(why: &str) -> ApiError {
    ApiError::bad_request(format!("Keypair data is invalid: {why}"))
}

/// Nova's key pair name rule before 2.92.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with(' ')
        && !s.ends_with(' ')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ' ' | '_' | '-'))
}

/// The MD5 fingerprint of an OpenSSH public key line, as `ssh-keygen -l -E
/// md5` prints it (without the prefix).
pub(crate) fn ssh_fingerprint(line: &str) -> Option<String> {
    let mut parts = line.split_whitespace();
    let kind = parts.next()?;
    let known = [
        "ssh-rsa",
        "ssh-dss",
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    if !known.contains(&kind) {
        return None;
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(parts.next()?)
        .ok()?;
    // The blob starts with the key type as an SSH string.
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    if blob.get(4..4 + len)? != kind.as_bytes() || blob.len() < 4 + len + 4 {
        return None;
    }
    let digest = md5::Md5::digest(&blob);
    Some(
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// Makes an RSA 2048 key pair with `ssh-keygen`: (private PEM, public line).
fn generate() -> Result<(String, String), ApiError> {
    let dir = std::env::temp_dir().join(format!("stratus-keygen-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| ApiError::internal(format!("cannot generate a key pair: {e}")))?;
    let key = dir.join("key");
    let out = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "rsa",
            "-b",
            "2048",
            "-m",
            "PEM",
            "-N",
            "",
            "-C",
            "Generated-by-Nova",
            "-f",
        ])
        .arg(&key)
        .output();
    let result = match out {
        Ok(o) if o.status.success() => {
            let private = std::fs::read_to_string(&key);
            let public = std::fs::read_to_string(dir.join("key.pub"));
            match (private, public) {
                (Ok(p), Ok(q)) => Ok((p, q.trim().to_string())),
                _ => Err(ApiError::internal("ssh-keygen wrote no key")),
            }
        }
        Ok(o) => Err(ApiError::internal(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) => Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("Generating key pairs needs ssh-keygen (apt-get install openssh-client): {e}"),
        )),
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Makes a self-signed x509 certificate and its RSA 2048 key with
/// `openssl`, as Nova does for `type: x509`: (private PEM, certificate PEM).
fn generate_x509(subject: &str) -> Result<(String, String), ApiError> {
    let dir = std::env::temp_dir().join(format!("stratus-x509-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| ApiError::internal(format!("cannot generate a key pair: {e}")))?;
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
        ])
        .arg("-subj")
        .arg(format!("/CN={subject}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    let result = match out {
        Ok(o) if o.status.success() => {
            match (
                std::fs::read_to_string(&key),
                std::fs::read_to_string(&cert),
            ) {
                (Ok(p), Ok(c)) => Ok((p, c)),
                _ => Err(ApiError::internal("openssl wrote no certificate")),
            }
        }
        Ok(o) => Err(ApiError::internal(format!(
            "openssl failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) => Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("x509 key pairs need openssl (apt-get install openssl): {e}"),
        )),
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The SHA-1 fingerprint of a PEM certificate (`ab:cd:...`, as Nova shows
/// it); None when `openssl` does not read it as a certificate.
fn x509_fingerprint(pem: &str) -> Option<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(pem.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().rsplit('=').next()?.to_ascii_lowercase();
    (hex.len() == 59).then_some(hex)
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let b = body(&raw)?;
    let o = b.get("keypair").and_then(Value::as_object).ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute keypair. 'keypair' is a required property",
        )
    })?;
    let name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute name. 'name' is a required property",
        )
    })?;
    if !valid_name(name) {
        return Err(invalid("Keypair name contains unsafe characters"));
    }
    let key_type = match o.get("type") {
        Some(_) if !mv.at_least(2) => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute keypair. Additional properties are not allowed ('type' was unexpected)",
            ));
        }
        None => "ssh",
        Some(Value::String(t)) if t == "ssh" => "ssh",
        Some(Value::String(t)) if t == "x509" => "x509",
        Some(t) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute type. Value: {t}. {t} is not one of ['ssh', 'x509']"
            )));
        }
    };
    let user = target_user(&ctx, mv, o.get("user_id").and_then(Value::as_str))?;
    let x509 = key_type == "x509";
    let (private, public) = match o.get("public_key") {
        None if x509 => {
            // CN is at most 64 characters: 16 of each id, as Nova does.
            let short = |s: &str| s.chars().take(16).collect::<String>();
            let subject = format!("{}-{}", short(ctx.project_id().unwrap_or("")), short(&user));
            let (p, q) = tokio::task::spawn_blocking(move || generate_x509(&subject))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))??;
            (Some(p), q)
        }
        None => {
            let (p, q) = tokio::task::spawn_blocking(generate)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))??;
            (Some(p), q)
        }
        Some(Value::String(k)) if x509 => (None, k.clone()),
        Some(Value::String(k)) => (None, k.trim().to_string()),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute public_key. Value: {v}. It is not a string"
            )));
        }
    };
    let fingerprint = if x509 {
        let pem = public.clone();
        tokio::task::spawn_blocking(move || x509_fingerprint(&pem))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    } else {
        ssh_fingerprint(&public)
    }
    .ok_or_else(|| invalid("failed to generate fingerprint"))?;
    let mut kp = Keypair {
        id: Keypair::key(&user, name),
        seq: 0,
        name: name.to_string(),
        user_id: user.clone(),
        public_key: public,
        fingerprint,
        key_type: key_type.into(),
        created_us: now_us(),
    };
    let project = ctx.project_id().unwrap_or_default().to_string();
    state.store.write(|tx| {
        if tx.exists::<Keypair>(&kp.id)? {
            return Err(ApiError::conflict(format!(
                "Key pair '{}' already exists.",
                kp.name
            )));
        }
        let used = tx.list::<Keypair>(&StoreQuery::owner(&user))?.len() as i64;
        let limit = quotas::limit_tx(tx, &project, Some(&user), Resource::KeyPairs)?;
        if limit >= 0 && used + 1 > limit {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Quota exceeded, too many key pairs.",
            ));
        }
        kp.seq = tx.insert(&kp)?;
        tx.update(&kp)?;
        Ok(())
    })?;
    let mut v = json!({
        "name": kp.name, "public_key": kp.public_key, "fingerprint": kp.fingerprint,
        "user_id": kp.user_id,
    });
    if let Some(p) = private {
        v["private_key"] = json!(p);
    }
    if mv.at_least(2) {
        v["type"] = json!(kp.key_type);
    }
    let status = if mv.at_least(2) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(json!({"keypair": v}))).into_response())
}
