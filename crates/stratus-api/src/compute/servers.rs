//! Servers: create, list, show, update, delete, metadata, tags.
//!
//! A create checks the request (image, flavor, key, zone, group, quota),
//! writes the servers in `building/scheduling` with the quota check in the
//! same store transaction, answers 202 and hands the servers to the
//! scheduler. Everything after that is driven by the node agent's reports
//! (`nodes.rs`).

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{After, Query as StoreQuery};

use super::commands::{CreateServer, Created, ServerAction};
use super::common::{
    bad_field, check_locked, fetch, fetch_tx, instance_name, nova_time, project_host_id,
    require_member, require_reader,
};
use super::model::{ComputeNode, Server};
use super::params::{access_ip, parse_metadata, valid_tag};
use super::quotas::{self, Resource};
use super::states::{self, task, vm};
use super::{Mv, body, links, next_link, paging, parse_bool, policy_denied};
use crate::identity::policy::Ctx;
use crate::middleware::RequestId;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/servers", get(list).post(create))
        .route("/servers/detail", get(list_detail))
        .route("/servers/{id}", get(show).put(update).delete(delete))
        .route(
            "/servers/{id}/metadata",
            get(meta_list).post(meta_merge).put(meta_replace),
        )
        .route(
            "/servers/{id}/metadata/{key}",
            get(meta_show).put(meta_set).delete(meta_delete),
        )
        .route(
            "/servers/{id}/tags",
            get(tags_list).put(tags_replace).delete(tags_clear),
        )
        .route(
            "/servers/{id}/tags/{tag}",
            get(tag_check).put(tag_add).delete(tag_delete),
        )
}

/// Nova's `hostId`: sha224 of project id and host, so tenants can tell
/// whether two of their servers share a host without learning its name.
fn host_id(s: &Server) -> String {
    match &s.host {
        Some(h) => project_host_id(&s.project_id, h),
        None => String::new(),
    }
}

fn host_status(state: &AppState, s: &Server) -> &'static str {
    let Some(h) = &s.host else { return "" };
    match state.store.get::<ComputeNode>(h) {
        Ok(Some(n)) => {
            if n.forced_down || !super::zones::is_up(state, &n) {
                "DOWN"
            } else if n.disabled {
                "MAINTENANCE"
            } else {
                "UP"
            }
        }
        // A server at an edge site: UP while the site's link is, else
        // UNKNOWN (the site runs it on its own while cut off).
        _ => match s
            .requested_az
            .as_deref()
            .and_then(|z| state.sites.site_of_zone(&state.store, z).ok().flatten())
            .and_then(|id| state.store.get::<crate::sites::Site>(&id).ok().flatten())
        {
            Some(site) if state.sites.shown_state(&site) == crate::sites::state::ACTIVE => "UP",
            _ => "UNKNOWN",
        },
    }
}

/// Before 2.75, update and rebuild answer with the basic server view:
/// none of the extension attributes that show and list add.
pub(crate) fn basic_view(mut v: Value, mv: Mv) -> Value {
    if !mv.at_least(75)
        && let Some(o) = v.as_object_mut()
    {
        o.retain(|k, _| {
            !(k.starts_with("OS-EXT-")
                || k.starts_with("OS-SRV-USG:")
                || k.starts_with("os-extended-volumes:")
                || matches!(
                    k.as_str(),
                    "config_drive" | "key_name" | "security_groups" | "host_status"
                ))
        });
    }
    v
}

