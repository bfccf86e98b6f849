//! A server's volumes, Nova side: `os-volume_attachments` (list, show,
//! attach, detach) and the node agent's word on them
//! (`POST /edge/v1/nodes/{host}/servers/{id}/volumes`). The records and
//! their states are `crate::volume::attach`'s; this module checks who
//! asks, the server's state and where the server and the volume are.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use stratus_store::Tx;
use stratus_wire::volume::AttachReport;

use super::common::{check_locked, fetch, fetch_tx, require_member, require_reader};
use super::model::{Server, ServerVolume};
use super::states::vm;
use super::{Mv, body};
use crate::identity::policy::Ctx;
use crate::image::model::Image;
use crate::volume::attach::{self, AttachRequest};
use crate::volume::model::Volume;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/servers/{id}/os-volume_attachments",
            get(list).post(create),
        )
        .route(
            "/servers/{id}/os-volume_attachments/{volume_id}",
            get(show).put(update).delete(delete),
        )
}

/// The agent's side (outside the compute API's path space).
pub fn agent_routes() -> Router<AppState> {
    Router::new().route(
        "/edge/v1/nodes/{host}/servers/{id}/volumes",
        post(agent_report),
    )
}

/// Nova's `volumeAttachment` view at microversion `mv`.
fn render(s: &Server, sv: &ServerVolume, mv: Mv) -> Value {
    let mut v = json!({
        "device": sv.device,
        "serverId": s.id,
        "volumeId": sv.volume_id,
        "id": sv.volume_id,
    });
    if mv.at_least(70) {
        v["tag"] = json!(sv.tag);
    }
    if mv.at_least(79) {
        v["delete_on_termination"] = json!(sv.delete_on_termination);
    }
    v
}

/// `os-extended-volumes:volumes_attached` of the server view.
pub fn volumes_attached(s: &Server, mv: Mv) -> Value {
    Value::Array(
        s.volumes
            .iter()
            .map(|sv| {
                let mut v = json!({"id": sv.volume_id});
                if mv.at_least(3) {
                    v["delete_on_termination"] = json!(sv.delete_on_termination);
                }
                v
            })
            .collect(),
    )
}

fn not_attached(volume_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("volume_id not found: {volume_id}"),
    )
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    require_reader(&ctx, "os_compute_api:os-volumes-attachments:index")?;
    let s = fetch(&state, &ctx, &id)?;
    let out: Vec<Value> = s.volumes.iter().map(|sv| render(&s, sv, mv)).collect();
    Ok(axum::Json(json!({"volumeAttachments": out})))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, volume_id)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    require_reader(&ctx, "os_compute_api:os-volumes-attachments:show")?;
    let s = fetch(&state, &ctx, &id)?;
    let sv = s
        .volumes
        .iter()
        .find(|v| v.volume_id == volume_id)
        .ok_or_else(|| not_attached(&volume_id))?;
    Ok(axum::Json(json!({"volumeAttachment": render(&s, sv, mv)})))
}

/// `PUT /servers/{id}/os-volume_attachments/{volume_id}`: from 2.85 a
/// member changes the attachment's `delete_on_termination` (the other
/// fields must stay as they are); naming another volume asks for a swap
/// (admins only, see [`swap_in`]).
async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, volume_id)): Path<(String, String)>,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    let a = attachment_body(&raw)?;
    let new_id = match a.get("volumeId") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute volumeId. 'volumeId' is a required property",
            ));
        }
    };
    let swap = new_id != volume_id;
    if swap || !mv.at_least(85) {
        if !ctx.is_admin() {
            return Err(super::policy_denied(
                "os_compute_api:os-volumes-attachments:swap",
            ));
        }
    } else {
        require_member(&ctx, "os_compute_api:os-volumes-attachments:update")?;
    }
    let allowed: &[&str] = if mv.at_least(85) {
        &[
            "volumeId",
            "device",
            "tag",
            "id",
            "serverId",
            "delete_on_termination",
        ]
    } else {
        &["volumeId"]
    };
    if let Some(k) = a.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute volumeAttachment. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let st = state.clone();
    let host = tokio::task::spawn_blocking(move || {
        st.store.write(|tx| {
            let mut s = fetch_tx(tx, &ctx, &id)?;
            check_locked(&ctx, &s)?;
            if !s.volumes.iter().any(|v| v.volume_id == volume_id) {
                return Err(not_attached(&volume_id));
            }
            if swap {
                swap_in(tx, &mut s, &volume_id, &new_id)?;
                return Ok(s.host);
            }
            let Some(sv) = s.volumes.iter_mut().find(|v| v.volume_id == volume_id) else {
                return Err(not_attached(&volume_id));
            };
            if !mv.at_least(85) {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: volume {volume_id} is already the one attached (swapping a volume for itself)."
                )));
            }
            let same = |k: &str, have: Value| a.get(k).is_none_or(|v| *v == have);
            if !same("device", json!(sv.device))
                || !same("tag", json!(sv.tag))
                || !same("id", json!(sv.volume_id))
                || !same("serverId", json!(id))
            {
                return Err(ApiError::bad_request(
                    "The device, tag, id and serverId of a volume attachment cannot be changed.",
                ));
            }
            match a.get("delete_on_termination") {
                None => {}
                Some(Value::Bool(d)) => sv.delete_on_termination = *d,
                Some(v) => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input for field/attribute delete_on_termination. Value: {v}. It is not of type 'boolean'"
                    )));
                }
            }
            s.updated_us = crate::timeutil::now_us();
            tx.update(&s)?;
            Ok::<_, ApiError>(s.host)
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    state.compute.notify(host.as_deref());
    Ok(StatusCode::ACCEPTED)
}

