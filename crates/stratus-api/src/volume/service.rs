//! Block storage decisions, apart from HTTP: quota (limits and usage,
//! counted from the records inside the write transaction that would pass
//! them), placing a new volume on a storage node by capacity and zone,
//! and settling a storage node's report of a task.

use std::collections::{BTreeMap, HashMap};

use stratus_store::{Query, Tx};
use stratus_wire::volume::{VolumeReport, VolumeSource, VolumeTask};

use super::backup_model::{Backup, VolumeUpload};
use super::model::{Snapshot, StorageNode, Volume, VolumeQuota, VolumeType};
use super::over_limit;
use crate::identity::quota::{self as engine, Meter};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// Cinder's default quotas (`[DEFAULT] quota_*`).
pub const DEFAULTS: &[(&str, i64)] = &[
    ("volumes", 10),
    ("snapshots", 10),
    ("gigabytes", 1000),
    ("backups", 10),
    ("backup_gigabytes", 1000),
    ("per_volume_gigabytes", -1),
    ("groups", 10),
];

/// The id of the `default` quota class's record.
pub const DEFAULT_CLASS: &str = "class:default";

/// The limits that apply to `project` (built-in defaults, then the
/// `default` class, then the project's own), with a `-1` for every
/// per-type key not set.
pub fn limits(tx: &Tx, project: Option<&str>) -> Result<BTreeMap<String, i64>, ApiError> {
    let mut out: BTreeMap<String, i64> =
        DEFAULTS.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    for t in tx.list::<VolumeType>(&Query::all())? {
        for k in ["volumes", "gigabytes", "snapshots"] {
            out.insert(format!("{k}_{}", t.name), -1);
        }
    }
    if let Some(c) = tx.get::<VolumeQuota>(DEFAULT_CLASS)? {
        out.extend(c.limits);
    }
    if let Some(p) = project
        && let Some(q) = tx.get::<VolumeQuota>(p)?
    {
        out.extend(q.limits);
    }
    Ok(out)
}

/// What a project uses, by quota key (per-type keys included).
pub fn usage(tx: &Tx, project: &str) -> Result<BTreeMap<String, i64>, ApiError> {
    let types: HashMap<String, String> = tx
        .list::<VolumeType>(&Query::all())?
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect();
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    let mut add = |k: String, n: i64| *out.entry(k).or_default() += n;
    for v in tx.list::<Volume>(&Query::owner(project))? {
        let gb = v.extend_to.unwrap_or(v.size).max(v.size) as i64;
        add("volumes".into(), 1);
        add("gigabytes".into(), gb);
        if let Some(t) = types.get(&v.volume_type_id) {
            add(format!("volumes_{t}"), 1);
            add(format!("gigabytes_{t}"), gb);
        }
    }
    for s in tx.list::<Snapshot>(&Query::owner(project))? {
        add("snapshots".into(), 1);
        add("gigabytes".into(), s.size as i64);
        if let Some(t) = types.get(&s.volume_type_id) {
            add(format!("snapshots_{t}"), 1);
            add(format!("gigabytes_{t}"), s.size as i64);
        }
    }
    for b in tx.list::<Backup>(&Query::owner(project))? {
        add("backups".into(), 1);
        add("backup_gigabytes".into(), b.size as i64);
    }
    let groups = tx.list::<super::group_model::Group>(&Query::owner(project))?;
    add("groups".into(), groups.len() as i64);
    Ok(out)
}

/// What a request adds to a project's usage.
#[derive(Debug, Default)]
pub struct Delta<'a> {
    pub volumes: i64,
    pub snapshots: i64,
    pub gigabytes: i64,
    /// The volume type's name (for the per-type keys).
    pub type_name: Option<&'a str>,
}