pub(crate) fn render(state: &AppState, ctx: &Ctx, mv: Mv, s: &Server) -> Value {
    let base = &state.config.public_url;
    let status = states::status(&s.vm_state, s.task_state.as_deref());
    let image = if s.image_ref.is_empty() {
        json!("")
    } else {
        json!({"id": s.image_ref, "links": [{"rel": "bookmark", "href": format!("{base}/compute/images/{}", s.image_ref)}]})
    };
    let mut v = json!({
        "id": s.id,
        "name": s.name,
        "status": status,
        "tenant_id": s.project_id,
        "user_id": s.user_id,
        "metadata": s.metadata,
        "hostId": host_id(s),
        "image": image,
        "flavor": if mv.at_least(47) {
            // 2.47: the flavor as it was at boot, embedded.
            json!({
                "original_name": s.flavor.name,
                "vcpus": s.flavor.vcpus,
                "ram": s.flavor.ram,
                "disk": s.flavor.disk,
                "ephemeral": s.flavor.ephemeral,
                "swap": s.flavor.swap,
                "extra_specs": s.flavor.extra_specs,
            })
        } else {
            json!({"id": s.flavor.id, "links": [{"rel": "bookmark", "href": format!("{base}/compute/flavors/{}", s.flavor.id)}]})
        },
        "created": nova_time(s.created_us),
        "updated": nova_time(s.updated_us),
        "addresses": crate::network::nova::addresses(&state.store, &s.project_id, &s.nics),
        "accessIPv4": s.access_ipv4,
        "accessIPv6": s.access_ipv6,
        "links": links(state, "servers", &s.id),
        "key_name": s.key_name,
        "config_drive": s.config_drive,
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": s.availability_zone.clone().unwrap_or_default(),
        "OS-EXT-STS:task_state": s.task_state,
        "OS-EXT-STS:vm_state": s.vm_state,
        "OS-EXT-STS:power_state": s.power_state,
        "OS-SRV-USG:launched_at": s.launched_us.map(crate::timeutil::iso_naive),
        "OS-SRV-USG:terminated_at": null,
        "os-extended-volumes:volumes_attached": super::volume_attachments::volumes_attached(s, mv),
    });
    if !s.nics.is_empty() {
        let mut names: Vec<&String> = s.nics.iter().flat_map(|n| &n.security_groups).collect();
        names.sort();
        names.dedup();
        // Nova leaves the key out when the ports have no group left.
        if !names.is_empty() {
            v["security_groups"] =
                json!(names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>());
        }
    }
    let o = v.as_object_mut().expect("object");
    if matches!(status, "ACTIVE" | "BUILD" | "REBUILD") {
        o.insert(
            "progress".into(),
            json!(if status == "ACTIVE" { 100 } else { 0 }),
        );
    }
    if let Some(f) = &s.fault
        && matches!(s.vm_state.as_str(), vm::ERROR | vm::DELETED)
    {
        let mut fv =
            json!({"code": f.code, "message": f.message, "created": nova_time(f.created_us)});
        if ctx.is_admin() || f.code != 500 {
            fv["details"] = json!(f.details);
        }
        o.insert("fault".into(), fv);
    }
    if ctx.is_admin() {
        o.insert("OS-EXT-SRV-ATTR:host".into(), json!(s.host));
        o.insert("OS-EXT-SRV-ATTR:hypervisor_hostname".into(), json!(s.node));
        o.insert(
            "OS-EXT-SRV-ATTR:instance_name".into(),
            json!(instance_name(&s.id)),
        );
        if mv.at_least(3) {
            o.insert(
                "OS-EXT-SRV-ATTR:reservation_id".into(),
                json!(s.reservation_id),
            );
            o.insert("OS-EXT-SRV-ATTR:launch_index".into(), json!(s.launch_index));
            o.insert("OS-EXT-SRV-ATTR:hostname".into(), json!(s.hostname));
            o.insert("OS-EXT-SRV-ATTR:kernel_id".into(), json!(""));
            o.insert("OS-EXT-SRV-ATTR:ramdisk_id".into(), json!(""));
            o.insert("OS-EXT-SRV-ATTR:root_device_name".into(), json!("/dev/vda"));
            o.insert("OS-EXT-SRV-ATTR:user_data".into(), json!(s.user_data));
        }
    }
    if mv.at_least(9) {
        o.insert("locked".into(), json!(s.locked_by.is_some()));
    }
    if mv.at_least(73) {
        o.insert("locked_reason".into(), json!(s.locked_reason));
    }
    // 2.63: no server carries trusted certificates (see `trusted_certs`).
    if mv.at_least(63) {
        o.insert("trusted_image_certificates".into(), Value::Null);
    }
    if mv.at_least(16) && ctx.is_admin() {
        o.insert("host_status".into(), json!(host_status(state, s)));
    }
    if mv.at_least(19) {
        o.insert("description".into(), json!(s.description));
    }
    if mv.at_least(26) {
        o.insert("tags".into(), json!(s.tags));
    }
    v
}

