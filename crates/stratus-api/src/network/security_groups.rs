//! Security groups and their rules, with a `default` group per project
//! made on first use (listing groups, creating a port) holding Neutron's
//! default rules.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Query as SQ, Tx};

use super::ipam::{Cidr, Ip};
use super::model::{Port, SecurityGroup, SecurityGroupRule, Std};
use super::{
    NetError, NetResult, fields_of, list_answer, new_id, opt_bool, opt_int, opt_str, owns, reply,
    require_member, require_reader, resource_body, select_fields, target_project,
};
use crate::AppState;
use crate::identity::policy::Ctx;
use crate::json::Json;

/// Protocol names Neutron accepts, with their numbers.
const PROTOCOLS: &[(&str, u8)] = &[
    ("ah", 51),
    ("dccp", 33),
    ("egp", 8),
    ("esp", 50),
    ("gre", 47),
    ("hopopt", 0),
    ("icmp", 1),
    ("igmp", 2),
    ("ipip", 4),
    ("ipv6-encap", 41),
    ("ipv6-frag", 44),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("ipv6-nonxt", 59),
    ("ipv6-opts", 60),
    ("ipv6-route", 43),
    ("ospf", 89),
    ("pgm", 113),
    ("rsvp", 46),
    ("sctp", 132),
    ("tcp", 6),
    ("udp", 17),
    ("udplite", 136),
    ("vrrp", 112),
];
/// Protocols whose rules take a port range.
const PORT_PROTOCOLS: &[u8] = &[6, 17, 132, 33, 136];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/security-groups", get(list).post(create))
        .route(
            "/security-groups/{id}",
            get(show).put(update).delete(delete),
        )
        .route("/security-group-rules", get(list_rules).post(create_rule))
        .route(
            "/security-group-rules/{id}",
            get(show_rule).delete(delete_rule),
        )
}

pub fn not_found(id: &str) -> NetError {
    NetError::not_found(
        "SecurityGroupNotFound",
        format!("Security group {id} does not exist"),
    )
}

fn rule_not_found(id: &str) -> NetError {
    NetError::not_found(
        "SecurityGroupRuleNotFound",
        format!("Security group rule {id} does not exist"),
    )
}

fn rule(
    group: &SecurityGroup,
    direction: &str,
    ethertype: &str,
    remote_group: Option<String>,
) -> SecurityGroupRule {
    SecurityGroupRule {
        id: new_id(),
        security_group_id: group.id.clone(),
        project_id: group.project_id.clone(),
        direction: direction.into(),
        ethertype: ethertype.into(),
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_ip_prefix_given: None,
        remote_group_id: remote_group,
        std: Std::new(String::new()),
    }
}

/// The project's `default` group, created with Neutron's default rules
/// (egress anywhere, ingress from the group itself, both families) when
/// it does not exist yet. Runs in `tx`.
pub fn ensure_default(tx: &Tx, project: &str) -> NetResult<SecurityGroup> {
    if let Some(g) = tx
        .list::<SecurityGroup>(&SQ::owner(project))?
        .into_iter()
        .find(|g| g.is_default)
    {
        return Ok(g);
    }
    let g = SecurityGroup {
        id: new_id(),
        project_id: project.to_string(),
        name: "default".into(),
        stateful: true,
        is_default: true,
        std: Std::new("Default security group".into()),
    };
    tx.insert(&g)?;
    for eth in ["IPv4", "IPv6"] {
        tx.insert(&rule(&g, "egress", eth, None))?;
        tx.insert(&rule(&g, "ingress", eth, Some(g.id.clone())))?;
    }
    Ok(g)
}

/// Makes the caller's default group if it has none (a write only then).
fn ensure_default_for(state: &AppState, ctx: &Ctx) -> NetResult<()> {
    let Some(p) = ctx.project_id() else {
        return Ok(());
    };
    let has = state
        .store
        .list::<SecurityGroup>(&SQ::owner(p))?
        .iter()
        .any(|g| g.is_default);
    if !has {
        state.store.write(|tx| ensure_default(tx, p))?;
    }
    Ok(())
}

