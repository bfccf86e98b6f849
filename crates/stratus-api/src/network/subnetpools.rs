//! Subnet pools (`/v2.0/subnetpools`, the `subnet_allocation` and
//! `default-subnetpools` extensions) and address scopes
//! (`/v2.0/address-scopes`).
//!
//! A pool hands out prefixes: a subnet created with `subnetpool_id` (or
//! `use_default_subnetpool`) and no `cidr` gets the lowest free block of
//! `prefixlen` (or the pool's `default_prefixlen`) inside the pool's
//! prefixes. What a pool has handed out is the subnets that name it, read
//! inside the subnet's own write transaction, so two concurrent creates
//! never get the same prefix, and deleting the subnet gives it back.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Map, Value, json};
use stratus_store::{Query as SQ, Tx};

use super::ipam::{Cidr, Ip};
use super::model::{AddressScope, Std, Subnet, SubnetPool};
use super::{
    NetError, NetResult, fields_of, list_answer, new_id, opt_bool, opt_int, opt_str, owns, reply,
    require_member, require_reader, resource_body, select_fields, target_project,
};
use crate::AppState;
use crate::identity::policy::Ctx;
use crate::json::Json;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/subnetpools", get(list).post(create))
        .route("/subnetpools/{id}", get(show).put(update).delete(delete))
        .route("/address-scopes", get(scope_list).post(scope_create))
        .route(
            "/address-scopes/{id}",
            get(scope_show).put(scope_update).delete(scope_delete),
        )
}

pub fn not_found(id: &str) -> NetError {
    NetError::not_found(
        "SubnetPoolNotFound",
        format!("Subnet pool {id} could not be found."),
    )
}

fn scope_not_found(id: &str) -> NetError {
    NetError::not_found(
        "AddressScopeNotFound",
        format!("Address scope {id} could not be found"),
    )
}

/// Whether the caller may see (and allocate from) pool `p`.
fn visible(ctx: &Ctx, p: &SubnetPool) -> bool {
    p.shared || owns(ctx, &p.project_id)
}

fn bits(version: u8) -> u8 {
    if version == 6 { 128 } else { 32 }
}

// ---- carving subnets --------------------------------------------------------

/// What a subnet create asks of a pool.
pub(super) struct PoolAsk {
    /// The pool, or `None` for the default pool of `ip_version`.
    pub pool: Option<String>,
    pub prefixlen: Option<i64>,
    pub ip_version: Option<i64>,
}

/// The default pool of IP version `v`, if any.
pub(super) fn default_pool(tx: &Tx, v: u8) -> NetResult<Option<SubnetPool>> {
    Ok(tx
        .list::<SubnetPool>(&SQ::all())?
        .into_iter()
        .find(|p| p.is_default && p.ip_version == v))
}

/// Reads `subnetpool_id` / `use_default_subnetpool` / `prefixlen` of a
/// subnet create body; `None` when it asks for no pool.
pub(super) fn ask(m: &Map<String, Value>) -> NetResult<Option<PoolAsk>> {
    let pool = opt_str(m, "subnetpool_id")?;
    let use_default = opt_bool(m, "use_default_subnetpool")?.unwrap_or(false);
    if pool.is_some() && use_default {
        return Err(NetError::bad_request(
            "Bad subnets request: subnetpool_id and use_default_subnetpool cannot both be specified.",
        ));
    }
    if pool.is_none() && !use_default {
        if m.get("prefixlen").is_some_and(|v| !v.is_null()) && m.get("cidr").is_none() {
            return Err(NetError::bad_request(
                "Bad subnets request: a subnetpool must be specified in the absence of a cidr.",
            ));
        }
        return Ok(None);
    }
    Ok(Some(PoolAsk {
        pool,
        prefixlen: opt_int(m, "prefixlen")?,
        ip_version: opt_int(m, "ip_version")?,
    }))
}

fn alloc_error(reason: impl std::fmt::Display) -> NetError {
    // Neutron answers a plain NeutronException (a 500) here; the request
    // is what cannot be met, so this says 409.
    NetError::conflict(
        "SubnetAllocationError",
        format!("Failed to allocate subnet: {reason}."),
    )
}