/// Refuses (413 overLimit, Cinder's words) a request that would take a
/// project past one of its limits. Called inside the write transaction
/// that makes the change, so two requests never both pass the last unit.
pub fn check_quota(tx: &Tx, project: &str, d: &Delta, new_size: u64) -> Result<(), ApiError> {
    let lim = limits(tx, Some(project))?;
    let used = usage(tx, project)?;
    let per = lim.get("per_volume_gigabytes").copied().unwrap_or(-1);
    if d.volumes > 0 && per >= 0 && new_size as i64 > per {
        return Err(over_limit(format!(
            "VolumeSizeExceedsLimit: Requested volume size {new_size}G is larger than maximum allowed limit {per}G."
        )));
    }
    let mut keys: Vec<(String, i64)> = vec![
        ("volumes".into(), d.volumes),
        ("snapshots".into(), d.snapshots),
        ("gigabytes".into(), d.gigabytes),
    ];
    if let Some(t) = d.type_name {
        keys.push((format!("volumes_{t}"), d.volumes));
        keys.push((format!("snapshots_{t}"), d.snapshots));
        keys.push((format!("gigabytes_{t}"), d.gigabytes));
    }
    let tree = engine::model(tx)? != engine::Model::Flat;
    for (k, add) in keys {
        if add <= 0 {
            continue;
        }
        if tree && let Some(m) = meter(&k) {
            engine::take(tx, m, project, add)
                .map_err(|o| over_limit(format!("{}: {}", exceeded_name(&k), o.why)))?;
            continue;
        }
        let limit = lim.get(&k).copied().unwrap_or(-1);
        let in_use = used.get(&k).copied().unwrap_or(0);
        if limit >= 0 && in_use + add > limit {
            let msg = if k.starts_with("gigabytes") {
                format!(
                    "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed {k} quota. Requested {add}G, quota is {limit}G and {in_use}G has been consumed."
                )
            } else if k.starts_with("snapshots") {
                format!(
                    "SnapshotLimitExceeded: Maximum number of snapshots allowed ({limit}) exceeded for quota '{k}'."
                )
            } else {
                format!(
                    "VolumeLimitExceeded: Maximum number of volumes allowed ({limit}) exceeded for quota '{k}'."
                )
            };
            return Err(over_limit(msg));
        }
    }
    Ok(())
}

fn exceeded_name(k: &str) -> &'static str {
    if k.starts_with("gigabytes") {
        "VolumeSizeExceedsAvailableQuota"
    } else if k.starts_with("snapshots") {
        "SnapshotLimitExceeded"
    } else {
        "VolumeLimitExceeded"
    }
}

// ---- the quota engine's meters ---------------------------------------------

const VOLUME: &[&str] = &["volumev3", "block-storage", "volume"];

fn own_of(tx: &Tx, project: &str, key: &str) -> Result<Option<i64>, ApiError> {
    Ok(tx
        .get::<VolumeQuota>(project)?
        .and_then(|q| q.limits.get(key).copied()))
}

fn default_of(tx: &Tx, key: &str) -> Result<i64, ApiError> {
    Ok(limits(tx, None)?.get(key).copied().unwrap_or(-1))
}

fn used_of(tx: &Tx, project: &str, key: &str) -> Result<i64, ApiError> {
    Ok(usage(tx, project)?.get(key).copied().unwrap_or(0))
}

macro_rules! volume_meter {
    ($name:ident, $key:literal) => {
        pub static $name: Meter = Meter {
            services: VOLUME,
            resource: $key,
            own: |tx, p| own_of(tx, p, $key),
            default: |tx| default_of(tx, $key),
            used: |tx, p| used_of(tx, p, $key),
            own_all: None,
            subtree: None,
            reserved_all: None,
        };
    };
}
volume_meter!(VOLUMES, "volumes");
volume_meter!(GIGABYTES, "gigabytes");
volume_meter!(SNAPSHOTS, "snapshots");
volume_meter!(BACKUPS, "backups");
volume_meter!(BACKUP_GIGABYTES, "backup_gigabytes");

/// Every block-storage meter the engine enforces.
pub static METERS: [&Meter; 5] = [
    &VOLUMES,
    &GIGABYTES,
    &SNAPSHOTS,
    &BACKUPS,
    &BACKUP_GIGABYTES,
];

