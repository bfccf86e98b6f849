//! Volume type encryption (`/types/{id}/encryption`), Cinder's
//! `volume_type_encryption` extension: admins say how the volumes of a
//! type are to be encrypted (`provider`, `control_location`, `cipher`,
//! `key_size`). The encryption lives in the type's record
//! ([`TypeEncryption`]), so it is deleted with the type and the "type in
//! use" check reads the volumes in the same transaction as the write.
//!
//! Encrypting volumes needs a key manager, which this cloud does not
//! have yet: volumes of an encrypted type are refused at create and
//! retype ([`refuse_encrypted`]), and volume views say
//! `encrypted: false`. See `docs/block-storage.md`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Map, Value, json};
use stratus_store::{Query as StoreQuery, Tx};

use super::model::{TypeEncryption, Volume, VolumeType};
use super::{VCtx, blocking, body, param, ts};
use crate::{ApiError, AppState};

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;

const CREATE_RULE: &str = "volume_extension:volume_type_encryption:create";
const GET_RULE: &str = "volume_extension:volume_type_encryption:get";
const UPDATE_RULE: &str = "volume_extension:volume_type_encryption:update";
const DELETE_RULE: &str = "volume_extension:volume_type_encryption:delete";

/// Cinder's `DB_MAX_INT`, the largest `key_size`.
const MAX_KEY_SIZE: i64 = 0x7FFF_FFFF;

pub fn routes() -> Router<AppState> {
    // The last segment is Cinder's `{encryption_id}` for PUT and DELETE
    // (never checked: cinderclient sends `provider` there) and a spec
    // key for GET.
    Router::new()
        .route("/types/{id}/encryption", get(show).post(create))
        .route(
            "/types/{id}/encryption/{key}",
            get(show_key).put(update).delete(delete),
        )
}

/// A 400 unless `t` is plain: volumes of an encrypted type need a key
/// manager, which this cloud does not offer yet.
pub(crate) fn refuse_encrypted(t: &VolumeType) -> Result<(), ApiError> {
    match t.encryption {
        None => Ok(()),
        Some(_) => Err(ApiError::bad_request(format!(
            "Invalid volume type: volume type {} is encrypted, and encrypted volumes are not offered by this cloud (there is no key manager).",
            t.id
        ))),
    }
}

/// The fields of a request's `encryption` object, checked as Cinder's
/// schema does; `None` for a field the request did not name, `Some(None)`
/// for one it set to null.
#[derive(Debug, Default, PartialEq)]
struct Fields {
    provider: Option<String>,
    control_location: Option<String>,
    cipher: Option<Option<String>>,
    key_size: Option<Option<i64>>,
}

fn invalid(field: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("Invalid input for field/attribute {field}. {why}"))
}