/// The pool a subnet create asked for, checked against the caller.
fn pool_for(tx: &Tx, ctx: Option<&Ctx>, ask: &PoolAsk) -> NetResult<SubnetPool> {
    match &ask.pool {
        Some(id) => match tx.get::<SubnetPool>(id)? {
            Some(p) if ctx.is_none_or(|c| visible(c, &p)) => Ok(p),
            _ => Err(not_found(id)),
        },
        None => {
            let v = ask.ip_version.unwrap_or(4);
            tx.list::<SubnetPool>(&SQ::all())?
                .into_iter()
                // The default pool serves every project.
                .find(|p| p.is_default && i64::from(p.ip_version) == v)
                .ok_or_else(|| {
                    NetError::bad(
                        "BadRequest",
                        format!("Bad subnets request: No default subnetpool found for IPv{v}."),
                    )
                })
        }
    }
}

/// The prefix a new subnet of `project` gets from the pool `ask` names:
/// `cidr` if given and free in the pool, else the lowest free block.
/// Runs in the subnet's write transaction. Returns the prefix and the
/// pool's id. `ctx` is the caller (None: the service itself).
pub(super) fn carve(
    tx: &Tx,
    ctx: Option<&Ctx>,
    ask: &PoolAsk,
    project: &str,
    cidr: Option<Cidr>,
) -> NetResult<(Cidr, String)> {
    let pool = pool_for(tx, ctx, ask)?;
    if let Some(v) = ask.ip_version
        && v != i64::from(pool.ip_version)
    {
        return Err(NetError::bad(
            "BadRequest",
            format!(
                "Bad subnets request: Cannot allocate IPv{v} subnet from IPv{} subnet pool.",
                pool.ip_version
            ),
        ));
    }
    let prefixlen = match (ask.prefixlen, cidr) {
        (Some(l), _) => l,
        (None, Some(c)) => i64::from(c.prefix),
        (None, None) => i64::from(pool.default_prefixlen),
    };
    if prefixlen > i64::from(pool.max_prefixlen) {
        return Err(NetError::bad(
            "MaxPrefixSubnetAllocationError",
            format!(
                "Unable to allocate subnet with prefix length {prefixlen}, maximum allowed prefix is {}.",
                pool.max_prefixlen
            ),
        ));
    }
    if prefixlen < i64::from(pool.min_prefixlen) {
        return Err(NetError::bad(
            "MinPrefixSubnetAllocationError",
            format!(
                "Unable to allocate subnet with prefix length {prefixlen}, minimum allowed prefix is {}.",
                pool.min_prefixlen
            ),
        ));
    }
    let prefixlen = prefixlen as u8;
    let allocated: Vec<Subnet> = tx
        .list::<Subnet>(&SQ::all())?
        .into_iter()
        .filter(|s| s.subnetpool_id.as_deref() == Some(pool.id.as_str()))
        .collect();
    if let Some(q) = pool.default_quota {
        let unit: i32 = if pool.ip_version == 6 { 64 } else { 32 };
        let size = |len: u8| -> f64 { 2f64.powi(unit - i32::from(len)) };
        let used: f64 = allocated
            .iter()
            .filter(|s| s.project_id == project)
            .filter_map(|s| Cidr::parse_loose(&s.cidr))
            .map(|(c, _)| size(c.prefix))
            .sum();
        if used + size(prefixlen) > q as f64 {
            return Err(NetError::conflict(
                "SubnetPoolQuotaExceeded",
                "Per-project subnet pool prefix quota exceeded.",
            ));
        }
    }
    let mut taken: Vec<Cidr> = allocated
        .iter()
        .filter_map(|s| Cidr::parse_loose(&s.cidr).map(|(c, _)| c))
        .collect();
    taken.sort_by_key(|c| c.first().n);
    let prefixes = parse_prefixes(&pool.prefixes)?.1;
    if let Some(c) = cidr {
        let inside = prefixes
            .iter()
            .any(|p| p.prefix <= c.prefix && p.contains(c.first()));
        if !inside || taken.iter().any(|t| t.overlaps(&c)) {
            return Err(alloc_error(
                "Cannot allocate requested subnet from the available set of prefixes",
            ));
        }
        return Ok((c, pool.id));
    }
    for p in prefixes.iter().filter(|p| p.prefix <= prefixlen) {
        if let Some(c) = lowest_free_block(p, prefixlen, &taken) {
            return Ok((c, pool.id));
        }
    }
    Err(alloc_error(format!(
        "Insufficient prefix space to allocate subnet size /{prefixlen}"
    )))
}