/// Nova's swap volume, checked and started: the server's node copies
/// the old volume onto `new_id` while the guest runs, moves the guest's
/// disk over to it (QEMU's block mirror) and reports; `attach::settle`
/// then lets the old volume go (or, when the node failed, keeps it).
fn swap_in(tx: &Tx, s: &mut Server, old_id: &str, new_id: &str) -> Result<(), ApiError> {
    // Nova: a volume named in the body that does not exist is a 400 (the
    // one in the path, a 404).
    let mut new = tx
        .get::<Volume>(new_id)?
        .filter(|v| v.project_id == s.project_id)
        .ok_or_else(|| ApiError::bad_request(format!("Volume {new_id} could not be found.")))?;
    // Nova swaps the volumes of a running or paused server only.
    if s.task_state.is_some() || !matches!(s.vm_state.as_str(), vm::ACTIVE | vm::PAUSED) {
        return Err(super::states::wrong_state("swap_volume", s));
    }
    if !runs_vm(tx, s)? {
        return Err(ApiError::conflict(format!(
            "Cannot swap volume {old_id} for {new_id} on instance {}: it is a container, which has its volumes as mounted file systems that cannot change under it; detach the volume and attach the other one.",
            s.id
        )));
    }
    if s.boot_volume().is_some_and(|v| v.volume_id == old_id) {
        return Err(ApiError::conflict(format!(
            "Cannot swap volume {old_id} on instance {}: it is the server's root volume.",
            s.id
        )));
    }
    // One change of the server's volumes at a time: the node reports
    // them together.
    if let Some(sv) = s.volumes.iter().find(|v| v.state != "attached") {
        return Err(ApiError::conflict(format!(
            "Cannot swap volume {old_id} on instance {}: volume {} is {}; wait until that is done.",
            s.id, sv.volume_id, sv.state
        )));
    }
    if let Some(h) = s.host.as_deref()
        && !node_can(tx, h, stratus_wire::volume::FEATURE_SWAP_VOLUME)?
    {
        return Err(ApiError::conflict(format!(
            "Cannot swap volume {old_id} on instance {}: the agent of node {h} is too old to swap volumes; upgrade it.",
            s.id
        )));
    }
    let Some(old) = tx.get::<Volume>(old_id)? else {
        return Err(not_attached(old_id));
    };
    // Neither volume may be busy with a task of the storage node (an
    // extend, a rewrite): the copy would race it.
    for v in [&old, &new] {
        if v.task.is_some() || (v.id == old.id && v.status != "in-use") {
            return Err(ApiError::bad_request(format!(
                "Invalid volume: volume {} is {}; swap it when that is done.",
                v.id, v.status
            )));
        }
    }
    if old.attachments.len() > 1 {
        return Err(ApiError::bad_request(
            "Swapping multi-attach volumes with more than one read/write attachment is not supported.",
        ));
    }
    if new.size < old.size {
        return Err(ApiError::bad_request(
            "Invalid volume: New volume must be the same size or larger.",
        ));
    }
    same_zone(s, &new)?;
    remote_ok(tx, s, &new)?;
    // The copy needs a disk of the old one's size, grown once it is the
    // guest's; a disk reached over NBD cannot change size.
    if new.size != old.size
        && let (Some(vh), Some(sh)) = (new.host.as_deref(), s.host.as_deref())
        && vh != sh
    {
        return Err(ApiError::conflict(format!(
            "Cannot swap volume {old_id} for {new_id} on instance {}: the new volume is on storage node {vh}, reached over NBD, and a disk reached over NBD cannot grow from {} GiB to {} GiB; swap to a volume of the same size, or to one on {sh}.",
            s.id, old.size, new.size
        )));
    }
    attach::begin_swap(tx, s, old_id, &mut new)
}