fn meter(key: &str) -> Option<&'static Meter> {
    METERS.iter().copied().find(|m| m.resource == key)
}

pub use super::model::BACKEND;
/// The vendor and protocol the backend reports.
pub const VENDOR: &str = "Stratus";
pub const PROTOCOL: &str = "file";

/// A storage node's capacity as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Capacity {
    pub node: StorageNode,
    pub zone: String,
    pub up: bool,
    /// GiB of volumes and snapshots placed on it.
    pub provisioned_gb: u64,
}

/// Every storage node, its zone, whether it is up and what it holds.
pub fn capacities(state: &AppState, tx: &Tx) -> Result<Vec<Capacity>, ApiError> {
    let seen = state.store.liveness(StorageNode::KIND_NAME)?;
    let aggs = tx.list::<crate::compute::model::Aggregate>(&Query::all())?;
    let down_us = state.compute.config.service_down_time_s as i64 * 1_000_000;
    let mut out = Vec::new();
    for node in tx.list::<StorageNode>(&Query::all())? {
        let provisioned_gb = tx
            .list::<Volume>(&Query::parent(&node.id))?
            .iter()
            .map(|v| v.extend_to.unwrap_or(v.size).max(v.size))
            .sum::<u64>()
            + tx.list::<Snapshot>(&Query::parent(&node.id))?
                .iter()
                .map(|s| s.size)
                .sum::<u64>()
            + super::moves::incoming_gb(tx, &node.id)?;
        let last = seen.get(&node.id).copied().unwrap_or(0);
        out.push(Capacity {
            zone: crate::compute::zones::zone_of(&aggs, &node.id),
            up: now_us() - last < down_us,
            provisioned_gb,
            node,
        });
    }
    Ok(out)
}

/// Whether `size` GiB more fits on a node (Cinder's capacity filter for
/// thin provisioning: the provisioned ratio stays under the
/// oversubscription ratio, and the free space times that ratio holds it).
pub fn fits(c: &Capacity, size: u64) -> bool {
    let n = &c.node;
    if n.total_capacity_gb <= 0.0 {
        return false;
    }
    let ratio = n.max_over_subscription_ratio.max(1.0);
    let provisioned = (c.provisioned_gb + size) as f64 / n.total_capacity_gb;
    provisioned <= ratio && n.free_capacity_gb * ratio >= size as f64
}

/// The storage node for a new volume of `size` GiB in `zone` (any zone
/// when `None`): an enabled node that is up and has room, the one with
/// the most free virtual capacity first (Cinder's capacity weigher).
pub fn place(
    state: &AppState,
    tx: &Tx,
    zone: Option<&str>,
    size: u64,
) -> Result<Option<(String, String)>, ApiError> {
    place_typed(state, tx, zone, size, &BTreeMap::new())
}

/// [`place`] for a volume of a type with `specs`: only a node whose
/// backend offers what they ask (Cinder's capabilities filter).
pub fn place_typed(
    state: &AppState,
    tx: &Tx,
    zone: Option<&str>,
    size: u64,
    specs: &BTreeMap<String, String>,
) -> Result<Option<(String, String)>, ApiError> {
    let best = pick(
        capacities(state, tx)?
            .into_iter()
            .filter(|c| c.up && !c.node.disabled && zone.is_none_or(|z| z == c.zone))
            .filter(|c| fits(c, size) && satisfies(&capabilities(c), specs)),
    );
    Ok(best.map(|c| (c.node.id, c.zone)))
}

/// Of the nodes that passed the filters, the one with the most free
/// virtual capacity (Cinder's capacity weigher; ties by name).
pub fn pick(nodes: impl Iterator<Item = Capacity>) -> Option<Capacity> {
    nodes.max_by(|a, b| {
        let free = |c: &Capacity| {
            c.node.total_capacity_gb * c.node.max_over_subscription_ratio.max(1.0)
                - c.provisioned_gb as f64
        };
        free(a).total_cmp(&free(b)).then(b.node.id.cmp(&a.node.id))
    })
}