/// The lowest block of length `len` inside `within` that overlaps none
/// of `taken` (sorted by first address). Walks the taken blocks, never
/// the address space.
fn lowest_free_block(within: &Cidr, len: u8, taken: &[Cidr]) -> Option<Cidr> {
    let v6 = within.base.v6;
    let host_bits = u32::from(bits(if v6 { 6 } else { 4 }) - len);
    let size: u128 = 1u128.checked_shl(host_bits).unwrap_or(0);
    let mut cand = within.first().n;
    loop {
        let block = Cidr {
            base: Ip { v6, n: cand },
            prefix: len,
        };
        if !within.contains(block.last()) {
            return None;
        }
        match taken.iter().find(|t| t.overlaps(&block)) {
            None => return Some(block),
            Some(t) => {
                if size == 0 {
                    return None;
                }
                let next = t.last().n.checked_add(1)?;
                // Up to the next block boundary.
                cand = next.checked_add(size - 1)? / size * size;
                if cand < within.first().n {
                    return None;
                }
            }
        }
    }
}

// ---- pools ------------------------------------------------------------------

/// Parses, checks and compacts a prefix list: (version, prefixes with
/// those inside others dropped, sorted).
fn parse_prefixes(list: &[String]) -> NetResult<(u8, Vec<Cidr>)> {
    if list.is_empty() {
        return Err(NetError::bad(
            "EmptySubnetPoolPrefixList",
            "Empty subnet pool prefix list.",
        ));
    }
    let mut out: Vec<Cidr> = Vec::new();
    let mut version = None;
    for s in list {
        let (c, _) = Cidr::parse_loose(s)
            .filter(|_| s.contains('/'))
            .ok_or_else(|| {
                NetError::bad_request(format!(
                    "Invalid input for prefixes. Reason: '{s}' is not a valid IP subnet."
                ))
            })?;
        match version {
            None => version = Some(c.version()),
            Some(v) if v != c.version() => {
                return Err(NetError::bad(
                    "PrefixVersionMismatch",
                    "Cannot mix IPv4 and IPv6 prefixes in a subnet pool.",
                ));
            }
            _ => {}
        }
        out.push(c);
    }
    Ok((version.unwrap_or(4), compact(out)))
}

/// Drops prefixes inside others and merges adjacent halves into their
/// parent, as Neutron's `IPSet.compact()` does; sorted.
fn compact(mut list: Vec<Cidr>) -> Vec<Cidr> {
    loop {
        list.sort_by_key(|c| (c.first().n, c.prefix));
        let mut out: Vec<Cidr> = Vec::new();
        for c in &list {
            if !out
                .iter()
                .any(|k| k.prefix <= c.prefix && k.contains(c.first()))
            {
                out.push(*c);
            }
        }
        let mut merged = false;
        let mut i = 0;
        while i + 1 < out.len() {
            let (a, b) = (out[i], out[i + 1]);
            if a.prefix == b.prefix && a.prefix > 0 {
                let parent =
                    Cidr::parse_loose(&format!("{}/{}", a.base, a.prefix - 1)).map(|(p, _)| p);
                if let Some(p) = parent
                    && p.first() == a.first()
                    && p.last() == b.last()
                {
                    out[i] = p;
                    out.remove(i + 1);
                    merged = true;
                    continue;
                }
            }
            i += 1;
        }
        if !merged {
            return out;
        }
        list = out;
    }
}

fn prefix_list(v: &Value) -> NetResult<Vec<String>> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                NetError::bad_request("Invalid input for prefixes. Reason: not a list of strings.")
            }),
        Value::String(s) => Ok(vec![s.clone()]),
        _ => Err(NetError::bad_request(
            "Invalid input for prefixes. Reason: not a list.",
        )),
    }
}