/// Nova attaches and detaches volumes while the server is active,
/// paused, stopped or suspended, and no task runs.
fn may_change(s: &Server, action: &str) -> Result<(), ApiError> {
    super::states::no_swap(s, action)?;
    let ok = s.task_state.is_none()
        && matches!(
            s.vm_state.as_str(),
            vm::ACTIVE
                | vm::PAUSED
                | vm::STOPPED
                | vm::SUSPENDED
                | vm::SHELVED
                | vm::SHELVED_OFFLOADED
        );
    if ok {
        Ok(())
    } else {
        Err(super::states::wrong_state(action, s))
    }
}

/// The request's `volumeAttachment` object.
fn attachment_body(raw: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match body(raw)?.get_mut("volumeAttachment").map(Value::take) {
        Some(Value::Object(a)) => Ok(a),
        _ => Err(ApiError::bad_request(
            "Invalid input for field/attribute volumeAttachment. 'volumeAttachment' is a required property",
        )),
    }
}

/// The attach request, validated.
fn parse_attach(raw: &[u8], mv: Mv) -> Result<(String, AttachRequest), ApiError> {
    let a = attachment_body(raw)?;
    let a = &a;
    let volume_id = match a.get("volumeId") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute volumeId. Value: {v}. It is not a valid volume id"
            )));
        }
        None => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute volumeAttachment. 'volumeId' is a required property",
            ));
        }
    };
    let mut allowed = vec!["volumeId", "device"];
    if mv.at_least(49) {
        allowed.push("tag");
    }
    if mv.at_least(79) {
        allowed.push("delete_on_termination");
    }
    for k in a.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute volumeAttachment. Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
    }
    let device = match a.get("device") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute device. Value: {v}. It is not of type 'string'"
            )));
        }
    };
    let tag = match a.get("tag") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if !t.is_empty() && t.len() <= 60 && !t.contains(['/', ',']) => {
            Some(t.clone())
        }
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute tag. Value: {v}. It is not a valid tag"
            )));
        }
    };
    let delete_on_termination = match a.get("delete_on_termination") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute delete_on_termination. Value: {v}. It is not of type 'boolean'"
            )));
        }
    };
    Ok((
        volume_id,
        AttachRequest {
            device,
            tag,
            delete_on_termination,
        },
    ))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    require_member(&ctx, "os_compute_api:os-volumes-attachments:create")?;
    let (volume_id, req) = parse_attach(&raw, mv)?;
    let st = state.clone();
    let (s, sv) = tokio::task::spawn_blocking(move || {
        let state = st;
        fetch(&state, &ctx, &id)?;
        state.store.write(|tx| {
            let mut s = fetch_tx(tx, &ctx, &id)?;
            let is_vm = runs_vm(tx, &s)?;
            check_locked(&ctx, &s)?;
            may_change(&s, "attach_volume")?;
            let mut v = tx
                .get::<Volume>(&volume_id)?
                .filter(|v| v.project_id == s.project_id)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("Volume {volume_id} could not be found."),
                    )
                })?;
            same_zone(&s, &v)?;
            if !v.attachments.is_empty() && attach::multiattach(tx, &v)? {
                shared_with_container(tx, &s, &v, is_vm)?;
            }
            remote_ok(tx, &s, &v)?;
            let mut sv = attach::attach(tx, &mut s, &mut v, req)?;
            if s.host.is_none() {
                // Shelved and offloaded: no workload to plug it into; it
                // is attached now and plugged in where the server is
                // unshelved.
                settle_here(tx, &s)?;
                sv.state = "attached".into();
            }
            Ok::<_, ApiError>((s, sv))
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    state.compute.notify(s.host.as_deref());
    Ok(axum::Json(json!({"volumeAttachment": render(&s, &sv, mv)})))
}

