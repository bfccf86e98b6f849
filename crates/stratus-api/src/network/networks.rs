//! Networks: CRUD, `shared`, `router:external`, MTU and the admin-only
//! `provider:*` attributes, and `network-ip-availabilities`.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Map, Value, json};
use stratus_store::{Query as SQ, Tx};

use super::model::{FloatingIp, IpAllocation, Network, Port, RbacPolicy, Std, Subnet};
use super::{
    NetError, NetResult, fields_of, ipam, list_answer, new_id, opt_bool, opt_int, opt_str, owns,
    reply, require_member, require_reader, resource_body, select_fields, target_project,
};
use crate::AppState;
use crate::identity::policy::Ctx;
use crate::json::Json;

/// VXLAN's MTU (1500 less the encapsulation), Neutron's default here.
pub const DEFAULT_MTU: i64 = 1450;

const NETWORK_TYPES: &[&str] = &["vxlan", "flat", "vlan", "local", "geneve", "gre"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/networks", get(list).post(create_many))
        .route("/networks/{id}", get(show).put(update).delete(delete))
        .route("/network-ip-availabilities", get(availabilities))
        .route("/network-ip-availabilities/{id}", get(availability))
}

pub fn not_found(id: &str) -> NetError {
    NetError::not_found(
        "NetworkNotFound",
        format!("Network {id} could not be found."),
    )
}

/// Whether the caller sees `n`: its project's, shared and external ones,
/// and those an RBAC policy shares with its project or makes external for
/// it.
pub fn visible(ctx: &Ctx, n: &Network) -> bool {
    n.shared
        || n.external
        || owns(ctx, &n.project_id)
        || granted(&n.rbac_shared, ctx.project_id())
        || granted(&n.rbac_external, ctx.project_id())
}

/// Whether an RBAC target list names `project` (or everyone).
pub fn granted(targets: &[String], project: Option<&str>) -> bool {
    targets
        .iter()
        .any(|t| t == "*" || Some(t.as_str()) == project)
}

/// Whether `n` is external for `project`: `router:external`, or an
/// `access_as_external` RBAC policy for it.
pub fn external_for(n: &Network, project: &str) -> bool {
    n.external || granted(&n.rbac_external, Some(project))
}

/// Refuses a second default external network (Neutron's
/// `DefaultExternalNetworkExists`).
fn check_default(tx: &Tx, id: &str, is_default: bool, external: bool) -> NetResult<()> {
    if !is_default || !external {
        return Ok(());
    }
    if let Some(other) = tx
        .list::<Network>(&SQ::all())?
        .into_iter()
        .find(|n| n.is_default && n.external && n.id != id)
    {
        return Err(NetError::conflict(
            "DefaultExternalNetworkExists",
            format!("A default external network already exists: {}.", other.id),
        ));
    }
    Ok(())
}

/// Creates a plain tenant network (VXLAN, default MTU) inside `tx`; the
/// auto-allocated topology uses it.
pub(super) fn create_in(tx: &Tx, project: &str, name: &str) -> NetResult<Network> {
    let id = new_id();
    super::quotas::check(tx, project, "network", 1)?;
    let (ty, phys, seg) = segment(tx, &Map::new(), &id)?;
    let net = Network {
        id,
        project_id: project.to_string(),
        name: name.to_string(),
        admin_state_up: true,
        shared: false,
        external: false,
        mtu: DEFAULT_MTU as u32,
        port_security_enabled: true,
        network_type: ty,
        physical_network: phys,
        segmentation_id: seg,
        availability_zone_hints: Vec::new(),
        is_default: false,
        rbac_shared: Vec::new(),
        rbac_external: Vec::new(),
        std: Std::new(String::new()),
    };
    tx.insert(&net)?;
    Ok(net)
}

/// At an edge site, a network that came down from the parent: the parent
/// hands out its addresses, so nothing here may take one (a server or
/// port made here could collide with one the parent made for this site).
pub fn refuse_if_parents(net: &Network) -> NetResult<()> {
    if net.std.from_parent {
        return Err(NetError::conflict(
            "NetworkManagedByParent",
            format!(
                "Network {} belongs to this site's parent controller, which hands out its addresses: make ports and servers on it at the parent (or use a network of this site).",
                net.id
            ),
        ));
    }
    Ok(())
}