/// Reads `{"encryption": {...}}`; `create` makes `provider` and
/// `control_location` required. Other keys inside `encryption` are
/// ignored (Cinder's schema lets them through; nothing reads them).
fn parse(raw: &[u8], create: bool) -> Result<Fields, ApiError> {
    let b = body(raw)?;
    let top = b.as_object().ok_or_else(|| {
        ApiError::bad_request("Invalid input for field/attribute body: not an object.")
    })?;
    if let Some(extra) = top.keys().find(|k| *k != "encryption") {
        return Err(ApiError::bad_request(format!(
            "Additional properties are not allowed ('{extra}' was unexpected)"
        )));
    }
    let e = match top.get("encryption") {
        Some(Value::Object(e)) => e,
        Some(_) => return Err(invalid("encryption", "It is not an object.")),
        None => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute encryption. 'encryption' is a required property",
            ));
        }
    };
    let string = |key: &str, nullable: bool| -> Result<Option<Option<String>>, ApiError> {
        match e.get(key) {
            None => Ok(None),
            Some(Value::Null) if nullable => Ok(Some(None)),
            Some(Value::String(s)) if s.chars().count() <= 255 => Ok(Some(Some(s.clone()))),
            Some(Value::String(_)) => Err(invalid(key, "It is longer than 255 characters.")),
            Some(v) => Err(invalid(key, &format!("Value: {v}. It is not a string."))),
        }
    };
    let provider = string("provider", false)?.flatten();
    let cipher = string("cipher", true)?;
    let control_location = match e.get("control_location") {
        None => None,
        Some(Value::String(s)) if s == "front-end" || s == "back-end" => Some(s.clone()),
        Some(v) => {
            return Err(invalid(
                "control_location",
                &format!("Value: {v}. {v} is not one of ['front-end', 'back-end']"),
            ));
        }
    };
    let key_size = match e.get("key_size") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => {
            let n = match v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            }
            .ok_or_else(|| {
                invalid(
                    "key_size",
                    &format!("Value: {v}. key_size must be an integer."),
                )
            })?;
            if !(0..=MAX_KEY_SIZE).contains(&n) {
                return Err(invalid(
                    "key_size",
                    &format!("Value: {n}. It is not between 0 and {MAX_KEY_SIZE}."),
                ));
            }
            Some(Some(n))
        }
    };
    if create {
        for (key, given) in [
            ("provider", provider.is_some()),
            ("control_location", control_location.is_some()),
        ] {
            if !given {
                return Err(invalid(
                    "encryption",
                    &format!("'{key}' is a required property"),
                ));
            }
        }
    }
    Ok(Fields {
        provider,
        control_location,
        cipher,
        key_size,
    })
}

/// The fields a request named, as Cinder answers a create or update
/// (its body back, `key_size` as a number).
fn echo(f: &Fields) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(p) = &f.provider {
        out.insert("provider".into(), json!(p));
    }
    if let Some(c) = &f.control_location {
        out.insert("control_location".into(), json!(c));
    }
    if let Some(c) = &f.cipher {
        out.insert("cipher".into(), json!(c));
    }
    if let Some(k) = &f.key_size {
        out.insert("key_size".into(), json!(k));
    }
    out
}