/// Cinder's names of the pools holding volumes (`os-vol-host-attr:host`):
/// `<node>@<backend>#<backend>`, by storage node, read once for an answer
/// however many volumes it renders.
pub struct Pools(HashMap<String, String>);

impl Pools {
    pub fn load(state: &AppState) -> Result<Pools, ApiError> {
        Ok(Pools(
            state
                .store
                .list::<StorageNode>(&Query::all())?
                .into_iter()
                .map(|n| (n.id.clone(), n.pool_name()))
                .collect(),
        ))
    }

    /// The pool of storage node `host` (the default backend's name for a
    /// node no longer recorded).
    pub fn of(&self, host: &str) -> String {
        self.0
            .get(host)
            .cloned()
            .unwrap_or_else(|| format!("{host}@{BACKEND}#{BACKEND}"))
    }
}

/// Storage node `host`, when it is up, enabled, in `zone`, can hold
/// `size` GiB more and offers what `specs` ask: (host, zone).
pub fn place_on(
    state: &AppState,
    tx: &Tx,
    host: &str,
    zone: Option<&str>,
    size: u64,
    specs: &BTreeMap<String, String>,
) -> Result<Option<(String, String)>, ApiError> {
    Ok(capacities(state, tx)?
        .into_iter()
        .find(|c| {
            c.node.id == host
                && c.up
                && !c.node.disabled
                && zone.is_none_or(|z| z == c.zone)
                && fits(c, size)
                && satisfies(&capabilities(c), specs)
        })
        .map(|c| (c.node.id, c.zone)))
}

/// What a storage node's backend reports to the scheduler (Cinder's
/// volume stats; also `scheduler-stats/get_pools?detail=true`).
pub fn capabilities(c: &Capacity) -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "volume_backend_name": c.node.backend(),
        "vendor_name": VENDOR,
        "driver_version": env!("CARGO_PKG_VERSION"),
        "storage_protocol": PROTOCOL,
        "total_capacity_gb": c.node.total_capacity_gb,
        "free_capacity_gb": c.node.free_capacity_gb,
        "provisioned_capacity_gb": c.provisioned_gb,
        "max_over_subscription_ratio": c.node.max_over_subscription_ratio.to_string(),
        "thin_provisioning_support": true,
        "thick_provisioning_support": false,
        "reserved_percentage": 0,
        "QoS_support": false,
        "multiattach": true,
        "online_extend_support": true,
        "consistent_group_snapshot_enabled": false,
        "replication_enabled": false,
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    }
}

/// Whether a backend with `caps` offers what a type's extra `specs` ask
/// (Cinder's `CapabilitiesFilter`): a key scoped to something other
/// than `capabilities:` (`RESKEY:`, `qos:`, a vendor's) is not the
/// scheduler's; any other must name a capability whose value matches.
pub fn satisfies(
    caps: &serde_json::Map<String, serde_json::Value>,
    specs: &BTreeMap<String, String>,
) -> bool {
    specs.iter().all(|(key, req)| {
        let key = key.strip_prefix("capabilities:").unwrap_or(key);
        if key.contains(':') {
            return true;
        }
        match caps.get(key) {
            None => false,
            Some(v) => spec_matches(v, req),
        }
    })
}