// ---- list ---------------------------------------------------------------------

/// The query parameters `GET /servers` knows (Nova's 2.75 schema; a
/// filter Stratus has no data for matches as Nova's would on an empty
/// field).
const QUERY_PARAMS: &[&str] = &[
    "user_id",
    "project_id",
    "tenant_id",
    "launch_index",
    "image_ref",
    "image",
    "kernel_id",
    "ramdisk_id",
    "hostname",
    "key_name",
    "power_state",
    "vm_state",
    "task_state",
    "host",
    "node",
    "flavor",
    "reservation_id",
    "launched_at",
    "terminated_at",
    "availability_zone",
    "name",
    "display_name",
    "description",
    "display_description",
    "locked_by",
    "uuid",
    "root_device_name",
    "config_drive",
    "access_ip_v4",
    "access_ip_v6",
    "auto_disk_config",
    "progress",
    "sort_key",
    "sort_dir",
    "all_tenants",
    "soft_deleted",
    "deleted",
    "status",
    "changes-since",
    "changes-before",
    "ip",
    "ip6",
    "created_at",
    "block_device_mapping",
    "services",
    "metadata",
    "pci_devices",
    "security_groups",
    "info_cache",
    "system_metadata",
    "tags",
    "tags-any",
    "not-tags",
    "not-tags-any",
    "limit",
    "marker",
    "locked",
];

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    listing(&state, &ctx, mv, &q, false)
}

async fn list_detail(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    listing(&state, &ctx, mv, &q, true)
}

/// Nova's `name` filter is a Python `re.search`; the regex crate's syntax
/// covers what clients send (no look-around or back-references). A
/// pattern that does not compile matches nothing.
pub(crate) fn re_search(pattern: &str, text: &str) -> bool {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .is_ok_and(|re| re.is_match(text))
}