fn find_in(tx: &Tx, ctx: &Ctx, id: &str) -> NetResult<SecurityGroup> {
    match tx.get::<SecurityGroup>(id)? {
        Some(g) if owns(ctx, &g.project_id) => Ok(g),
        _ => Err(not_found(id)),
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_security_group")?;
    ensure_default_for(&state, &ctx)?;
    let rules = state.store.list::<SecurityGroupRule>(&SQ::all())?;
    let items: Vec<Value> = state
        .store
        .list::<SecurityGroup>(&SQ::all())?
        .iter()
        .filter(|g| owns(&ctx, &g.project_id))
        .map(|g| {
            let mine: Vec<SecurityGroupRule> = rules
                .iter()
                .filter(|r| r.security_group_id == g.id)
                .cloned()
                .collect();
            g.render(&mine)
        })
        .collect();
    list_answer(&state, "security_groups", "security-groups", items, &q)
}

fn render_group(state: &AppState, g: &SecurityGroup) -> NetResult<Value> {
    Ok(g.render(&state.store.list::<SecurityGroupRule>(&SQ::parent(&g.id))?))
}

pub(super) async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_security_group")?;
    let g = match state.store.get::<SecurityGroup>(&id)? {
        Some(g) if owns(&ctx, &g.project_id) => g,
        _ => return Err(not_found(&id)),
    };
    Ok(reply(
        StatusCode::OK,
        json!({ "security_group": select_fields(render_group(&state, &g)?, &fields_of(&q)) }),
    ))
}

pub(super) async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "create_security_group")?;
    let m = resource_body(
        body,
        "security_group",
        &["name", "description", "stateful", "project_id", "tenant_id"],
    )?;
    let project = target_project(&ctx, &m, "create_security_group")?;
    let name = opt_str(&m, "name")?.unwrap_or_default();
    let description = opt_str(&m, "description")?.unwrap_or_default();
    let stateful = opt_bool(&m, "stateful")?.unwrap_or(true);
    let g = state.store.write(|tx| {
        ensure_default(tx, &project)?;
        if name == "default" {
            return Err(NetError::conflict(
                "SecurityGroupDefaultAlreadyExists",
                "Default security group already exists.",
            ));
        }
        super::quotas::check(tx, &project, "security_group", 1)?;
        let g = SecurityGroup {
            id: new_id(),
            project_id: project.clone(),
            name,
            stateful,
            is_default: false,
            std: Std::new(description),
        };
        tx.insert(&g)?;
        for eth in ["IPv4", "IPv6"] {
            tx.insert(&rule(&g, "egress", eth, None))?;
        }
        Ok::<_, NetError>(g)
    })?;
    Ok(reply(
        StatusCode::CREATED,
        json!({ "security_group": render_group(&state, &g)? }),
    ))
}

pub(super) async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "update_security_group")?;
    let m = resource_body(body, "security_group", &["name", "description", "stateful"])?;
    let g = state.store.write(|tx| {
        let mut g = find_in(tx, &ctx, &id)?;
        if let Some(n) = opt_str(&m, "name")? {
            if g.is_default && n != "default" {
                return Err(NetError::conflict(
                    "SecurityGroupCannotUpdateDefault",
                    "Updating default security group not allowed.",
                ));
            }
            if !g.is_default && n == "default" {
                return Err(NetError::conflict(
                    "SecurityGroupDefaultAlreadyExists",
                    "Default security group already exists.",
                ));
            }
            g.name = n;
        }
        if let Some(d) = opt_str(&m, "description")? {
            g.std.description = d;
        }
        if let Some(s) = opt_bool(&m, "stateful")? {
            g.stateful = s;
        }
        g.std.touch();
        tx.update(&g)?;
        Ok::<_, NetError>(g)
    })?;
    Ok(reply(
        StatusCode::OK,
        json!({ "security_group": render_group(&state, &g)? }),
    ))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    require_member(&ctx, "delete_security_group")?;
    state.store.write(|tx| {
        let g = find_in(tx, &ctx, &id)?;
        if g.is_default && !ctx.is_admin() {
            return Err(NetError::conflict(
                "SecurityGroupCannotRemoveDefault",
                "Insufficient rights for removing default security group.",
            ));
        }
        let ports = tx.list::<Port>(&SQ::all())?;
        if ports.iter().any(|p| p.security_groups.contains(&g.id)) {
            return Err(NetError::conflict(
                "SecurityGroupInUse",
                format!("Security Group {id} in use."),
            ));
        }
        for r in tx.list::<SecurityGroupRule>(&SQ::all())? {
            if r.security_group_id == g.id || r.remote_group_id.as_deref() == Some(&g.id) {
                tx.delete::<SecurityGroupRule>(&r.id)?;
            }
        }
        tx.delete::<SecurityGroup>(&g.id)?;
        Ok::<_, NetError>(())
    })?;
    Ok(super::no_content())
}

// ---- rules ------------------------------------------------------------------

pub(super) async fn list_rules(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_security_group_rule")?;
    ensure_default_for(&state, &ctx)?;
    let items: Vec<Value> = state
        .store
        .list::<SecurityGroupRule>(&SQ::all())?
        .iter()
        .filter(|r| owns(&ctx, &r.project_id))
        .map(SecurityGroupRule::render)
        .collect();
    list_answer(
        &state,
        "security_group_rules",
        "security-group-rules",
        items,
        &q,
    )
}

