//! QoS specs (`/qos-specs`): create, list, show, set and unset keys,
//! delete, and associations with volume types. Admins only, as in
//! Cinder. A type holds the id of its specs (`qos_specs_id`); the
//! front-end ones go to the node with each attached volume
//! ([`front_end_limits`]), where QEMU throttles the VM's disk.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use serde_json::{Value, json};
use stratus_store::{Query as StoreQuery, Tx};

use super::model::{QosSpecs, VolumeType};
use super::{VCtx, blocking, body, not_found, param};
use crate::{ApiError, AppState};

type P = Path<HashMap<String, String>>;
type Q = Query<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;

const RULE: &str = "volume_extension:qos_specs_manage";
const CONSUMERS: [&str; 3] = ["front-end", "back-end", "both"];

/// The keys a hypervisor's throttling takes (Nova's libvirt `iotune`).
const FRONT_END_KEYS: [&str; 6] = [
    "total_bytes_sec",
    "read_bytes_sec",
    "write_bytes_sec",
    "total_iops_sec",
    "read_iops_sec",
    "write_iops_sec",
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/qos-specs", get(list).post(create))
        .route("/qos-specs/{id}", get(show).put(set_keys).delete(delete))
        .route("/qos-specs/{id}/delete_keys", put(unset_keys))
        .route("/qos-specs/{id}/associations", get(associations))
        .route("/qos-specs/{id}/associate", get(associate))
        .route("/qos-specs/{id}/disassociate", get(disassociate))
        .route("/qos-specs/{id}/disassociate_all", get(disassociate_all))
}

fn render(q: &QosSpecs) -> Value {
    json!({"id": q.id, "name": q.name, "consumer": q.consumer, "specs": q.specs})
}

fn links(state: &AppState, ctx: &VCtx, id: &str) -> Value {
    let base = &state.config.public_url;
    let project = ctx.project().unwrap_or("");
    json!([
        {"rel": "self", "href": format!("{base}/volume/v3/{project}/qos-specs/{id}")},
        {"rel": "bookmark", "href": format!("{base}/volume/{project}/qos-specs/{id}")}
    ])
}

fn find(tx: &Tx, id: &str) -> Result<QosSpecs, ApiError> {
    tx.get::<QosSpecs>(id)?
        .ok_or_else(|| not_found("QoS spec", id))
}

/// The front-end limits (`front-end` or `both` consumers) of the specs
/// associated with volume type `type_id`: what the hypervisor applies to
/// a volume of that type. Empty when there are none.
pub fn front_end_limits(
    state: &AppState,
    type_id: &str,
) -> Result<BTreeMap<String, u64>, ApiError> {
    let Some(t) = state.store.get::<VolumeType>(type_id)? else {
        return Ok(BTreeMap::new());
    };
    let Some(q) = (match &t.qos_specs_id {
        Some(id) => state.store.get::<QosSpecs>(id)?,
        None => None,
    }) else {
        return Ok(BTreeMap::new());
    };
    if q.consumer == "back-end" {
        return Ok(BTreeMap::new());
    }
    Ok(q.specs
        .iter()
        .filter(|(k, _)| FRONT_END_KEYS.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .map(|n| (k.clone(), n))
        })
        .collect())
}

/// Spec values: strings (numbers are taken as their text), each key 1 to
/// 255 characters; the front-end keys must be whole numbers.
fn specs_of(m: &serde_json::Map<String, Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for (k, v) in m {
        if k.is_empty() || k.len() > 255 {
            return Err(ApiError::bad_request(
                "Invalid input received: a QoS key must be 1 to 255 characters.",
            ));
        }
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(ApiError::bad_request(format!(
                    "Invalid input received: the value of {k} must be a string, not {other}."
                )));
            }
        };
        if s.len() > 255 {
            return Err(ApiError::bad_request(format!(
                "Invalid input received: the value of {k} is longer than 255 characters."
            )));
        }
        if FRONT_END_KEYS.contains(&k.as_str()) && s.trim().parse::<u64>().is_err() {
            return Err(ApiError::bad_request(format!(
                "Invalid input received: {k} must be a whole number, not {s}."
            )));
        }
        out.insert(k.clone(), s);
    }
    Ok(out)
}