/// Whether node `host`'s agent says it can do `feature`.
pub(crate) fn node_can(tx: &Tx, host: &str, feature: &str) -> Result<bool, ApiError> {
    Ok(tx
        .get::<super::model::ComputeNode>(host)?
        .is_some_and(|n| n.features.iter().any(|f| f == feature)))
}

/// Whether volume `v`, in use, can grow where it is (Cinder 3.42's
/// online extend): its one attachment is a data volume of a server on
/// the volume's own storage node, whose QEMU grows the file and tells the
/// guest (a stopped VM's file grows as a file), or whose container's
/// volume daemon grows the file and its file system. A 400 saying why
/// not otherwise.
pub(crate) fn may_grow_in_use(tx: &Tx, v: &Volume) -> Result<(), ApiError> {
    let refuse = |why: String| {
        Err(ApiError::bad_request(format!(
            "Invalid volume: volume {} cannot be extended while attached: {why}; detach it first.",
            v.id
        )))
    };
    if v.attachments.len() != 1 {
        return refuse("it is attached to several servers".into());
    }
    let a = &v.attachments[0];
    if a.status != "attached" {
        return refuse(format!("its attachment is {}", a.status));
    }
    let Some(s) = a
        .server_id
        .as_deref()
        .map(|id| tx.get::<Server>(id))
        .transpose()?
        .flatten()
    else {
        return refuse(
            "it is reserved through the attachments API, not attached to a server".into(),
        );
    };
    let Some(sv) = s.volumes.iter().find(|sv| sv.attachment_id == a.id) else {
        return refuse(
            "it is reserved through the attachments API, not attached to a server".into(),
        );
    };
    if sv.device == crate::compute::model::ROOT_DEVICE {
        return refuse(format!("it is the root volume of server {}", s.id));
    }
    let feature = if runs_vm(tx, &s)? {
        stratus_wire::volume::FEATURE_ONLINE_EXTEND
    } else {
        stratus_wire::volume::FEATURE_CONTAINER_EXTEND
    };
    if let Some(h) = v.host.as_deref()
        && !node_can(tx, h, feature)?
    {
        return refuse(format!(
            "the agent of storage node {h} is too old to grow volumes in use"
        ));
    }
    if s.host.is_some() && s.host != v.host {
        return refuse(format!(
            "server {} reaches it over NBD from storage node {}, and a disk over NBD cannot grow",
            s.id,
            v.host.as_deref().unwrap_or("?")
        ));
    }
    Ok(())
}

/// After an in-use volume's extend (done or failed): its server's
/// `extend_volume` action with a `compute_extend_volume` event, as Nova
/// records when Cinder tells it a volume grew.
pub(crate) fn volume_extended(
    tx: &Tx,
    v: &Volume,
    ok: bool,
    error: Option<&str>,
) -> Result<(), ApiError> {
    for sid in v.attachments.iter().filter_map(|a| a.server_id.as_deref()) {
        let Some(s) = tx.get::<Server>(sid)? else {
            continue;
        };
        let req = format!("req-{}", uuid::Uuid::new_v4());
        super::common::record_action_by(tx, &s, "extend_volume", &v.user_id, &req)?;
        super::common::action_event(
            tx,
            &s.id,
            "compute_extend_volume",
            ok,
            error,
            s.host.as_deref(),
        )?;
    }
    Ok(())
}

/// Nova's 400 when volume `v` is in another availability zone than
/// server `s`.
fn same_zone(s: &Server, v: &Volume) -> Result<(), ApiError> {
    let zone = s
        .availability_zone
        .as_deref()
        .unwrap_or(super::zones::DEFAULT_ZONE);
    if v.availability_zone == zone {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "Invalid volume: Server and volumes are not in the same availability zone. Server is in: {zone}. Volumes are in: {}",
        v.availability_zone
    )))
}

/// Whether the server is a VM (its image is a disk, or it boots from a
/// volume) rather than a container.
pub(crate) fn runs_vm(tx: &Tx, s: &Server) -> Result<bool, ApiError> {
    Ok(s.boot_volume().is_some() || tx.get::<Image>(&s.image_ref)?.is_some_and(|i| i.boots_vm()))
}