/// One extra spec against one capability, with Cinder's operators
/// (`extra_specs_ops`): `<is>`, `<in>`, `<all-in>`, `<or>`, `=` (at
/// least), `==`, `!=`, `>=`, `<=`, `s==`, `s!=`, `s<`, `s<=`, `s>`,
/// `s>=`; anything else is compared as a whole string.
fn spec_matches(value: &serde_json::Value, req: &str) -> bool {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        other => other.to_string(),
    };
    let words: Vec<&str> = req.split_whitespace().collect();
    let Some((op, rest)) = words.split_first() else {
        return text == req;
    };
    let num = |s: &str| s.parse::<f64>().ok();
    let cmp = |f: fn(f64, f64) -> bool| match (num(&text), rest.first().and_then(|w| num(w))) {
        (Some(a), Some(b)) => f(a, b),
        _ => false,
    };
    let arg = rest.first().copied().unwrap_or("");
    match *op {
        "<or>" => words.iter().filter(|w| **w != "<or>").any(|w| *w == text),
        // Both sides read as booleans (`bool_from_string`): `<is> 1`,
        // `<is> yes` and `<is> True` are the same.
        "<is>" => {
            let truth = |s: &str| {
                matches!(
                    s.to_ascii_lowercase().as_str(),
                    "1" | "t" | "true" | "on" | "y" | "yes"
                )
            };
            truth(&text) == truth(arg)
        }
        "<in>" => text.contains(arg),
        "<all-in>" => rest.iter().all(|w| text.contains(w)),
        "=" | ">=" => cmp(|a, b| a >= b),
        "==" => cmp(|a, b| a == b),
        "!=" => cmp(|a, b| a != b),
        "<=" => cmp(|a, b| a <= b),
        "s==" => text.as_str() == arg,
        "s!=" => text.as_str() != arg,
        "s<" => text.as_str() < arg,
        "s<=" => text.as_str() <= arg,
        "s>" => text.as_str() > arg,
        "s>=" => text.as_str() >= arg,
        _ => text == req,
    }
}