fn bounds_error(kind: &str, len: i64, base_kind: &str, base: i64) -> NetError {
    NetError::bad(
        "IllegalSubnetPoolPrefixBounds",
        format!("Illegal prefix bounds: {kind}={len}, {base_kind}={base}."),
    )
}

fn check_bounds(version: u8, min: i64, max: i64, default: i64) -> NetResult<()> {
    if min < 0 {
        return Err(NetError::bad(
            "UnsupportedMinSubnetPoolPrefix",
            format!("Unsupported minimum subnet pool prefix {min} for IPv{version}."),
        ));
    }
    if min > max {
        return Err(bounds_error("min_prefixlen", min, "max_prefixlen", max));
    }
    let top = i64::from(bits(version));
    if max > top {
        return Err(bounds_error("max_prefixlen", max, "ip_version_max", top));
    }
    if default < min {
        return Err(bounds_error(
            "default_prefixlen",
            default,
            "min_prefixlen",
            min,
        ));
    }
    if default > max {
        return Err(bounds_error(
            "default_prefixlen",
            default,
            "max_prefixlen",
            max,
        ));
    }
    Ok(())
}

/// One default pool per IP version.
fn check_default(tx: &Tx, p: &SubnetPool) -> NetResult<()> {
    if p.is_default
        && tx
            .list::<SubnetPool>(&SQ::all())?
            .iter()
            .any(|o| o.is_default && o.ip_version == p.ip_version && o.id != p.id)
    {
        return Err(NetError::invalid(format!(
            "A default subnetpool for this IP family has already been set. Only one default may exist per IP family (IPv{})",
            p.ip_version
        )));
    }
    Ok(())
}

fn check_scope(tx: &Tx, ctx: &Ctx, p: &SubnetPool) -> NetResult<()> {
    let Some(sid) = &p.address_scope_id else {
        return Ok(());
    };
    let scope = match tx.get::<AddressScope>(sid)? {
        Some(s) if s.shared || owns(ctx, &s.project_id) => s,
        _ => {
            return Err(NetError::bad(
                "IllegalSubnetPoolAssociationToAddressScope",
                format!(
                    "Illegal subnetpool association: subnetpool {} cannot be associated with address scope {sid}.",
                    p.id
                ),
            ));
        }
    };
    if scope.ip_version != p.ip_version {
        return Err(NetError::bad(
            "IllegalSubnetPoolIpVersionAssociationToAddressScope",
            format!(
                "Illegal subnetpool association: subnetpool {} cannot associate with address scope {sid} because subnetpool ip_version is not {}.",
                p.id, scope.ip_version
            ),
        ));
    }
    // Pools of one scope must not share addresses.
    let mine = parse_prefixes(&p.prefixes)?.1;
    for other in tx.list::<SubnetPool>(&SQ::all())? {
        if other.id == p.id || other.address_scope_id.as_deref() != Some(sid) {
            continue;
        }
        let theirs = parse_prefixes(&other.prefixes)?.1;
        if mine.iter().any(|a| theirs.iter().any(|b| a.overlaps(b))) {
            return Err(NetError::conflict(
                "AddressScopePrefixConflict",
                "Failed to associate address scope: subnetpools within an address scope must have unique prefixes.",
            ));
        }
    }
    Ok(())
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_subnetpool")?;
    let items: Vec<Value> = state
        .store
        .list::<SubnetPool>(&SQ::all())?
        .iter()
        .filter(|p| visible(&ctx, p))
        .map(SubnetPool::render)
        .collect();
    list_answer(&state, "subnetpools", "subnetpools", items, &q)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_subnetpool")?;
    let p = match state.store.get::<SubnetPool>(&id)? {
        Some(p) if visible(&ctx, &p) => p,
        _ => return Err(not_found(&id)),
    };
    Ok(reply(
        StatusCode::OK,
        json!({ "subnetpool": select_fields(p.render(), &fields_of(&q)) }),
    ))
}

const CREATE_ATTRS: &[&str] = &[
    "name",
    "description",
    "prefixes",
    "default_prefixlen",
    "min_prefixlen",
    "max_prefixlen",
    "is_default",
    "shared",
    "address_scope_id",
    "default_quota",
    "project_id",
    "tenant_id",
];