fn listing(
    state: &AppState,
    ctx: &Ctx,
    mv: Mv,
    pairs: &[(String, String)],
    detail: bool,
) -> Result<Response, ApiError> {
    require_reader(ctx, "os_compute_api:servers:index")?;
    let mut q: HashMap<String, String> = HashMap::new();
    let mut multi: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in pairs {
        q.insert(k.clone(), v.clone());
        multi.entry(k.clone()).or_default().push(v.clone());
    }
    let all_tenants = ctx.is_admin()
        && q.get("all_tenants")
            .is_some_and(|v| v.is_empty() || parse_bool(&json!(v)).unwrap_or(true));
    let project_filter = if all_tenants {
        q.get("project_id").or(q.get("tenant_id")).cloned()
    } else {
        Some(
            ctx.project_id()
                .ok_or_else(|| policy_denied("os_compute_api:servers:index"))?
                .to_string(),
        )
    };
    // Each asked status with its vm_states; a status that also depends on
    // the task (RESIZE, REBOOT, ...) must be the server's status too.
    let statuses: Option<Vec<(String, &[&str])>> = match multi.get("status") {
        None => None,
        Some(list) => {
            let mut out = Vec::new();
            for st in list {
                match states::vm_states_for(st) {
                    Some(v) => out.push((st.to_ascii_uppercase(), v)),
                    None if ctx.is_admin() => {
                        return Err(ApiError::bad_request(format!(
                            "Invalid server status: {st}"
                        )));
                    }
                    // Nova returns an empty list to non-admins.
                    None => out.push((String::new(), &[][..])),
                }
            }
            Some(out)
        }
    };
    // 2.75: a parameter Nova does not know is a 400, no longer ignored.
    if mv.at_least(75)
        && let Some(k) = q.keys().find(|k| !QUERY_PARAMS.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input for query parameters {k}. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let window = super::time_window(&q, mv)?;
    // 2.73: filter on whether the server is locked.
    let locked = match q.get("locked") {
        Some(v) if mv.at_least(73) => Some(parse_bool(&json!(v)).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for query parameters locked. Value: {v}. It is not a boolean"
            ))
        })?),
        _ => None,
    };
    let tag_list = |k: &str| -> Option<Vec<String>> {
        if !mv.at_least(26) {
            return None;
        }
        q.get(k)
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
    };
    let (tags, tags_any, not_tags, not_tags_any) = (
        tag_list("tags"),
        tag_list("tags-any"),
        tag_list("not-tags"),
        tag_list("not-tags-any"),
    );
    let keep = |s: &Server| {
        let ok_status = statuses.as_ref().is_none_or(|st| {
            st.iter().any(|(name, vms)| {
                vms.contains(&s.vm_state.as_str())
                    && (!states::task_dependent(name)
                        || states::status(&s.vm_state, s.task_state.as_deref()) == name)
            })
        });
        let ok_name = q.get("name").is_none_or(|n| re_search(n, &s.name));
        // `ip`/`ip6`: a regular expression on the server's fixed addresses
        // (and its access addresses), as Nova matches them.
        let ips = |v6: bool| {
            s.nics
                .iter()
                .flat_map(|n| n.ips.iter())
                .filter(move |a| a.contains(':') == v6)
                .map(String::as_str)
                .chain(Some(if v6 {
                    s.access_ipv6.as_str()
                } else {
                    s.access_ipv4.as_str()
                }))
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
        };
        let ok_ip = q
            .get("ip")
            .is_none_or(|p| ips(false).iter().any(|a| re_search(p, a)));
        let ok_ip6 = q
            .get("ip6")
            .is_none_or(|p| ips(true).iter().any(|a| re_search(p, a)));
        let ok_image = q
            .get("image")
            .is_none_or(|i| i.rsplit('/').next().unwrap_or(i) == s.image_ref);
        let ok_flavor = q
            .get("flavor")
            .is_none_or(|f| f.rsplit('/').next().unwrap_or(f) == s.flavor.id);
        let ok_res = q
            .get("reservation_id")
            .is_none_or(|r| r == &s.reservation_id);
        let ok_changes = super::in_window(window, s.updated_us)
            && locked.is_none_or(|l| s.locked_by.is_some() == l);
        // 2.83: members may filter on their servers' user and states too.
        let admin_only = |k: &str, v: Option<&str>| -> bool {
            let member_may = mv.at_least(83) && matches!(k, "user_id" | "vm_state" | "task_state");
            match q.get(k) {
                Some(x) if ctx.is_admin() || member_may => v == Some(x.as_str()),
                _ => true,
            }
        };
        let ok_host = admin_only("host", s.host.as_deref());
        let ok_node = admin_only("node", s.node.as_deref());
        let ok_user = admin_only("user_id", Some(&s.user_id));
        let ok_vm = admin_only("vm_state", Some(&s.vm_state));
        let ok_task = admin_only("task_state", s.task_state.as_deref());
        let ok_az = q
            .get("availability_zone")
            .is_none_or(|z| s.availability_zone.as_deref() == Some(z.as_str()));
        let ok_key = q
            .get("key_name")
            .is_none_or(|k| s.key_name.as_deref() == Some(k.as_str()));
        let ok_tags = tags
            .as_ref()
            .is_none_or(|t| t.iter().all(|x| s.tags.contains(x)));
        let ok_tags_any = tags_any
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| s.tags.contains(x)));
        let ok_not_tags = not_tags
            .as_ref()
            .is_none_or(|t| !t.iter().all(|x| s.tags.contains(x)));
        let ok_not_any = not_tags_any
            .as_ref()
            .is_none_or(|t| !t.iter().any(|x| s.tags.contains(x)));
        ok_status
            && ok_name
            && ok_ip
            && ok_ip6
            && ok_image
            && ok_flavor
            && ok_res
            && ok_changes
            && ok_host
            && ok_node
            && ok_user
            && ok_vm
            && ok_task
            && ok_az
            && ok_key
            && ok_tags
            && ok_tags_any
            && ok_not_tags
            && ok_not_any
    };
    let store_query = match &project_filter {
        Some(p) => StoreQuery::owner(p),
        None => StoreQuery::all(),
    };
    // Nova's default order (created_at desc, then id desc) is the store's
    // keyset order: pages come from the store, filtered as they are read.
    let items = if !multi.contains_key("sort_key") && !multi.contains_key("sort_dir") {
        let (limit, marker) = paging(&q)?;
        let start = match &marker {
            None => None,
            Some(m) => Some(
                state
                    .store
                    .get::<Server>(m)?
                    .filter(|s| {
                        project_filter.as_ref().is_none_or(|p| &s.project_id == p) && keep(s)
                    })
                    .ok_or_else(|| ApiError::bad_request(format!("marker [{m}] not found")))?,
            ),
        };
        newest_page(state, &store_query, start.as_ref(), limit, keep)?
    } else {
        let mut servers = state.store.list::<Server>(&store_query)?;
        servers.retain(keep);
        sorted_page(servers, &multi, &q)?
    };
    let limit = paging(&q)?.0;
    let rendered: Vec<Value> = items
        .iter()
        .map(|s| {
            if detail {
                render(state, ctx, mv, s)
            } else {
                json!({"id": s.id, "name": s.name, "links": links(state, "servers", &s.id)})
            }
        })
        .collect();
    let mut out = json!({"servers": rendered});
    let path = if detail { "servers/detail" } else { "servers" };
    if let Some(l) = next_link(
        state,
        path,
        &q,
        limit,
        items.last().map(|s| s.id.as_str()),
        items.len(),
    ) {
        out["servers_links"] = l;
    }
    Ok(axum::Json(out).into_response())
}