/// The network `id` as the caller sees it (else `NetworkNotFound`).
pub fn find_in(tx: &Tx, ctx: &Ctx, id: &str) -> NetResult<Network> {
    match tx.get::<Network>(id)? {
        Some(n) if visible(ctx, &n) => Ok(n),
        _ => Err(not_found(id)),
    }
}

fn subnet_ids(subnets: &[Subnet]) -> Vec<String> {
    subnets.iter().map(|s| s.id.clone()).collect()
}

fn render(state: &AppState, ctx: &Ctx, n: &Network) -> NetResult<Value> {
    let subs = state.store.list::<Subnet>(&SQ::parent(&n.id))?;
    Ok(render_for(ctx, n, subnet_ids(&subs)))
}

/// The API view as the caller sees it: as in Neutron, a network an RBAC
/// policy shares with the caller's project (or everyone) is `shared` to
/// it, and one made external for it is `router:external`.
fn render_for(ctx: &Ctx, n: &Network, subnets: Vec<String>) -> Value {
    let mut v = n.render(subnets, ctx.is_admin());
    let project = ctx.project_id();
    if !n.shared
        && n.rbac_shared
            .iter()
            .any(|t| t == "*" || Some(t.as_str()) == project && !owns(ctx, &n.project_id))
    {
        v["shared"] = json!(true);
    }
    if !n.external
        && n.rbac_external
            .iter()
            .any(|t| t == "*" || Some(t.as_str()) == project)
    {
        v["router:external"] = json!(true);
    }
    v
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_network")?;
    let nets = state.store.list::<Network>(&SQ::all())?;
    let subs = state.store.list::<Subnet>(&SQ::all())?;
    let items: Vec<Value> = nets
        .iter()
        .filter(|n| visible(&ctx, n))
        .map(|n| {
            let ids: Vec<String> = subs
                .iter()
                .filter(|s| s.network_id == n.id)
                .map(|s| s.id.clone())
                .collect();
            render_for(&ctx, n, ids)
        })
        .collect();
    list_answer(&state, "networks", "networks", items, &q)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_network")?;
    let n = match state.store.get::<Network>(&id)? {
        Some(n) if visible(&ctx, &n) => n,
        _ => return Err(not_found(&id)),
    };
    let v = select_fields(render(&state, &ctx, &n)?, &fields_of(&q));
    Ok(reply(StatusCode::OK, json!({ "network": v })))
}

const CREATE_ATTRS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "shared",
    "router:external",
    "mtu",
    "port_security_enabled",
    "provider:network_type",
    "provider:physical_network",
    "provider:segmentation_id",
    "project_id",
    "tenant_id",
    "availability_zone_hints",
    "qos_policy_id",
    "dns_domain",
    "is_default",
];

/// Admin-only attributes: refused with 403 for others, as Neutron's
/// policy does.
fn admin_only(ctx: &Ctx, m: &Map<String, Value>, action: &str) -> NetResult<()> {
    for a in [
        "shared",
        "router:external",
        "provider:network_type",
        "provider:physical_network",
        "provider:segmentation_id",
        "is_default",
    ] {
        if m.contains_key(a) && !ctx.is_admin() {
            // Asking for the default is allowed.
            if (a == "shared" || a == "router:external" || a == "is_default")
                && m[a] == json!(false)
            {
                continue;
            }
            return Err(NetError::policy(&format!("{action}:{a}")));
        }
    }
    Ok(())
}

fn check_mtu(mtu: i64, network_type: &str) -> NetResult<u32> {
    let max = if network_type == "vxlan" || network_type == "geneve" || network_type == "gre" {
        DEFAULT_MTU
    } else {
        1500
    };
    if !(68..=max).contains(&mtu) {
        return Err(NetError::invalid(format!(
            "Requested MTU is too big, maximum is {max}"
        )));
    }
    Ok(mtu as u32)
}

