//! `/v3/credentials` and the EC2 view of them
//! (`/v3/users/{id}/credentials/OS-EC2`). Owners manage their own;
//! admins all. An EC2 credential's id is the SHA-256 of its access key, as
//! in Keystone, so it can be looked up by access key.
//!
//! Blobs are encrypted at rest as Keystone encrypts them: a Fernet token
//! of the credential key repository (`credential-keys/` in the data dir,
//! apart from the token keys), with the hash of the key that sealed it.
//! Any key in the repository opens a blob, so rows sealed before a
//! rotation stay readable; [`migrate`] (Keystone's `credential_migrate`)
//! re-seals them with the primary key and seals rows an older version
//! stored in clear.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use sha2::Digest;
use stratus_store::{Query as Q, Store};

use super::fernet;
use super::model::*;
use super::policy::Ctx;
use super::{Obj, filter, list_body, new_id, self_link};
use crate::json::Json;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/credentials", get(list).post(create))
        .route("/credentials/{id}", get(show).patch(update).delete(remove))
        .route(
            "/users/{user_id}/credentials/OS-EC2",
            get(ec2_list).post(ec2_create),
        )
        .route(
            "/users/{user_id}/credentials/OS-EC2/{access}",
            get(ec2_show).delete(ec2_delete),
        )
}

/// The credential key repository's directory in the data dir.
pub const KEY_DIR: &str = "credential-keys";

/// The credential keys (Keystone's credential Fernet key repository).
pub struct CredentialKeys {
    repo: fernet::Repository,
}

impl CredentialKeys {
    /// Opens `DATA_DIR/credential-keys`, creating its keys on first use.
    pub fn open(data_dir: &std::path::Path) -> Result<Self, fernet::KeyError> {
        Ok(CredentialKeys {
            repo: fernet::Repository::open(&data_dir.join(KEY_DIR))?,
        })
    }

    /// Seals `blob` with the primary key: (encrypted_blob, key_hash).
    /// Picks up a rotation made on disk first, so new rows always use
    /// the newest primary.
    pub fn seal(&self, blob: &str) -> (String, String) {
        let ring = self.repo.refresh(false).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot reload the credential keys; keeping the old ones");
            self.repo.ring()
        });
        let now_s = (crate::timeutil::now_us() / 1_000_000).max(0) as u64;
        (
            ring.encrypt(blob.as_bytes(), now_s),
            ring.primary_hash().to_string(),
        )
    }

    /// The blob of `c` in clear.
    pub fn blob(&self, c: &Credential) -> Result<String, ApiError> {
        if let Some(b) = &c.blob {
            return Ok(b.clone());
        }
        let try_ring = |ring: &fernet::KeyRing| {
            ring.decrypt_blob(&c.encrypted_blob)
                .and_then(|b| String::from_utf8(b).ok())
        };
        if let Some(b) = try_ring(&self.repo.ring()) {
            return Ok(b);
        }
        // Sealed with a key rotated in on disk after ours were loaded.
        let ring = self
            .repo
            .refresh(true)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        try_ring(&ring).ok_or_else(|| {
            ApiError::internal(format!(
                "credential {} cannot be decrypted with any key in {}",
                c.id,
                self.repo.dir().display()
            ))
        })
    }

    /// Sets the blob of `c`, sealed.
    pub fn set_blob(&self, c: &mut Credential, blob: &str) {
        let (sealed, hash) = self.seal(blob);
        c.encrypted_blob = sealed;
        c.key_hash = hash;
        c.blob = None;
    }

    /// The hash of the primary key as it is on disk now.
    pub fn primary_hash(&self) -> Result<String, fernet::KeyError> {
        Ok(self.repo.refresh(false)?.primary_hash().to_string())
    }
}

/// What [`migrate`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Rows stored in clear that are now sealed.
    pub plaintext: usize,
    /// Rows sealed with an older key that are now sealed with the primary.
    pub resealed: usize,
    /// Rows no key in the repository opens (left as they are).
    pub unreadable: Vec<String>,
}