/// Settles a storage node's report of a task on volume or snapshot `id`.
/// A report for another task or generation than the one asked for now is
/// stale and changes nothing.
pub fn task_done(state: &AppState, host: &str, id: &str, r: &VolumeReport) -> Result<(), ApiError> {
    // Servers whose volumes are all made now, for the scheduler.
    let mut ready = Vec::new();
    let rev = state.store.write(|tx| {
        ready.clear();
        let now = now_us();
        if let Some(mut v) = tx.get::<Volume>(id)? {
            // An agent older than a task reports it as `Other` (and
            // failed): that ends the task at its generation too, rather
            // than leaving the volume waiting for ever.
            let unknown = r.task == VolumeTask::Other && r.error.is_some() && v.task.is_some();
            if v.host.as_deref() != Some(host)
                || (v.task != Some(r.task) && !unknown)
                || v.generation != r.generation
            {
                return Ok::<_, ApiError>(None);
            }
            let Some(task) = v.task else {
                return Ok(None);
            };
            if let Some(e) = &r.error {
                tracing::warn!(volume = %id, task = ?r.task, error = %e, "a volume task failed");
            }
            v.task = None;
            v.updated_us = now;
            v.fault = r.error.clone();
            let ok = r.error.is_none();
            match task {
                VolumeTask::Create => {
                    if !ok {
                        let event = match v.source {
                            Some(VolumeSource::Image { .. }) => super::messages::Event::CopyImageToVolume,
                            _ => super::messages::Event::CreateFromBackend,
                        };
                        super::messages::record_tx(tx, &v.project_id, "VOLUME", &v.id, event, r.error.as_deref())?;
                    }
                    // A volume made for a new server is reserved for it.
                    v.status = if ok { super::attach::status_of(&v) } else { "error" }.into();
                    ready = crate::compute::boot_volumes::volume_ready(tx, &v, ok)?;
                }
                VolumeTask::Extend => {
                    if ok && let Some(n) = v.extend_to {
                        v.size = n;
                    }
                    v.extend_to = None;
                    if !v.attachments.is_empty() {
                        crate::compute::volume_attachments::volume_extended(tx, &v, ok, r.error.as_deref())?;
                    }
                    // (An in-use volume stays in use.)
                    v.status = if ok { super::attach::status_of(&v) } else { "error_extending" }.into();
                    if !ok {
                        super::messages::record_tx(tx, &v.project_id, "VOLUME", &v.id, super::messages::Event::Extend, r.error.as_deref())?;
                    }
                }
                VolumeTask::Rewrite => {
                    // Revert (snapshot) or reimage (image): the volume
                    // holds the new data, or its old data when it failed
                    // (the file is replaced only when whole). Cinder
                    // marks the volume `error` either way on failure.
                    match v.rewrite_from.take() {
                        Some(VolumeSource::Image { id: image, .. }) => {
                            if ok {
                                v.bootable = true;
                                if let Some(img) = tx.get::<crate::image::model::Image>(&image)? {
                                    v.image_metadata = image_meta(&img);
                                }
                            } else {
                                super::messages::record_tx(tx, &v.project_id, "VOLUME", &v.id, super::messages::Event::Reimage, r.error.as_deref())?;
                            }
                        }
                        Some(VolumeSource::Snapshot { id: snap }) => {
                            if let Some(mut s) = tx.get::<Snapshot>(&snap)?
                                && s.status == "restoring"
                            {
                                s.status = "available".into();
                                s.updated_us = now;
                                tx.update(&s)?;
                            }
                            if !ok {
                                super::messages::record_tx(tx, &v.project_id, "VOLUME", &v.id, super::messages::Event::Revert, r.error.as_deref())?;
                            }
                        }
                        _ => {}
                    }
                    v.status = if ok { super::attach::status_of(&v) } else { "error" }.into();
                }
                VolumeTask::Delete if ok => {
                    tx.delete::<Volume>(id)?;
                    super::group_model::volume_settled(tx, &v, true)?;
                    return Ok(Some(tx.last_revision()?));
                }
                VolumeTask::Delete => v.status = "error_deleting".into(),
                _ => return Ok(None),
            }
            super::group_model::volume_settled(tx, &v, false)?;
            return Ok(Some(tx.update(&v)?));
        }
        if let Some(mut s) = tx.get::<Snapshot>(id)? {
            let unknown = r.task == VolumeTask::Other && r.error.is_some() && s.task.is_some();
            if s.host.as_deref() != Some(host)
                || (s.task != Some(r.task) && !unknown)
                || s.generation != r.generation
            {
                return Ok(None);
            }
            let Some(task) = s.task else {
                return Ok(None);
            };
            if let Some(e) = &r.error {
                tracing::warn!(snapshot = %id, task = ?r.task, error = %e, "a snapshot task failed");
            }
            s.task = None;
            s.updated_us = now;
            s.fault = r.error.clone();
            let ok = r.error.is_none();
            if !ok {
                let event = match task {
                    VolumeTask::Snapshot => Some(super::messages::Event::SnapshotCreate),
                    VolumeTask::DeleteSnapshot => Some(super::messages::Event::SnapshotDelete),
                    _ => None,
                };
                if let Some(event) = event {
                    super::messages::record_tx(tx, &s.project_id, "VOLUME_SNAPSHOT", &s.id, event, r.error.as_deref())?;
                }
            }
            match task {
                VolumeTask::Snapshot => s.status = if ok { "available" } else { "error" }.into(),
                VolumeTask::DeleteSnapshot if ok => {
                    tx.delete::<Snapshot>(id)?;
                    super::group_model::snapshot_settled(tx, &s, true)?;
                    return Ok(Some(tx.last_revision()?));
                }
                VolumeTask::DeleteSnapshot => s.status = "error_deleting".into(),
                _ => return Ok(None),
            }
            super::group_model::snapshot_settled(tx, &s, false)?;
            return Ok(Some(tx.update(&s)?));
        }
        Ok(None)
    })?;
    if let Some(rev) = rev {
        state.volumes.bump(rev as u64);
    }
    if !ready.is_empty() {
        crate::compute::scheduler::submit(state, ready);
    }
    Ok(())
}