/// The next `limit` servers (all when `None`) in Nova's default order
/// that `keep` accepts, after `start`: read from the store a page at a
/// time, so the first page costs about `limit` rows when most match.
fn newest_page(
    state: &AppState,
    query: &StoreQuery,
    start: Option<&Server>,
    limit: Option<usize>,
    keep: impl Fn(&Server) -> bool,
) -> Result<Vec<Server>, ApiError> {
    let want = limit.unwrap_or(usize::MAX);
    let chunk = want.clamp(100, 1000);
    let mut out = Vec::new();
    let mut after = start.map(|s| (s.created_us, s.id.clone()));
    while out.len() < want {
        let position = after.as_ref().map(|(created, id)| After {
            created: *created,
            id,
        });
        let batch = state.store.list_newest::<Server>(query, position, chunk)?;
        let full = batch.len() == chunk;
        after = batch.last().map(|s| (s.created_us, s.id.clone()));
        out.extend(batch.into_iter().filter(|s| keep(s)));
        if !full {
            break;
        }
    }
    out.truncate(want);
    Ok(out)
}

/// Sorts by the asked `sort_key`s and `sort_dir`s (Nova's default
/// created_at desc, then id desc) and applies marker and limit.
fn sorted_page(
    mut servers: Vec<Server>,
    multi: &HashMap<String, Vec<String>>,
    q: &HashMap<String, String>,
) -> Result<Vec<Server>, ApiError> {
    let keys: Vec<String> = multi
        .get("sort_key")
        .cloned()
        .unwrap_or_else(|| vec!["created_at".into()]);
    let dirs: Vec<String> = multi.get("sort_dir").cloned().unwrap_or_default();
    for (i, k) in keys.iter().enumerate().rev() {
        let desc = match dirs.get(i).map(String::as_str) {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(d) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for query parameters sort_dir. Value: {d}. It is not one of ['asc', 'desc']"
                )));
            }
        };
        let key = k.as_str();
        let valid = [
            "created_at",
            "updated_at",
            "display_name",
            "name",
            "uuid",
            "id",
            "vm_state",
            "task_state",
            "power_state",
            "host",
            "node",
            "availability_zone",
            "key_name",
            "project_id",
            "user_id",
            "launched_at",
            "image_ref",
            "instance_type_id",
            "memory_mb",
            "vcpus",
            "root_gb",
            "hostname",
            "display_description",
            "locked",
            "launch_index",
            "reservation_id",
            "config_drive",
            "access_ip_v4",
            "access_ip_v6",
            "progress",
            "terminated_at",
            "ephemeral_gb",
            "kernel_id",
            "ramdisk_id",
            "root_device_name",
            "os_type",
            "architecture",
            "auto_disk_config",
        ];
        if !valid.contains(&key) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for query parameters sort_key. Value: {key}."
            )));
        }
        servers.sort_by(|a, b| {
            let o = match key {
                "display_name" | "name" => a.name.cmp(&b.name),
                "uuid" | "id" => a.id.cmp(&b.id),
                "updated_at" => a.updated_us.cmp(&b.updated_us),
                "vm_state" => a.vm_state.cmp(&b.vm_state),
                "host" => a.host.cmp(&b.host),
                "memory_mb" => a.flavor.ram.cmp(&b.flavor.ram),
                "locked" => a.locked_by.is_some().cmp(&b.locked_by.is_some()),
                "vcpus" => a.flavor.vcpus.cmp(&b.flavor.vcpus),
                _ => a.created_us.cmp(&b.created_us).then(a.id.cmp(&b.id)),
            };
            if desc { o.reverse() } else { o }
        });
    }
    let (limit, marker) = paging(q)?;
    if let Some(m) = &marker
        && !servers.iter().any(|s| &s.id == m)
    {
        return Err(ApiError::bad_request(format!("marker [{m}] not found")));
    }
    super::page(servers, limit, marker.as_deref(), |s| &s.id)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    require_reader(&ctx, "os_compute_api:servers:show")?;
    let s = fetch(&state, &ctx, &id)?;
    let v = with_groups(render(&state, &ctx, mv, &s), &s, mv);
    Ok(axum::Json(json!({ "server": v })))
}