fn admin_only(ctx: &Ctx, m: &Map<String, Value>, action: &str) -> NetResult<()> {
    for a in ["shared", "is_default"] {
        if !ctx.is_admin() && m.get(a).is_some_and(|v| v != &json!(false)) {
            return Err(NetError::policy(&format!("{action}:{a}")));
        }
    }
    Ok(())
}

fn opt_quota(m: &Map<String, Value>) -> NetResult<Option<Option<i64>>> {
    match m.get("default_quota") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(_) => match opt_int(m, "default_quota")? {
            Some(q) if q >= 0 => Ok(Some(Some(q))),
            _ => Err(NetError::bad_request(
                "Invalid input for default_quota. Reason: not an integer >= 0.",
            )),
        },
    }
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "create_subnetpool")?;
    let m = resource_body(body, "subnetpool", CREATE_ATTRS)?;
    admin_only(&ctx, &m, "create_subnetpool")?;
    let project = target_project(&ctx, &m, "create_subnetpool")?;
    let raw = prefix_list(m.get("prefixes").unwrap_or(&Value::Null))?;
    let (version, prefixes) = parse_prefixes(&raw)?;
    let min = opt_int(&m, "min_prefixlen")?.unwrap_or(if version == 6 { 64 } else { 8 });
    let max = opt_int(&m, "max_prefixlen")?.unwrap_or(i64::from(bits(version)));
    let default = opt_int(&m, "default_prefixlen")?.unwrap_or(min);
    check_bounds(version, min, max, default)?;
    let pool = SubnetPool {
        id: new_id(),
        project_id: project.clone(),
        name: opt_str(&m, "name")?.unwrap_or_default(),
        ip_version: version,
        prefixes: prefixes.iter().map(Cidr::to_string).collect(),
        default_prefixlen: default as u8,
        min_prefixlen: min as u8,
        max_prefixlen: max as u8,
        is_default: opt_bool(&m, "is_default")?.unwrap_or(false),
        shared: opt_bool(&m, "shared")?.unwrap_or(false),
        address_scope_id: opt_str(&m, "address_scope_id")?,
        default_quota: opt_quota(&m)?.flatten(),
        std: Std::new(opt_str(&m, "description")?.unwrap_or_default()),
    };
    state.store.write(|tx| {
        super::quotas::check(tx, &project, "subnetpool", 1)?;
        check_default(tx, &pool)?;
        check_scope(tx, &ctx, &pool)?;
        tx.insert(&pool)?;
        Ok::<_, NetError>(())
    })?;
    Ok(reply(
        StatusCode::CREATED,
        json!({ "subnetpool": pool.render() }),
    ))
}