/// A volume on another node than the server's is reached over NBD from
/// its storage node's export (by QEMU for a VM, by the node's
/// `qemu-storage-daemon` for a container). The servers sharing a
/// multiattach volume all run on one node: the export and a local QEMU
/// would be two writers of one qcow2 file.
fn remote_ok(tx: &Tx, s: &Server, v: &Volume) -> Result<(), ApiError> {
    let (Some(vh), Some(sh)) = (v.host.as_deref(), s.host.as_deref()) else {
        return Ok(());
    };
    if vh != sh {
        let exports = tx
            .get::<crate::volume::model::StorageNode>(vh)?
            .is_some_and(|n| n.nbd.is_some());
        if !exports {
            return Err(ApiError::conflict(format!(
                "Volume {} is on storage node {vh}, which exports no volumes to other nodes (its agent needs qemu-storage-daemon), and instance {} runs on {sh}.",
                v.id, s.id
            )));
        }
    }
    // (A volume that is not multiattach is refused for being in use.)
    let shared = !v.attachments.is_empty() && attach::multiattach(tx, v)?;
    for sid in v
        .attachments
        .iter()
        .filter(|_| shared)
        .filter_map(|a| a.server_id.as_deref())
    {
        let other = tx.get::<Server>(sid)?.and_then(|o| o.host);
        if other.as_deref().is_some_and(|o| o != sh) {
            return Err(ApiError::conflict(format!(
                "Volume {} is attached to server {sid} on another node: the servers sharing a volume must run on one node.",
                v.id
            )));
        }
    }
    Ok(())
}

/// A multiattach volume already attached goes to another server only when
/// neither is a container: a container's node serves the qcow2 file
/// through a `qemu-storage-daemon` of its own, and two writers of one
/// qcow2 file (two daemons, or a daemon and a QEMU) would corrupt it.
fn shared_with_container(tx: &Tx, s: &Server, v: &Volume, is_vm: bool) -> Result<(), ApiError> {
    for sid in v.attachments.iter().filter_map(|a| a.server_id.as_deref()) {
        let other_vm = match tx.get::<Server>(sid)? {
            Some(o) => runs_vm(tx, &o)?,
            None => true,
        };
        if !is_vm || !other_vm {
            let container = if is_vm { sid } else { s.id.as_str() };
            return Err(ApiError::conflict(format!(
                "Volume {} is attached to server {sid}: {container} is a container, and a volume is shared by several servers only when all are virtual machines (multiattach).",
                v.id
            )));
        }
    }
    Ok(())
}

/// Settles the attaches and detaches of a server with no node (shelved
/// and offloaded) at once, as its node would once it had done them.
fn settle_here(tx: &Tx, s: &Server) -> Result<(), ApiError> {
    let report = AttachReport {
        attached: s
            .volumes
            .iter()
            .filter(|v| v.state != "detaching")
            .map(|v| v.volume_id.clone())
            .collect(),
        failed: Vec::new(),
        moved: Vec::new(),
    };
    attach::settle(tx, &s.id, &report)?;
    Ok(())
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, volume_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_member(&ctx, "os_compute_api:os-volumes-attachments:delete")?;
    let st = state.clone();
    let s = tokio::task::spawn_blocking(move || {
        st.store.write(|tx| {
            let mut s = fetch_tx(tx, &ctx, &id)?;
            check_locked(&ctx, &s)?;
            if !s.volumes.iter().any(|v| v.volume_id == volume_id) {
                return Err(not_attached(&volume_id));
            }
            if s.boot_volume().is_some_and(|v| v.volume_id == volume_id) {
                return Err(ApiError::bad_request("Cannot detach a root device volume"));
            }
            may_change(&s, "detach_volume")?;
            attach::begin_detach(tx, &mut s, &volume_id)?;
            if s.host.is_none() {
                // Shelved and offloaded: nothing to unplug.
                settle_here(tx, &s)?;
            }
            Ok::<_, ApiError>(s)
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    state.compute.notify(s.host.as_deref());
    Ok(StatusCode::ACCEPTED)
}

async fn agent_report(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((host, id)): Path<(String, String)>,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    super::nodes::require_agent(&ctx, &host)?;
    let r: AttachReport = crate::json::decode(&raw)?;
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        st.store.write(|tx| {
            // Only the node the server is on speaks for it.
            match tx.get::<Server>(&id)? {
                Some(s) if s.host.as_deref() == Some(host.as_str()) => attach::settle(tx, &id, &r),
                _ => Ok(false),
            }
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}