/// Set (to `1`) in the store's meta table by the [`migrate`] that sealed
/// rows found in clear: the clear text may still be in the store file
/// (change log, freed pages) until the binary scrubs it and clears this.
pub const SCRUB_PENDING: &str = "identity.credential_scrub_pending";

/// Keystone's `credential_migrate`: seals every credential with the
/// primary key, including rows an older version stored in clear. One
/// transaction; rows already sealed with the primary key are not touched.
pub fn migrate(store: &Store, keys: &CredentialKeys) -> Result<Migrated, ApiError> {
    let primary = keys
        .primary_hash()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    store.write(|tx| {
        let mut out = Migrated::default();
        for mut c in tx.list::<Credential>(&Q::all())? {
            if c.blob.is_none() && c.key_hash == primary {
                continue;
            }
            let plain = match keys.blob(&c) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(credential = %c.id, error = %e, "cannot migrate a credential");
                    out.unreadable.push(c.id.clone());
                    continue;
                }
            };
            if c.blob.is_some() {
                out.plaintext += 1;
            } else {
                out.resealed += 1;
            }
            keys.set_blob(&mut c, &plain);
            tx.update(&c)?;
        }
        if out.plaintext > 0 {
            tx.meta_set(SCRUB_PENDING, "1")?;
        }
        Ok(out)
    })
}

/// Keystone's `credential_rotate`, made safe to run at any time: rows are
/// first sealed with the current primary (so none uses the key this
/// rotation retires), the keys rotate, and the rows are sealed again with
/// the new primary. Returns the new primary's index and the second pass.
pub fn rotate(store: &Store, keys: &CredentialKeys) -> Result<(u64, Migrated), ApiError> {
    migrate(store, keys)?;
    let primary = fernet::rotate(keys.repo.dir()).map_err(|e| ApiError::internal(e.to_string()))?;
    keys.repo
        .refresh(true)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((primary, migrate(store, keys)?))
}

fn keys(state: &AppState) -> &CredentialKeys {
    &state.identity.credential_keys
}

fn view(state: &AppState, c: &Credential) -> Result<Value, ApiError> {
    Ok(json!({
        "id": c.id,
        "user_id": c.user_id,
        "project_id": c.project_id,
        "type": c.kind,
        "blob": keys(state).blob(c)?,
        "links": self_link(state, &format!("credentials/{}", c.id)),
    }))
}

fn ec2_id(access: &str) -> String {
    sha2::Sha256::digest(access.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn owner_or_admin(ctx: &Ctx, user_id: &str, action: &str) -> Result<(), ApiError> {
    ctx.allow(ctx.user_id() == user_id || ctx.system_reader(), action)
}

fn writer(ctx: &Ctx, user_id: &str, action: &str) -> Result<(), ApiError> {
    ctx.allow(ctx.user_id() == user_id && !ctx.restricted(), action)
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let owner = if ctx.system_reader() {
        q.get("user_id").cloned()
    } else {
        Some(ctx.user_id().to_string())
    };
    let creds = state.store.list::<Credential>(&Q {
        owner: owner.as_deref(),
        ..Q::default()
    })?;
    let items = creds
        .iter()
        .map(|c| view(&state, c))
        .collect::<Result<_, _>>()?;
    Ok(list_body(
        &state,
        "credentials",
        "credentials",
        filter(items, &q),
    ))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let o = Obj::from_body(body, "credential")?;
    let user_id = o.req_str("user_id")?;
    let kind = o.req_str("type")?;
    let blob = o.req_str("blob")?;
    let project_id = o.str("project_id")?;
    ctx.allow(ctx.user_id() == user_id, "identity:create_credential")?;
    state.store.fetch::<User>(&user_id)?;
    let id = if kind == "ec2" {
        let parsed: Value = serde_json::from_str(&blob).map_err(|_| {
            ApiError::bad_request("Invalid blob in credential: an ec2 blob must be JSON.")
        })?;
        let access = parsed["access"].as_str().ok_or_else(|| {
            ApiError::bad_request("Invalid blob in credential: an ec2 blob needs 'access'.")
        })?;
        if project_id.is_none() {
            return Err(ApiError::bad_request(
                "An ec2 credential needs a project_id.",
            ));
        }
        ec2_id(access)
    } else {
        new_id()
    };
    if let Some(p) = &project_id {
        state.store.fetch::<Project>(p)?;
    }
    let mut c = Credential {
        id,
        user_id,
        project_id,
        kind,
        encrypted_blob: String::new(),
        key_hash: String::new(),
        blob: None,
    };
    keys(&state).set_blob(&mut c, &blob);
    state.identity_write(|tx| {
        tx.insert(&c)
            .map_err(super::conflict_as("credential", &c.id))
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"credential": view(&state, &c)?})),
    ))
}