/// 2.71: show, update and rebuild name the server's groups.
pub(crate) fn with_groups(mut v: Value, s: &Server, mv: Mv) -> Value {
    if mv.at_least(71) {
        v["server_groups"] = json!(s.server_group.iter().collect::<Vec<_>>());
    }
    v
}

// ---- create -------------------------------------------------------------------

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    axum::Extension(req_id): axum::Extension<RequestId>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    require_member(&ctx, "os_compute_api:servers:create")?;
    if ctx.project_id().is_none() {
        return Err(policy_denied("os_compute_api:servers:create"));
    }
    let b = body(&raw)?;
    let command = super::parse::create(&b, mv, &ctx)?;
    let created = super::core::create(&state, &ctx, &req_id.0, &command)?;
    Ok(created_view(&state, &b, &command, &created))
}

/// Create's answer: the reservation id when asked for, else the first
/// server's id, links and admin password (and its security groups).
fn created_view(state: &AppState, b: &Value, c: &CreateServer, created: &Created) -> Response {
    let o = &b["server"];
    let return_rid = o
        .get("return_reservation_id")
        .map(|v| parse_bool(v).unwrap_or(false))
        .unwrap_or(false);
    if return_rid {
        return (
            StatusCode::ACCEPTED,
            axum::Json(json!({"reservation_id": created.reservation_id})),
        )
            .into_response();
    }
    let s = &created.servers[0];
    let admin_pass = super::params::admin_pass(o);
    let mut v = json!({
        "id": s.id,
        "links": links(state, "servers", &s.id),
        "OS-DCF:diskConfig": "MANUAL",
        "adminPass": admin_pass,
    });
    if !matches!(o.get("networks"), Some(Value::String(n)) if n == "none") {
        let names = c
            .security_groups
            .clone()
            .unwrap_or_else(|| vec!["default".into()]);
        v["security_groups"] = json!(names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>());
    }
    (StatusCode::ACCEPTED, axum::Json(json!({"server": v}))).into_response()
}