const UPDATE_ATTRS: &[&str] = &[
    "name",
    "description",
    "prefixes",
    "default_prefixlen",
    "min_prefixlen",
    "max_prefixlen",
    "is_default",
    "address_scope_id",
    "default_quota",
];

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "update_subnetpool")?;
    let m = resource_body(body, "subnetpool", UPDATE_ATTRS)?;
    admin_only(&ctx, &m, "update_subnetpool")?;
    let pool = state.store.write(|tx| {
        let mut p = match tx.get::<SubnetPool>(&id)? {
            Some(p) if owns(&ctx, &p.project_id) => p,
            Some(p) if visible(&ctx, &p) => return Err(NetError::policy("update_subnetpool")),
            _ => return Err(not_found(&id)),
        };
        if let Some(v) = opt_str(&m, "name")? {
            p.name = v;
        }
        if let Some(v) = opt_str(&m, "description")? {
            p.std.description = v;
        }
        if let Some(v) = m.get("prefixes") {
            let (version, new) = parse_prefixes(&prefix_list(v)?)?;
            let old = parse_prefixes(&p.prefixes)?.1;
            if version != p.ip_version {
                return Err(NetError::bad(
                    "PrefixVersionMismatch",
                    "Cannot mix IPv4 and IPv6 prefixes in a subnet pool.",
                ));
            }
            let covered = old.iter().all(|o| {
                new.iter()
                    .any(|n| n.prefix <= o.prefix && n.contains(o.first()) && n.contains(o.last()))
            });
            if !covered {
                return Err(NetError::bad(
                    "IllegalSubnetPoolPrefixUpdate",
                    "Illegal update to prefixes: Existing prefixes must be a subset of the new prefixes.",
                ));
            }
            p.prefixes = new.iter().map(Cidr::to_string).collect();
        }
        let min = opt_int(&m, "min_prefixlen")?.unwrap_or(i64::from(p.min_prefixlen));
        let max = opt_int(&m, "max_prefixlen")?.unwrap_or(i64::from(p.max_prefixlen));
        let default = opt_int(&m, "default_prefixlen")?.unwrap_or(i64::from(p.default_prefixlen));
        check_bounds(p.ip_version, min, max, default)?;
        (p.min_prefixlen, p.max_prefixlen, p.default_prefixlen) = (min as u8, max as u8, default as u8);
        if let Some(v) = opt_bool(&m, "is_default")? {
            p.is_default = v;
        }
        if m.contains_key("address_scope_id") {
            p.address_scope_id = opt_str(&m, "address_scope_id")?;
        }
        if let Some(q) = opt_quota(&m)? {
            p.default_quota = q;
        }
        check_default(tx, &p)?;
        check_scope(tx, &ctx, &p)?;
        p.std.touch();
        tx.update(&p)?;
        Ok::<_, NetError>(p)
    })?;
    Ok(reply(
        StatusCode::OK,
        json!({ "subnetpool": pool.render() }),
    ))
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    require_member(&ctx, "delete_subnetpool")?;
    state.store.write(|tx| {
        let p = match tx.get::<SubnetPool>(&id)? {
            Some(p) if owns(&ctx, &p.project_id) => p,
            Some(p) if visible(&ctx, &p) => return Err(NetError::policy("delete_subnetpool")),
            _ => return Err(not_found(&id)),
        };
        if tx
            .list::<Subnet>(&SQ::all())?
            .iter()
            .any(|s| s.subnetpool_id.as_deref() == Some(p.id.as_str()))
        {
            return Err(NetError::bad(
                "SubnetPoolDeleteError",
                "Unable to delete subnet pool: Subnet pool has existing allocations.",
            ));
        }
        tx.delete::<SubnetPool>(&p.id)?;
        Ok::<_, NetError>(())
    })?;
    Ok(super::no_content())
}

// ---- address scopes ---------------------------------------------------------

fn scope_visible(ctx: &Ctx, s: &AddressScope) -> bool {
    s.shared || owns(ctx, &s.project_id)
}

async fn scope_list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_address_scope")?;
    let items: Vec<Value> = state
        .store
        .list::<AddressScope>(&SQ::all())?
        .iter()
        .filter(|s| scope_visible(&ctx, s))
        .map(AddressScope::render)
        .collect();
    list_answer(&state, "address_scopes", "address-scopes", items, &q)
}

async fn scope_show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_address_scope")?;
    let s = match state.store.get::<AddressScope>(&id)? {
        Some(s) if scope_visible(&ctx, &s) => s,
        _ => return Err(scope_not_found(&id)),
    };
    Ok(reply(
        StatusCode::OK,
        json!({ "address_scope": select_fields(s.render(), &fields_of(&q)) }),
    ))
}

async fn scope_create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "create_address_scope")?;
    let m = resource_body(
        body,
        "address_scope",
        &["name", "ip_version", "shared", "project_id", "tenant_id"],
    )?;
    if !ctx.is_admin() && m.get("shared").is_some_and(|v| v != &json!(false)) {
        return Err(NetError::policy("create_address_scope:shared"));
    }
    let project = target_project(&ctx, &m, "create_address_scope")?;
    let ip_version = match opt_int(&m, "ip_version")? {
        Some(v @ (4 | 6)) => v as u8,
        Some(v) => {
            return Err(NetError::bad_request(format!(
                "Invalid input for ip_version. Reason: {v} is not in [4, 6]."
            )));
        }
        None => {
            return Err(NetError::bad_request(
                "Failed to parse request. Required attribute 'ip_version' not specified",
            ));
        }
    };
    let s = AddressScope {
        id: new_id(),
        project_id: project,
        name: opt_str(&m, "name")?.unwrap_or_default(),
        ip_version,
        shared: opt_bool(&m, "shared")?.unwrap_or(false),
    };
    state.store.write(|tx| tx.insert(&s))?;
    Ok(reply(
        StatusCode::CREATED,
        json!({ "address_scope": s.render() }),
    ))
}