fn readable(state: &AppState, ctx: &Ctx, id: &str) -> Result<Credential, ApiError> {
    let c = state.store.fetch::<Credential>(id)?;
    owner_or_admin(ctx, &c.user_id, "identity:get_credential")?;
    Ok(c)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let c = readable(&state, &ctx, &id)?;
    Ok(axum::Json(json!({"credential": view(&state, &c)?})))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    let o = Obj::from_body(body, "credential")?;
    let c = state.identity_write(|tx| {
        let mut c = tx.fetch::<Credential>(&id)?;
        writer(&ctx, &c.user_id, "identity:update_credential")?;
        if let Some(u) = o.str("user_id")? {
            ctx.allow(u == ctx.user_id(), "identity:update_credential")?;
            c.user_id = u;
        }
        if o.has("project_id") {
            c.project_id = o.str("project_id")?;
        }
        if let Some(t) = o.str("type")? {
            c.kind = t;
        }
        if let Some(b) = o.str("blob")? {
            keys(&state).set_blob(&mut c, &b);
        } else if c.blob.is_some() {
            let plain = keys(&state).blob(&c)?;
            keys(&state).set_blob(&mut c, &plain);
        }
        tx.update(&c)?;
        Ok(c)
    })?;
    Ok(axum::Json(json!({"credential": view(&state, &c)?})))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.identity_write(|tx| {
        let c = tx.fetch::<Credential>(&id)?;
        writer(&ctx, &c.user_id, "identity:delete_credential")?;
        tx.delete::<Credential>(&id)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- EC2 -----------------------------------------------------------------------

fn ec2_view(state: &AppState, c: &Credential) -> Result<Value, ApiError> {
    let blob: Value = serde_json::from_str(&keys(state).blob(c)?).unwrap_or(Value::Null);
    Ok(json!({
        "user_id": c.user_id,
        "tenant_id": c.project_id,
        "access": blob["access"],
        "secret": blob["secret"],
        "trust_id": blob.get("trust_id").cloned().unwrap_or(Value::Null),
        "links": {"self": state.identity_url(&format!("users/{}/credentials/OS-EC2/{}", c.user_id, blob["access"].as_str().unwrap_or("")))},
    }))
}

async fn ec2_list(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(user_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    owner_or_admin(&ctx, &user_id, "identity:ec2_list_credentials")?;
    state.store.fetch::<User>(&user_id)?;
    let items = state
        .store
        .list::<Credential>(&Q::owner(&user_id))?
        .iter()
        .filter(|c| c.kind == "ec2")
        .map(|c| ec2_view(&state, c))
        .collect::<Result<_, _>>()?;
    Ok(list_body(
        &state,
        "credentials",
        &format!("users/{user_id}/credentials/OS-EC2"),
        items,
    ))
}

async fn ec2_create(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(user_id): Path<String>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    writer(&ctx, &user_id, "identity:ec2_create_credential")?;
    let project_id = body
        .get("tenant_id")
        .or_else(|| body.get("project_id"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request("Invalid input for field 'tenant_id': it is required.")
        })?
        .to_string();
    state.store.fetch::<User>(&user_id)?;
    state.store.fetch::<Project>(&project_id)?;
    if super::service::effective_role_ids(
        &state.store,
        &user_id,
        &super::service::Target::Project(project_id.clone()),
    )?
    .is_empty()
    {
        return Err(ApiError::forbidden(
            "identity:ec2_create_credential (the user has no role on that project)",
        ));
    }
    let access = new_id();
    let secret = new_id();
    let blob = json!({"access": access, "secret": secret, "trust_id": null}).to_string();
    let mut c = Credential {
        id: ec2_id(&access),
        user_id,
        project_id: Some(project_id),
        kind: "ec2".into(),
        encrypted_blob: String::new(),
        key_hash: String::new(),
        blob: None,
    };
    keys(&state).set_blob(&mut c, &blob);
    state.identity_write(|tx| Ok(tx.insert(&c)?))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"credential": ec2_view(&state, &c)?})),
    ))
}