// ---- update and delete ----------------------------------------------------------

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    require_member(&ctx, "os_compute_api:servers:update")?;
    let b = body(&raw)?;
    let o = b
        .get("server")
        .and_then(Value::as_object)
        .ok_or_else(|| bad_field("server", "'server' is a required property"))?;
    let mut allowed = vec!["name", "accessIPv4", "accessIPv6", "OS-DCF:diskConfig"];
    if mv.at_least(19) {
        allowed.push("description");
    }
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad_field(
            "server",
            format!("Additional properties are not allowed ('{k}' was unexpected)"),
        ));
    }
    let s = state.store.write(|tx| {
        let mut s = fetch_tx(tx, &ctx, &id)?;
        if let Some(n) = o.get("name") {
            s.name = super::validation::name("name", n)?;
        }
        if let Some(d) = o.get("description") {
            s.description = match d {
                Value::Null => None,
                Value::String(d) if d.len() <= 255 => Some(d.clone()),
                v => {
                    return Err(bad_field(
                        "description",
                        format!("Value: {v}. It must be a string of at most 255 characters"),
                    ));
                }
            };
        }
        if o.contains_key("accessIPv4") {
            s.access_ipv4 = access_ip(o.get("accessIPv4"), "accessIPv4", false)?;
        }
        if o.contains_key("accessIPv6") {
            s.access_ipv6 = access_ip(o.get("accessIPv6"), "accessIPv6", true)?;
        }
        s.updated_us = now_us();
        tx.update(&s)?;
        Ok(s)
    })?;
    let v = with_groups(basic_view(render(&state, &ctx, mv, &s), mv), &s, mv);
    Ok(axum::Json(json!({ "server": v })))
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    axum::Extension(req_id): axum::Extension<RequestId>,
) -> Result<StatusCode, ApiError> {
    require_member(&ctx, "os_compute_api:servers:delete")?;
    super::core::act(&state, &ctx, &id, &req_id.0, ServerAction::Delete)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- metadata ---------------------------------------------------------------------

async fn meta_list(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    require_reader(&ctx, "os_compute_api:server-metadata:index")?;
    let s = fetch(&state, &ctx, &id)?;
    Ok(axum::Json(json!({"metadata": s.metadata})))
}

async fn meta_show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, key)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    require_reader(&ctx, "os_compute_api:server-metadata:show")?;
    let s = fetch(&state, &ctx, &id)?;
    match s.metadata.get(&key) {
        Some(v) => Ok(axum::Json(json!({"meta": {key: v}}))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Metadata item was not found",
        )),
    }
}

/// Applies a metadata change with the quota check, in one transaction.
fn change_meta(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    f: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), ApiError>,
) -> Result<BTreeMap<String, String>, ApiError> {
    require_member(ctx, "os_compute_api:server-metadata:update")?;
    state.store.write(|tx| {
        let mut s = fetch_tx(tx, ctx, id)?;
        check_locked(ctx, &s)?;
        if s.task_state.as_deref() == Some(task::DELETING) {
            return Err(ApiError::conflict(format!(
                "Cannot 'update metadata' instance {id} while it is in task_state deleting"
            )));
        }
        f(&mut s.metadata)?;
        let lim = quotas::limit_tx(tx, &s.project_id, None, Resource::MetadataItems)?;
        if lim >= 0 && s.metadata.len() as i64 > lim {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Quota exceeded for metadata_items: Requested {}, but already used 0 of {lim} metadata_items",
                    s.metadata.len()
                ),
            ));
        }
        s.updated_us = now_us();
        tx.update(&s)?;
        Ok(s.metadata)
    })
}

fn meta_body(raw: &[u8]) -> Result<BTreeMap<String, String>, ApiError> {
    let b = body(raw)?;
    let m = b
        .get("metadata")
        .ok_or_else(|| bad_field("metadata", "'metadata' is a required property"))?;
    parse_metadata(m, "metadata")
}

async fn meta_merge(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let new = meta_body(&raw)?;
    let m = change_meta(&state, &ctx, &id, |m| {
        m.extend(new);
        Ok(())
    })?;
    Ok(axum::Json(json!({"metadata": m})))
}

async fn meta_replace(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let new = meta_body(&raw)?;
    let m = change_meta(&state, &ctx, &id, |m| {
        *m = new;
        Ok(())
    })?;
    Ok(axum::Json(json!({"metadata": m})))
}

async fn meta_set(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, key)): Path<(String, String)>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let b = body(&raw)?;
    let meta = parse_metadata(
        b.get("meta")
            .ok_or_else(|| bad_field("meta", "'meta' is a required property"))?,
        "meta",
    )?;
    if meta.len() != 1 {
        return Err(ApiError::bad_request(
            "Request body contains too many items",
        ));
    }
    let (k, v) = meta.into_iter().next().expect("one item");
    if k != key {
        return Err(ApiError::bad_request("Request body and URI mismatch"));
    }
    change_meta(&state, &ctx, &id, |m| {
        m.insert(k.clone(), v.clone());
        Ok(())
    })?;
    Ok(axum::Json(json!({"meta": {k: v}})))
}