/// Validates the provider attributes and picks a segmentation id for
/// tunnelled networks, unique among networks of that type.
fn segment(
    tx: &Tx,
    m: &Map<String, Value>,
    self_id: &str,
) -> NetResult<(String, Option<String>, Option<u32>)> {
    let ty = opt_str(m, "provider:network_type")?.unwrap_or_else(|| "vxlan".into());
    if !NETWORK_TYPES.contains(&ty.as_str()) {
        return Err(NetError::invalid(format!(
            "network_type value '{ty}' not supported"
        )));
    }
    let phys = opt_str(m, "provider:physical_network")?;
    let seg = opt_int(m, "provider:segmentation_id")?;
    let others: Vec<Network> = tx
        .list::<Network>(&SQ::all())?
        .into_iter()
        .filter(|n| n.id != self_id && n.network_type == ty)
        .collect();
    match ty.as_str() {
        "flat" | "local" => {
            if seg.is_some() {
                return Err(NetError::invalid(format!(
                    "segmentation_id specified for {ty} network"
                )));
            }
            if ty == "flat" && phys.is_none() {
                return Err(NetError::invalid(
                    "physical_network required for flat provider network",
                ));
            }
            if ty == "local" && phys.is_some() {
                return Err(NetError::invalid(
                    "physical_network specified for local network",
                ));
            }
            if ty == "flat" && others.iter().any(|n| n.physical_network == phys) {
                return Err(NetError::conflict(
                    "FlatNetworkInUse",
                    format!(
                        "Unable to create the flat network. Physical network {} is in use.",
                        phys.unwrap_or_default()
                    ),
                ));
            }
            Ok((ty, phys, None))
        }
        "vlan" => {
            let phys = phys.ok_or_else(|| {
                NetError::invalid("physical_network required for VLAN provider network")
            })?;
            let seg = seg.ok_or_else(|| {
                NetError::invalid("segmentation_id required for VLAN provider network")
            })?;
            if !(1..=4094).contains(&seg) {
                return Err(NetError::invalid(
                    "segmentation_id out of range (1 through 4094)",
                ));
            }
            if others.iter().any(|n| {
                n.physical_network.as_deref() == Some(&phys)
                    && n.segmentation_id == Some(seg as u32)
            }) {
                return Err(NetError::conflict(
                    "VlanIdInUse",
                    format!(
                        "Unable to create the network. The VLAN {seg} on physical network {phys} is in use."
                    ),
                ));
            }
            Ok((ty, Some(phys), Some(seg as u32)))
        }
        _ => {
            if phys.is_some() {
                return Err(NetError::invalid(format!(
                    "provider:physical_network specified for {ty} network"
                )));
            }
            let id = match seg {
                Some(s) if (1..=(1 << 24) - 1).contains(&s) => {
                    if others.iter().any(|n| n.segmentation_id == Some(s as u32)) {
                        return Err(NetError::conflict(
                            "TunnelIdInUse",
                            format!("Unable to create the network. The tunnel ID {s} is in use."),
                        ));
                    }
                    s as u32
                }
                Some(s) => {
                    return Err(NetError::invalid(format!(
                        "{ty} segmentation_id {s} out of range (1 through 16777215)"
                    )));
                }
                None => free_tunnel_id(&others),
            };
            Ok((ty, None, Some(id)))
        }
    }
}

/// A tunnel id no other network of the type has, picked at random as
/// Neutron does: the id of a network just deleted is not handed out again
/// at once, while nodes may still be tearing down its tunnel.
fn free_tunnel_id(others: &[Network]) -> u32 {
    const MAX: u32 = (1 << 24) - 1;
    let used: std::collections::HashSet<u32> =
        others.iter().filter_map(|n| n.segmentation_id).collect();
    for _ in 0..64 {
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        let c = u32::from_le_bytes(b) % MAX + 1;
        if !used.contains(&c) {
            return c;
        }
    }
    // Nearly full: the lowest free one.
    (1..=MAX).find(|c| !used.contains(c)).unwrap_or(MAX)
}