fn ec2_find(state: &AppState, user_id: &str, access: &str) -> Result<Credential, ApiError> {
    match state.store.get::<Credential>(&ec2_id(access))? {
        Some(c) if c.user_id == user_id && c.kind == "ec2" => Ok(c),
        _ => Err(ApiError::not_found("credential", access)),
    }
}

async fn ec2_show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((user_id, access)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    owner_or_admin(&ctx, &user_id, "identity:ec2_get_credential")?;
    let c = ec2_find(&state, &user_id, &access)?;
    Ok(axum::Json(json!({"credential": ec2_view(&state, &c)?})))
}

async fn ec2_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((user_id, access)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    writer(&ctx, &user_id, "identity:ec2_delete_credential")?;
    let c = ec2_find(&state, &user_id, &access)?;
    state.identity_write(|tx| Ok(tx.delete::<Credential>(&c.id)?))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(id: &str) -> Credential {
        Credential {
            id: id.into(),
            user_id: "u".into(),
            project_id: None,
            kind: "x".into(),
            encrypted_blob: String::new(),
            key_hash: String::new(),
            blob: None,
        }
    }

    #[test]
    fn migrate_seals_clear_rows_and_rotate_reseals_every_row() {
        let dir = std::env::temp_dir().join(format!("stratus-credkeys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open_in_memory().unwrap();
        let keys = CredentialKeys::open(&dir).unwrap();
        let mut legacy = cred("legacy");
        legacy.blob = Some("in clear".into());
        let mut sealed = cred("sealed");
        keys.set_blob(&mut sealed, "sealed secret");
        assert!(!sealed.encrypted_blob.contains("sealed secret"));
        store
            .write(|tx| {
                tx.insert(&legacy)?;
                tx.insert(&sealed)
            })
            .unwrap();
        let m = migrate(&store, &keys).unwrap();
        assert_eq!((m.plaintext, m.resealed), (1, 0));
        assert_eq!(store.meta_get(SCRUB_PENDING).unwrap().as_deref(), Some("1"));
        let row = store.fetch::<Credential>("legacy").unwrap();
        assert!(row.blob.is_none());
        assert_eq!(keys.blob(&row).unwrap(), "in clear");
        assert_eq!(migrate(&store, &keys).unwrap(), Migrated::default());
        // Rotating more often than the repository keeps keys: every row
        // stays readable because each rotation re-seals.
        for _ in 0..4 {
            let (_, m) = rotate(&store, &keys).unwrap();
            assert_eq!(m.resealed, 2);
        }
        let row = store.fetch::<Credential>("sealed").unwrap();
        assert_eq!(row.key_hash, keys.primary_hash().unwrap());
        assert_eq!(keys.blob(&row).unwrap(), "sealed secret");
        // A row sealed with a key no longer in the repository is reported.
        let mut lost = cred("lost");
        lost.encrypted_blob = row.encrypted_blob.clone();
        lost.key_hash = "gone".into();
        std::fs::remove_dir_all(&dir).unwrap();
        let keys = CredentialKeys::open(&dir).unwrap();
        store.write(|tx| tx.insert(&lost)).unwrap();
        let m = migrate(&store, &keys).unwrap();
        assert!(m.unreadable.contains(&"lost".to_string()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