async fn meta_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    change_meta(&state, &ctx, &id, |m| {
        m.remove(&key)
            .map(|_| ())
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Metadata item was not found"))
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- tags (2.26) --------------------------------------------------------------------

fn tags_version(mv: Mv) -> Result<(), ApiError> {
    if mv.at_least(26) {
        Ok(())
    } else {
        Err(super::no_such_resource())
    }
}

fn change_tags(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    f: impl FnOnce(&mut Vec<String>) -> Result<(), ApiError>,
) -> Result<Vec<String>, ApiError> {
    require_member(ctx, "os_compute_api:os-server-tags:update")?;
    state.store.write(|tx| {
        let mut s = fetch_tx(tx, ctx, id)?;
        f(&mut s.tags)?;
        if s.tags.len() > 50 {
            return Err(ApiError::bad_request(
                "The number of tags exceeded the per-server limit 50",
            ));
        }
        s.updated_us = now_us();
        tx.update(&s)?;
        Ok(s.tags)
    })
}

async fn tags_list(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    tags_version(mv)?;
    require_reader(&ctx, "os_compute_api:os-server-tags:index")?;
    let s = fetch(&state, &ctx, &id)?;
    Ok(axum::Json(json!({"tags": s.tags})))
}

async fn tags_replace(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    tags_version(mv)?;
    let b = body(&raw)?;
    let list: Vec<String> = b
        .get("tags")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_field("tags", "'tags' is a required property"))?
        .iter()
        .map(|t| {
            t.as_str()
                .filter(|t| valid_tag(t))
                .map(str::to_string)
                .ok_or_else(|| {
                    bad_field(
                        "tags",
                        format!("Value: {t}. Tags are 1-60 characters without ',' or '/'"),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let tags = change_tags(&state, &ctx, &id, |t| {
        let mut l = list;
        l.dedup();
        *t = l;
        Ok(())
    })?;
    Ok(axum::Json(json!({"tags": tags})))
}

async fn tags_clear(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    tags_version(mv)?;
    change_tags(&state, &ctx, &id, |t| {
        t.clear();
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tag_check(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, tag)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    tags_version(mv)?;
    require_reader(&ctx, "os_compute_api:os-server-tags:show")?;
    let s = fetch(&state, &ctx, &id)?;
    if s.tags.contains(&tag) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Tag {tag} could not be found for instance {id}."),
        ))
    }
}

async fn tag_add(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, tag)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    tags_version(mv)?;
    if !valid_tag(&tag) {
        return Err(bad_field(
            "tag",
            format!("Value: {tag}. Tags are 1-60 characters without ',' or '/'"),
        ));
    }
    let mut existed = false;
    change_tags(&state, &ctx, &id, |t| {
        existed = t.contains(&tag);
        if !existed {
            t.push(tag.clone());
        }
        Ok(())
    })?;
    if existed {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let loc = format!(
        "{}/compute/v2.1/servers/{id}/tags/{tag}",
        state.config.public_url
    );
    Ok((StatusCode::CREATED, [(axum::http::header::LOCATION, loc)]).into_response())
}

async fn tag_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, tag)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    tags_version(mv)?;
    change_tags(&state, &ctx, &id, |t| {
        let before = t.len();
        t.retain(|x| x != &tag);
        if t.len() == before {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Tag {tag} could not be found for instance {id}."),
            ));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::re_search;

    #[test]
    fn name_filter_is_a_regex_search() {
        assert!(re_search("web", "my-web-1"));
        assert!(re_search("^my", "my-web-1"));
        assert!(!re_search("^web", "my-web-1"));
        assert!(re_search("web-.$", "my-web-1"));
        assert!(re_search("m.*1$", "my-web-1"));
        assert!(!re_search("x", "my-web-1"));
        assert!(re_search(r"^.*\-instance\-[0-9]+$", "t-instance-42"));
        assert!(!re_search(r"^.*\-instance\-[0-9]+$", "t-instance-x"));
        assert!(!re_search("(", "("));
    }
}