/// `POST /networks`: one network, or many at once (Neutron's bulk create).
async fn create_many(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    super::create_bulk(
        body,
        "network",
        "networks",
        |b| create(State(state.clone()), Ctx(ctx.0.clone()), Json(b)),
        |id| delete(State(state.clone()), Ctx(ctx.0.clone()), Path(id)),
    )
    .await
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "create_network")?;
    let m = resource_body(body, "network", CREATE_ATTRS)?;
    admin_only(&ctx, &m, "create_network")?;
    let project = target_project(&ctx, &m, "create_network")?;
    let name = opt_str(&m, "name")?.unwrap_or_default();
    let description = opt_str(&m, "description")?.unwrap_or_default();
    let admin_state_up = opt_bool(&m, "admin_state_up")?.unwrap_or(true);
    let shared = opt_bool(&m, "shared")?.unwrap_or(false);
    let external = opt_bool(&m, "router:external")?.unwrap_or(false);
    let port_security = opt_bool(&m, "port_security_enabled")?.unwrap_or(true);
    let mtu = opt_int(&m, "mtu")?;
    let is_default = opt_bool(&m, "is_default")?.unwrap_or(false);
    let az = match m.get("availability_zone_hints") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                NetError::bad_request(
                    "Invalid input for availability_zone_hints. Reason: not a list of strings.",
                )
            })?,
        Some(_) => {
            return Err(NetError::bad_request(
                "Invalid input for availability_zone_hints. Reason: not a list.",
            ));
        }
    };
    let id = new_id();
    let net = state.store.write(|tx| {
        super::quotas::check(tx, &project, "network", 1)?;
        let (ty, phys, seg) = segment(tx, &m, &id)?;
        let default_mtu = if ty == "vxlan" || ty == "geneve" || ty == "gre" {
            DEFAULT_MTU
        } else {
            1500
        };
        let mtu = check_mtu(mtu.unwrap_or(default_mtu), &ty)?;
        check_default(tx, &id, is_default, external)?;
        let net = Network {
            id: id.clone(),
            project_id: project.clone(),
            name,
            admin_state_up,
            shared,
            external,
            mtu,
            port_security_enabled: port_security,
            network_type: ty,
            physical_network: phys,
            segmentation_id: seg,
            availability_zone_hints: az,
            is_default: is_default && external,
            rbac_shared: Vec::new(),
            rbac_external: Vec::new(),
            std: Std::new(description),
        };
        tx.insert(&net)?;
        Ok::<_, NetError>(net)
    })?;
    Ok(reply(
        StatusCode::CREATED,
        json!({ "network": net.render(Vec::new(), ctx.is_admin()) }),
    ))
}

const UPDATE_ATTRS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "shared",
    "router:external",
    "mtu",
    "port_security_enabled",
    "provider:network_type",
    "provider:physical_network",
    "provider:segmentation_id",
    "qos_policy_id",
    "dns_domain",
    "is_default",
];

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "update_network")?;
    let m = resource_body(body, "network", UPDATE_ATTRS)?;
    admin_only(&ctx, &m, "update_network")?;
    let net = state.store.write(|tx| {
        let mut n = find_in(tx, &ctx, &id)?;
        if !owns(&ctx, &n.project_id) {
            return Err(NetError::policy("update_network"));
        }
        if let Some(v) = opt_str(&m, "name")? {
            n.name = v;
        }
        if let Some(v) = opt_str(&m, "description")? {
            n.std.description = v;
        }
        if let Some(v) = opt_bool(&m, "admin_state_up")? {
            n.admin_state_up = v;
        }
        if let Some(v) = opt_bool(&m, "port_security_enabled")? {
            n.port_security_enabled = v;
        }
        if let Some(v) = opt_bool(&m, "router:external")? {
            if n.external && !v {
                let ports = tx.list::<Port>(&SQ::parent(&n.id))?;
                if ports.iter().any(|p| {
                    p.device_owner == super::model::OWNER_GATEWAY
                        || p.device_owner == super::model::OWNER_FLOATINGIP
                }) {
                    return Err(NetError::conflict(
                        "ExternalNetworkInUse",
                        format!("External network {} cannot be updated to be made non-external, since it has existing gateway ports.", n.id),
                    ));
                }
            }
            n.external = v;
        }
        if let Some(v) = opt_bool(&m, "shared")? {
            if n.shared && !v {
                let ports = tx.list::<Port>(&SQ::parent(&n.id))?;
                if ports.iter().any(|p| p.project_id != n.project_id && !p.network_owned()) {
                    return Err(NetError::conflict(
                        "InvalidSharedSetting",
                        format!("Unable to reconfigure sharing settings for network {}. Multiple tenants are using it.", n.id),
                    ));
                }
            }
            n.shared = v;
        }
        if m.keys().any(|k| k.starts_with("provider:")) {
            let (ty, phys, seg) = segment(tx, &m, &n.id)?;
            n.network_type = ty;
            n.physical_network = phys;
            n.segmentation_id = seg;
        }
        if let Some(v) = opt_int(&m, "mtu")? {
            n.mtu = check_mtu(v, &n.network_type)?;
        }
        if let Some(v) = opt_bool(&m, "is_default")? {
            check_default(tx, &n.id, v, n.external)?;
            n.is_default = v && n.external;
        }
        if !n.external {
            n.is_default = false;
        }
        n.std.touch();
        tx.update(&n)?;
        Ok(n)
    })?;
    let v = render(&state, &ctx, &net)?;
    Ok(reply(StatusCode::OK, json!({ "network": v })))
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    require_member(&ctx, "delete_network")?;
    state.store.write(|tx| {
        let n = find_in(tx, &ctx, &id)?;
        if !owns(&ctx, &n.project_id) {
            return Err(NetError::policy("delete_network"));
        }
        delete_in(tx, &n)
    })?;
    Ok(super::no_content())
}