/// Whether storage node `host` is making a volume from image `image_id`
/// now (so its agent may download the image, whoever owns it), or
/// uploading a volume into it (so it may see the image it writes).
pub fn makes_from_image(state: &AppState, host: &str, image_id: &str) -> Result<bool, ApiError> {
    let making = state
        .store
        .list::<Volume>(&Query::parent(host))?
        .iter()
        .any(|v| {
            let from = match v.task {
                Some(VolumeTask::Create) => &v.source,
                Some(VolumeTask::Rewrite) => &v.rewrite_from,
                _ => &None,
            };
            matches!(from, Some(stratus_wire::volume::VolumeSource::Image { id, .. }) if id == image_id)
        });
    Ok(making || uploads_to_image(state, host, image_id)?)
}

/// Whether storage node `host` is uploading a volume into `image_id`
/// (`os-volume_upload_image`).
pub fn uploads_to_image(state: &AppState, host: &str, image_id: &str) -> Result<bool, ApiError> {
    Ok(state
        .store
        .list::<VolumeUpload>(&Query::parent(host))?
        .iter()
        .any(|u| u.task == Some(VolumeTask::Upload) && u.image_id == image_id))
}

/// The image metadata a volume made from `img` keeps
/// (`volume_image_metadata`).
pub(crate) fn image_meta(
    img: &crate::image::model::Image,
) -> std::collections::BTreeMap<String, String> {
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("image_id".into(), img.id.clone());
    if let Some(n) = &img.name {
        meta.insert("image_name".into(), n.clone());
    }
    meta.insert(
        "disk_format".into(),
        img.disk_format.clone().unwrap_or_default(),
    );
    if let Some(c) = &img.container_format {
        meta.insert("container_format".into(), c.clone());
    }
    if let Some(c) = &img.checksum {
        meta.insert("checksum".into(), c.clone());
    }
    meta.insert("min_disk".into(), img.min_disk.to_string());
    meta.insert("min_ram".into(), img.min_ram.to_string());
    if let Some(s) = img.size {
        meta.insert("size".into(), s.to_string());
    }
    for (k, v) in &img.properties {
        let s = v
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        meta.insert(k.clone(), s);
    }
    meta
}

/// Wakes the storage nodes after this process wrote at `rev`.
pub fn written(state: &AppState, rev: i64) {
    state.volumes.bump(rev as u64);
}

impl StorageNode {
    /// The record kind, for the liveness table.
    pub const KIND_NAME: &'static str = "storage_node";
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caps() -> serde_json::Map<String, serde_json::Value> {
        match json!({"vendor_name": "Stratus", "storage_protocol": "file", "multiattach": true, "total_capacity_gb": 100.0})
        {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn specs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn extra_specs_match_capabilities_as_cinder_does() {
        let c = caps();
        assert!(satisfies(&c, &specs(&[])));
        assert!(satisfies(
            &c,
            &specs(&[("vendor_name", "Stratus"), ("storage_protocol", "file")])
        ));
        assert!(satisfies(&c, &specs(&[("multiattach", "<is> True")])));
        assert!(satisfies(
            &c,
            &specs(&[("capabilities:vendor_name", "<or> X <or> Stratus")])
        ));
        assert!(satisfies(&c, &specs(&[("total_capacity_gb", ">= 50")])));
        // Scoped keys are not the scheduler's.
        assert!(satisfies(
            &c,
            &specs(&[("RESKEY:availability_zones", "az1"), ("qos:iops", "9")])
        ));
        // What the backend does not offer or report fails.
        assert!(!satisfies(&c, &specs(&[("vendor_name", "Acme")])));
        assert!(!satisfies(&c, &specs(&[("storage_protocol", "iSCSI")])));
        assert!(!satisfies(&c, &specs(&[("unknown_capability", "x")])));
        assert!(!satisfies(&c, &specs(&[("multiattach", "<is> False")])));
        assert!(satisfies(&c, &specs(&[("multiattach", "<is> yes")])));
        assert!(satisfies(&c, &specs(&[("multiattach", "<is> 1")])));
        assert!(!satisfies(&c, &specs(&[("total_capacity_gb", ">= 500")])));
    }
}