async fn list(State(state): State<AppState>, ctx: VCtx) -> J {
    ctx.admin(&format!("{RULE}:get_all"))?;
    blocking(move || {
        let all = state.store.list::<QosSpecs>(&StoreQuery::all())?;
        Ok(axum::Json(
            json!({"qos_specs": all.iter().map(render).collect::<Vec<_>>()}),
        ))
    })
    .await
}

async fn show(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    ctx.admin(&format!("{RULE}:get"))?;
    blocking(move || {
        let id = param(&p, "id");
        let q = state
            .store
            .get::<QosSpecs>(&id)?
            .ok_or_else(|| not_found("QoS spec", &id))?;
        Ok(axum::Json(
            json!({"qos_specs": render(&q), "links": links(&state, &ctx, &q.id)}),
        ))
    })
    .await
}

async fn create(State(state): State<AppState>, ctx: VCtx, raw: Bytes) -> J {
    ctx.admin(&format!("{RULE}:create"))?;
    let b = body(&raw)?;
    let mut m = b
        .get("qos_specs")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'qos_specs' in request body.")
        })?;
    let name = match m.remove("name") {
        Some(Value::String(n)) if !n.trim().is_empty() && n.len() <= 255 => n.trim().to_string(),
        _ => {
            return Err(ApiError::bad_request(
                "Invalid input received: Please specify a name for QoS specs (1 to 255 characters).",
            ));
        }
    };
    let consumer = match m.remove("consumer") {
        None | Some(Value::Null) => "back-end".to_string(),
        Some(Value::String(c)) if CONSUMERS.contains(&c.as_str()) => c,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input received: consumer {other} is not one of front-end, back-end, both."
            )));
        }
    };
    let q = QosSpecs {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        consumer,
        specs: specs_of(&m)?,
        created_us: crate::timeutil::now_us(),
    };
    blocking(move || {
        state.store.write(|tx| {
            if tx.unique_holder(&q)?.is_some() {
                return Err(ApiError::conflict(format!(
                    "QoS Specs {} already exists.",
                    q.name
                )));
            }
            tx.insert(&q)?;
            Ok(())
        })?;
        Ok(axum::Json(
            json!({"qos_specs": render(&q), "links": links(&state, &ctx, &q.id)}),
        ))
    })
    .await
}

/// `PUT /qos-specs/{id}`: sets keys (the consumer too); answers what
/// was set.
async fn set_keys(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    ctx.admin(&format!("{RULE}:update"))?;
    let b = body(&raw)?;
    let mut m = b
        .get("qos_specs")
        .and_then(Value::as_object)
        .cloned()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'qos_specs' in request body.")
        })?;
    let consumer = match m.remove("consumer") {
        None => None,
        Some(Value::String(c)) if CONSUMERS.contains(&c.as_str()) => Some(c),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input received: consumer {other} is not one of front-end, back-end, both."
            )));
        }
    };
    let set = specs_of(&m)?;
    blocking(move || {
        state.store.write(|tx| {
            let mut q = find(tx, &param(&p, "id"))?;
            if let Some(c) = &consumer {
                q.consumer = c.clone();
            }
            q.specs.extend(set.clone());
            tx.update(&q)?;
            Ok::<_, ApiError>(())
        })?;
        let mut out = json!(set);
        if let Some(c) = consumer {
            out["consumer"] = json!(c);
        }
        Ok(axum::Json(json!({"qos_specs": out})))
    })
    .await
}