/// Deletes network `n` with its subnets, addresses and RBAC policies
/// inside `tx`; refuses while ports other than its own are on it.
pub(super) fn delete_in(tx: &Tx, n: &Network) -> NetResult<()> {
    let id = &n.id;
    // As in Neutron, floating IPs of the network that map to nothing go
    // with it; an associated one keeps it (its port is in use).
    for f in tx.list::<FloatingIp>(&SQ::all())? {
        if f.floating_network_id == *id && f.port_id.is_none() {
            super::ipam::drop_port(tx, &f.floating_port_id)?;
            tx.delete::<FloatingIp>(&f.id)?;
        }
    }
    let ports = tx.list::<Port>(&SQ::parent(&n.id))?;
    if ports.iter().any(|p| !p.network_owned()) {
        return Err(NetError::conflict(
            "NetworkInUse",
            format!(
                "Unable to complete operation on network {id}. There are one or more ports still in use on the network."
            ),
        ));
    }
    for p in &ports {
        tx.delete::<Port>(&p.id)?;
    }
    for s in tx.list::<Subnet>(&SQ::parent(&n.id))? {
        for a in tx.list::<IpAllocation>(&SQ::parent(&s.id))? {
            tx.delete::<IpAllocation>(&a.id)?;
        }
        tx.delete::<Subnet>(&s.id)?;
    }
    for r in tx.list::<RbacPolicy>(&SQ::parent(&n.id))? {
        tx.delete::<RbacPolicy>(&r.id)?;
    }
    tx.delete::<Network>(&n.id)?;
    Ok(())
}

// ---- network-ip-availability ------------------------------------------------

fn availability_of(state: &AppState, n: &Network) -> NetResult<Value> {
    let mut total: u128 = 0;
    let mut used_all: usize = 0;
    let mut subs = Vec::new();
    for s in state.store.list::<Subnet>(&SQ::parent(&n.id))? {
        let t = ipam::pool_size(&s);
        let u = state.store.list::<IpAllocation>(&SQ::parent(&s.id))?.len();
        total += t;
        used_all += u;
        subs.push(
            json!({"subnet_id": s.id, "subnet_name": s.name, "cidr": s.cidr,
                         "ip_version": s.ip_version, "total_ips": big(t), "used_ips": u}),
        );
    }
    Ok(json!({
        "network_id": n.id, "network_name": n.name,
        "project_id": n.project_id, "tenant_id": n.project_id,
        "total_ips": big(total), "used_ips": used_all,
        "subnet_ip_availability": subs,
    }))
}

/// A count that may pass u64 (an IPv6 /64 has 2^64 addresses).
fn big(n: u128) -> Value {
    match u64::try_from(n) {
        Ok(v) => json!(v),
        Err(_) => json!(n as f64),
    }
}

async fn availabilities(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    if !ctx.is_admin() {
        return Err(NetError::policy("get_network_ip_availability"));
    }
    let mut items = Vec::new();
    for n in state.store.list::<Network>(&SQ::all())? {
        items.push(availability_of(&state, &n)?);
    }
    let q: Vec<(String, String)> = q;
    list_answer(
        &state,
        "network_ip_availabilities",
        "network-ip-availabilities",
        items,
        &q,
    )
}

async fn availability(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    if !ctx.is_admin() {
        return Err(NetError::policy("get_network_ip_availability"));
    }
    let n = state
        .store
        .get::<Network>(&id)?
        .ok_or_else(|| not_found(&id))?;
    Ok(reply(
        StatusCode::OK,
        json!({ "network_ip_availability": availability_of(&state, &n)? }),
    ))
}