async fn scope_update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "update_address_scope")?;
    let m = resource_body(body, "address_scope", &["name", "shared"])?;
    if !ctx.is_admin() && m.contains_key("shared") {
        return Err(NetError::policy("update_address_scope:shared"));
    }
    let s = state.store.write(|tx| {
        let mut s = match tx.get::<AddressScope>(&id)? {
            Some(s) if owns(&ctx, &s.project_id) => s,
            _ => return Err(scope_not_found(&id)),
        };
        if let Some(v) = opt_str(&m, "name")? {
            s.name = v;
        }
        if let Some(v) = opt_bool(&m, "shared")? {
            s.shared = v;
        }
        tx.update(&s)?;
        Ok::<_, NetError>(s)
    })?;
    Ok(reply(
        StatusCode::OK,
        json!({ "address_scope": s.render() }),
    ))
}

async fn scope_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    require_member(&ctx, "delete_address_scope")?;
    state.store.write(|tx| {
        let s = match tx.get::<AddressScope>(&id)? {
            Some(s) if owns(&ctx, &s.project_id) => s,
            _ => return Err(scope_not_found(&id)),
        };
        if tx
            .list::<SubnetPool>(&SQ::all())?
            .iter()
            .any(|p| p.address_scope_id.as_deref() == Some(s.id.as_str()))
        {
            return Err(NetError::conflict(
                "AddressScopeInUse",
                format!("Unable to complete operation on address scope {}. There are one or more subnet pools in use on the address scope.", s.id),
            ));
        }
        tx.delete::<AddressScope>(&s.id)?;
        Ok::<_, NetError>(())
    })?;
    Ok(super::no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse_loose(s).unwrap().0
    }

    #[test]
    fn lowest_free_block_skips_taken_and_aligns() {
        let pool = c("10.10.0.0/16");
        assert_eq!(lowest_free_block(&pool, 24, &[]), Some(c("10.10.0.0/24")));
        let taken = vec![c("10.10.0.0/24"), c("10.10.1.0/26")];
        assert_eq!(
            lowest_free_block(&pool, 24, &taken),
            Some(c("10.10.2.0/24"))
        );
        assert_eq!(
            lowest_free_block(&pool, 26, &taken),
            Some(c("10.10.1.64/26"))
        );
        assert_eq!(lowest_free_block(&c("10.10.0.0/24"), 24, &taken), None);
        assert_eq!(
            lowest_free_block(&c("10.0.0.0/8"), 8, &[]),
            Some(c("10.0.0.0/8"))
        );
        let v6 = c("2001:db8::/48");
        assert_eq!(
            lowest_free_block(&v6, 64, &[c("2001:db8::/64")]),
            Some(c("2001:db8:0:1::/64"))
        );
    }

    #[test]
    fn prefixes_compact_and_refuse_mixing() {
        let (v, p) = parse_prefixes(&["10.0.0.0/8".into(), "10.1.0.0/16".into()]).unwrap();
        assert_eq!(v, 4);
        assert_eq!(p, vec![c("10.0.0.0/8")]);
        let (_, p) = parse_prefixes(&[
            "10.10.0.0/16".into(),
            "10.11.0.0/16".into(),
            "10.8.0.0/15".into(),
        ])
        .unwrap();
        assert_eq!(p, vec![c("10.8.0.0/14")]);
        let (_, p) = parse_prefixes(&["10.11.0.0/16".into(), "10.12.0.0/16".into()]).unwrap();
        assert_eq!(p, vec![c("10.11.0.0/16"), c("10.12.0.0/16")]);
        assert_eq!(
            parse_prefixes(&["10.0.0.0/8".into(), "2001:db8::/32".into()])
                .unwrap_err()
                .kind,
            "PrefixVersionMismatch"
        );
    }
}