async fn unset_keys(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    ctx.admin(&format!("{RULE}:delete_keys"))?;
    let b = body(&raw)?;
    let keys: Vec<String> = b
        .get("keys")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .filter(|k: &Vec<String>| !k.is_empty())
        .ok_or_else(|| ApiError::bad_request("Missing required element 'keys' in request body."))?;
    blocking(move || {
        state.store.write(|tx| {
            let mut q = find(tx, &param(&p, "id"))?;
            for k in &keys {
                if q.specs.remove(k).is_none() {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("QoS spec {} has no key {k}.", q.id),
                    ));
                }
            }
            tx.update(&q)?;
            Ok(())
        })
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

fn associated(tx: &Tx, id: &str) -> Result<Vec<VolumeType>, ApiError> {
    Ok(tx
        .list::<VolumeType>(&StoreQuery::all())?
        .into_iter()
        .filter(|t| t.qos_specs_id.as_deref() == Some(id))
        .collect())
}

/// `DELETE /qos-specs/{id}[?force=true]`: specs still associated with a
/// type are refused (400) unless forced, which disassociates them.
async fn delete(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
    Query(q): Q,
) -> Result<StatusCode, ApiError> {
    ctx.admin(&format!("{RULE}:delete"))?;
    let force = match q.get("force") {
        None => false,
        Some(f) => super::parse_bool(&json!(f))
            .ok_or_else(|| ApiError::bad_request(format!("Invalid value '{f}' for force.")))?,
    };
    blocking(move || {
        state.store.write(|tx| {
            let qs = find(tx, &param(&p, "id"))?;
            let types = associated(tx, &qs.id)?;
            if !types.is_empty() && !force {
                return Err(ApiError::bad_request(format!(
                    "QoS Specs {} is still associated with entities.",
                    qs.id
                )));
            }
            for mut t in types {
                t.qos_specs_id = None;
                tx.update(&t)?;
            }
            tx.delete::<QosSpecs>(&qs.id)?;
            Ok(())
        })
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

async fn associations(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    ctx.admin(&format!("{RULE}:get"))?;
    blocking(move || {
        let out = state.store.write(|tx| {
            let q = find(tx, &param(&p, "id"))?;
            Ok::<_, ApiError>(
                associated(tx, &q.id)?
                    .iter()
                    .map(|t| json!({"association_type": "volume_type", "name": t.name, "id": t.id}))
                    .collect::<Vec<_>>(),
            )
        })?;
        Ok(axum::Json(json!({"qos_associations": out})))
    })
    .await
}

fn type_param(q: &HashMap<String, String>) -> Result<String, ApiError> {
    q.get("vol_type_id")
        .filter(|t| !t.is_empty())
        .cloned()
        .ok_or_else(|| ApiError::bad_request("Volume Type id must not be None."))
}

async fn associate(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
    Query(q): Q,
) -> Result<StatusCode, ApiError> {
    ctx.admin(&format!("{RULE}:update"))?;
    let type_id = type_param(&q)?;
    blocking(move || {
        state.store.write(|tx| {
            let qs = find(tx, &param(&p, "id"))?;
            let mut t = tx
                .get::<VolumeType>(&type_id)?
                .ok_or_else(|| not_found("Volume type", &type_id))?;
            match &t.qos_specs_id {
                Some(cur) if *cur == qs.id => return Ok(()),
                Some(cur) => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid volume type: type {} is already associated with QoS specs {cur}.",
                        t.id
                    )));
                }
                None => {}
            }
            t.qos_specs_id = Some(qs.id);
            tx.update(&t)?;
            Ok(())
        })
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

async fn disassociate(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
    Query(q): Q,
) -> Result<StatusCode, ApiError> {
    ctx.admin(&format!("{RULE}:update"))?;
    let type_id = type_param(&q)?;
    blocking(move || {
        state.store.write(|tx| {
            let qs = find(tx, &param(&p, "id"))?;
            let mut t = tx
                .get::<VolumeType>(&type_id)?
                .ok_or_else(|| not_found("Volume type", &type_id))?;
            if t.qos_specs_id.as_deref() == Some(qs.id.as_str()) {
                t.qos_specs_id = None;
                tx.update(&t)?;
            }
            Ok(())
        })
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

async fn disassociate_all(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    ctx.admin(&format!("{RULE}:update"))?;
    blocking(move || {
        state.store.write(|tx| {
            let qs = find(tx, &param(&p, "id"))?;
            for mut t in associated(tx, &qs.id)? {
                t.qos_specs_id = None;
                tx.update(&t)?;
            }
            Ok(())
        })
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}