/// Cinder's encryption record as `GET .../encryption` shows it.
fn render(type_id: &str, e: &TypeEncryption) -> Map<String, Value> {
    let v = json!({
        "volume_type_id": type_id,
        "encryption_id": e.id,
        "provider": e.provider,
        "control_location": e.control_location,
        "cipher": e.cipher,
        "key_size": e.key_size,
        "deleted": false,
        "created_at": ts(e.created_us),
        "updated_at": e.updated_us.map(ts),
        "deleted_at": null,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn in_use(tx: &Tx, type_id: &str, verb: &str) -> Result<(), ApiError> {
    if tx
        .list::<Volume>(&StoreQuery::all())?
        .iter()
        .any(|v| v.volume_type_id == type_id)
    {
        return Err(ApiError::bad_request(format!(
            "Cannot {verb} encryption specs. Volume type in use."
        )));
    }
    Ok(())
}

fn missing(type_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Volume type encryption for type {type_id} does not exist."),
    )
}

async fn show(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    ctx.admin(GET_RULE)?;
    blocking(move || {
        let t = state
            .store
            .write(|tx| super::types::find(tx, &ctx, &param(&p, "id")))?;
        // Cinder answers `{}` for a type without encryption.
        let out = t
            .encryption
            .as_ref()
            .map(|e| render(&t.id, e))
            .unwrap_or_default();
        Ok(axum::Json(Value::Object(out)))
    })
    .await
}

async fn show_key(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    ctx.admin(GET_RULE)?;
    blocking(move || {
        let t = state
            .store
            .write(|tx| super::types::find(tx, &ctx, &param(&p, "id")))?;
        let key = param(&p, "key");
        let v = t
            .encryption
            .as_ref()
            .and_then(|e| render(&t.id, e).remove(&key))
            .ok_or_else(|| missing(&t.id))?;
        Ok(axum::Json(json!({ key: v })))
    })
    .await
}

async fn create(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    ctx.admin(CREATE_RULE)?;
    let f = parse(&raw, true)?;
    blocking(move || {
        let id = param(&p, "id");
        let (t, e) = state.store.write(|tx| {
            let mut t = super::types::find(tx, &ctx, &id)?;
            in_use(tx, &t.id, "create")?;
            if t.encryption.is_some() {
                return Err(ApiError::bad_request(format!(
                    "Volume type encryption for type {} already exists.",
                    t.id
                )));
            }
            let e = TypeEncryption {
                id: uuid::Uuid::new_v4().to_string(),
                provider: f.provider.clone().unwrap_or_default(),
                control_location: f.control_location.clone().unwrap_or_default(),
                cipher: f.cipher.clone().flatten(),
                key_size: f.key_size.flatten(),
                created_us: crate::timeutil::now_us(),
                updated_us: None,
            };
            t.encryption = Some(e.clone());
            tx.update(&t)?;
            Ok::<_, ApiError>((t, e))
        })?;
        let mut out = echo(&f);
        out.insert("volume_type_id".into(), json!(t.id));
        out.insert("encryption_id".into(), json!(e.id));
        Ok(axum::Json(json!({ "encryption": out })))
    })
    .await
}

async fn update(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    ctx.admin(UPDATE_RULE)?;
    let f = parse(&raw, false)?;
    blocking(move || {
        state.store.write(|tx| {
            let mut t = super::types::find(tx, &ctx, &param(&p, "id"))?;
            in_use(tx, &t.id, "update")?;
            let e = t.encryption.as_mut().ok_or_else(|| missing(&t.id))?;
            if let Some(v) = &f.provider {
                e.provider = v.clone();
            }
            if let Some(v) = &f.control_location {
                e.control_location = v.clone();
            }
            if let Some(v) = &f.cipher {
                e.cipher = v.clone();
            }
            if let Some(v) = f.key_size {
                e.key_size = v;
            }
            e.updated_us = Some(crate::timeutil::now_us());
            tx.update(&t)?;
            Ok::<_, ApiError>(())
        })?;
        Ok(axum::Json(json!({ "encryption": echo(&f) })))
    })
    .await
}

async fn delete(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    ctx.admin(DELETE_RULE)?;
    blocking(move || {
        let id = param(&p, "id");
        state.store.write(|tx| {
            // As Cinder: the volumes are checked first, and a type that
            // is not there has no encryption (404).
            in_use(tx, &id, "delete")?;
            let found = tx.get::<VolumeType>(&id)?;
            let Some(mut t) = found.filter(|t| t.encryption.is_some()) else {
                return Err(missing(&id));
            };
            t.encryption = None;
            tx.update(&t)?;
            Ok::<_, ApiError>(())
        })
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_needs_provider_and_control_location() {
        let ok = parse(
            br#"{"encryption": {"provider": "luks", "control_location": "front-end", "cipher": "aes-xts-plain64", "key_size": "256"}}"#,
            true,
        )
        .unwrap();
        assert_eq!(ok.key_size, Some(Some(256)));
        assert_eq!(echo(&ok)["key_size"], json!(256));
        for bad in [
            r#"{"encryption": {"control_location": "front-end"}}"#,
            r#"{"encryption": {"provider": "luks"}}"#,
            r#"{"encryption": {"provider": "luks", "control_location": "middle"}}"#,
            r#"{"encryption": {"provider": "luks", "control_location": "front-end", "key_size": "big"}}"#,
            r#"{"encryption": {"provider": "luks", "control_location": "front-end", "key_size": -1}}"#,
            r#"{"encryption": {"provider": 5, "control_location": "front-end"}}"#,
            r#"{"encryption": {"provider": "luks", "control_location": "front-end", "cipher": 1}}"#,
            r#"{"encryption": {"provider": "luks", "control_location": "front-end"}, "x": 1}"#,
            r#"{"provider": "luks", "control_location": "front-end"}"#,
        ] {
            assert!(parse(bad.as_bytes(), true).is_err(), "{bad}");
        }
        // An update names what it changes; a null cipher clears it.
        let u = parse(br#"{"encryption": {"cipher": null}}"#, false).unwrap();
        assert_eq!(
            u,
            Fields {
                cipher: Some(None),
                ..Fields::default()
            }
        );
    }
}