async fn show_rule(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_security_group_rule")?;
    let r = match state.store.get::<SecurityGroupRule>(&id)? {
        Some(r) if owns(&ctx, &r.project_id) => r,
        _ => return Err(rule_not_found(&id)),
    };
    Ok(reply(
        StatusCode::OK,
        json!({ "security_group_rule": select_fields(r.render(), &fields_of(&q)) }),
    ))
}

/// The protocol's number, for names, numbers and `any`.
fn protocol_number(p: &str) -> NetResult<Option<u8>> {
    if p.eq_ignore_ascii_case("any") {
        return Ok(None);
    }
    if let Some((_, n)) = PROTOCOLS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(p))
    {
        return Ok(Some(*n));
    }
    match p.parse::<u16>() {
        Ok(n) if n <= 255 => Ok(Some(n as u8)),
        _ => Err(NetError::bad(
            "SecurityGroupRuleInvalidProtocol",
            format!(
                "Security group rule protocol {p} not supported. Only protocol values [None, {}] and integer representations [0 to 255] are supported.",
                PROTOCOLS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

const RULE_ATTRS: &[&str] = &[
    "security_group_id",
    "direction",
    "ethertype",
    "protocol",
    "port_range_min",
    "port_range_max",
    "remote_ip_prefix",
    "remote_group_id",
    "remote_address_group_id",
    "description",
    "project_id",
    "tenant_id",
];

/// Two rules are the same when they match the same traffic.
fn same_rule(a: &SecurityGroupRule, b: &SecurityGroupRule) -> bool {
    let proto = |r: &SecurityGroupRule| {
        r.protocol
            .as_deref()
            .and_then(|p| protocol_number(p).ok().flatten())
    };
    let prefix = |r: &SecurityGroupRule| {
        r.remote_ip_prefix
            .clone()
            .filter(|p| p != "0.0.0.0/0" && p != "::/0")
    };
    a.direction == b.direction
        && a.ethertype == b.ethertype
        && proto(a) == proto(b)
        && a.port_range_min == b.port_range_min
        && a.port_range_max == b.port_range_max
        && prefix(a) == prefix(b)
        && a.remote_group_id == b.remote_group_id
}

pub(super) async fn create_rule(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "create_security_group_rule")?;
    let m = resource_body(body, "security_group_rule", RULE_ATTRS)?;
    let sg_id = opt_str(&m, "security_group_id")?.ok_or_else(|| {
        NetError::bad_request(
            "Failed to parse request. Required attribute 'security_group_id' not specified",
        )
    })?;
    let direction = opt_str(&m, "direction")?.ok_or_else(|| {
        NetError::bad_request(
            "Failed to parse request. Required attribute 'direction' not specified",
        )
    })?;
    if direction != "ingress" && direction != "egress" {
        return Err(NetError::bad_request(format!(
            "Invalid input for direction. Reason: '{direction}' is not in ['ingress', 'egress']."
        )));
    }
    let ethertype = match opt_str(&m, "ethertype")? {
        None => "IPv4".to_string(),
        Some(e) if e.eq_ignore_ascii_case("ipv4") => "IPv4".into(),
        Some(e) if e.eq_ignore_ascii_case("ipv6") => "IPv6".into(),
        Some(e) => {
            return Err(NetError::bad(
                "SecurityGroupInvalidEthertype",
                format!("Invalid input for ethertype. Reason: '{e}' is not in ['IPv4', 'IPv6']."),
            ));
        }
    };
    // A name, or a number given as a string or as a JSON number.
    let protocol = match m.get("protocol") {
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => opt_str(&m, "protocol")?,
    };
    let number = match &protocol {
        Some(p) => protocol_number(p)?,
        None => None,
    };
    let protocol = protocol
        .filter(|p| !p.eq_ignore_ascii_case("any"))
        .map(|p| p.to_ascii_lowercase());
    let min = opt_int(&m, "port_range_min")?;
    let max = opt_int(&m, "port_range_max")?;
    if (min.is_some() || max.is_some()) && number.is_none() {
        return Err(NetError::bad(
            "SecurityGroupProtocolRequiredWithPorts",
            "Must also specify protocol if port range is given.",
        ));
    }
    match number {
        Some(n) if PORT_PROTOCOLS.contains(&n) => {
            for p in [min, max].into_iter().flatten() {
                if !(1..=65535).contains(&p) {
                    return Err(NetError::bad(
                        "SecurityGroupInvalidPortValue",
                        format!("Invalid value for port {p}."),
                    ));
                }
            }
            // Both ends or neither, as in Neutron (a single port is
            // min == max).
            let ordered = match (min, max) {
                (Some(a), Some(b)) => a <= b,
                (None, None) => true,
                _ => false,
            };
            if !ordered {
                return Err(NetError::bad(
                    "SecurityGroupInvalidPortRange",
                    "For TCP/UDP protocols, port_range_min must be <= port_range_max",
                ));
            }
        }
        Some(1) | Some(58) => {
            for (p, what) in [(min, "type"), (max, "code")] {
                if let Some(v) = p
                    && !(0..=255).contains(&v)
                {
                    return Err(NetError::bad(
                        "SecurityGroupInvalidIcmpValue",
                        format!(
                            "Invalid value for ICMP {what} (port_range_min/port_range_max) {v}."
                        ),
                    ));
                }
            }
            if min.is_none() && max.is_some() {
                return Err(NetError::bad(
                    "SecurityGroupMissingIcmpType",
                    format!(
                        "ICMP code (port-range-max) {} is provided but ICMP type (port-range-min) is missing.",
                        max.unwrap_or_default()
                    ),
                ));
            }
        }
        Some(_) if min.is_some() || max.is_some() => {
            return Err(NetError::bad(
                "InvalidProtocolForPortRange",
                format!(
                    "Invalid protocol {} for port range, only supported for TCP, UDP, UDPLITE, SCTP and DCCP.",
                    protocol.clone().unwrap_or_default()
                ),
            ));
        }
        _ => {}
    }
    let prefix = match opt_str(&m, "remote_ip_prefix")? {
        None => None,
        Some(p) => {
            let (c, _) = Cidr::parse_loose(&p).ok_or_else(|| {
                NetError::bad_request(format!(
                    "Invalid input for remote_ip_prefix. Reason: '{p}' is not a valid IP subnet."
                ))
            })?;
            let fam = if c.base.v6 { "IPv6" } else { "IPv4" };
            if fam != ethertype {
                return Err(NetError::bad(
                    "SecurityGroupRuleParameterConflict",
                    format!("Conflicting value ethertype {ethertype} for CIDR {p}"),
                ));
            }
            // As given (host bits and all) besides the normalised prefix.
            let given = p
                .split_once('/')
                .and_then(|(a, _)| Ip::parse(a))
                .map(|ip| format!("{ip}/{}", c.prefix))
                .filter(|g| *g != c.to_string());
            Some((c.to_string(), given))
        }
    };
    let (prefix, prefix_given) = match prefix {
        Some((p, g)) => (Some(p), g),
        None => (None, None),
    };
    let remote_group = opt_str(&m, "remote_group_id")?;
    if prefix.is_some() && remote_group.is_some() {
        return Err(NetError::bad(
            "SecurityGroupRemoteGroupAndRemoteIpPrefix",
            "Only remote_ip_prefix or remote_group_id may be provided.",
        ));
    }
    if m.get("remote_address_group_id")
        .is_some_and(|v| !v.is_null())
    {
        return Err(NetError::bad_request(
            "remote_address_group_id is not supported by this cloud",
        ));
    }
    let description = opt_str(&m, "description")?.unwrap_or_default();
    let r = state.store.write(|tx| {
        let g = find_in(tx, &ctx, &sg_id)?;
        if let Some(rg) = &remote_group
            && tx
                .get::<SecurityGroup>(rg)?
                .is_none_or(|o| !owns(&ctx, &o.project_id))
        {
            return Err(not_found(rg));
        }
        let r = SecurityGroupRule {
            id: new_id(),
            security_group_id: g.id.clone(),
            project_id: g.project_id.clone(),
            direction: direction.clone(),
            ethertype: ethertype.clone(),
            protocol: protocol.clone(),
            port_range_min: min.map(|v| v as u32),
            port_range_max: max.map(|v| v as u32),
            remote_ip_prefix: prefix.clone(),
            remote_ip_prefix_given: prefix_given.clone(),
            remote_group_id: remote_group.clone(),
            std: Std::new(description.clone()),
        };
        if let Some(dup) = tx
            .list::<SecurityGroupRule>(&SQ::parent(&g.id))?
            .iter()
            .find(|o| same_rule(o, &r))
        {
            return Err(NetError::conflict(
                "SecurityGroupRuleExists",
                format!("Security group rule already exists. Rule id is {}.", dup.id),
            ));
        }
        super::quotas::check(tx, &g.project_id, "security_group_rule", 1)?;
        tx.insert(&r)?;
        Ok::<_, NetError>(r)
    })?;
    Ok(reply(
        StatusCode::CREATED,
        json!({ "security_group_rule": r.render() }),
    ))
}

pub(super) async fn delete_rule(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    require_member(&ctx, "delete_security_group_rule")?;
    state
        .store
        .write(|tx| match tx.get::<SecurityGroupRule>(&id)? {
            Some(r) if owns(&ctx, &r.project_id) => {
                tx.delete::<SecurityGroupRule>(&r.id)?;
                Ok(())
            }
            _ => Err(rule_not_found(&id)),
        })?;
    Ok(super::no_content())
}
