//! Cloud-to-edge sync (see `docs/edge-sync.md`): a site controller dials
//! its parent, joins it once with a token for a client certificate, and
//! from then on exchanges over mutual TLS. Downward, the parent streams
//! the changes of its change log that the site needs; the site applies
//! each batch in one store transaction together with its cursor, so a
//! batch delivered twice is a no-op and a kill -9 loses nothing. Applied
//! changes land in the site's own change log, so its agents, scheduler and
//! identity caches react to them as to a local write.
//!
//! - [`pki`]: the site CA and certificates;
//! - [`parent`]: the parent's side (join, exchange, the sites API);
//! - [`listener`]: the parent's TLS sync listener;
//! - [`link`]: the site's side (join, the dial-out exchange loop).
//!
//! What goes down: identity (except the parent's own node agents' users
//! and the catalog, which each controller keeps for itself, and credential
//! blobs), flavors, key pairs, compute quotas, image metadata and members,
//! the Fernet keys, the servers whose availability zone is the site's
//! or one in its subtree (never another site's), and the networks,
//! subnets, security groups and rules, with the ports of those servers,
//! DHCP ports and unattached ports (never a router's or another site's
//! server's): the parent hands out every address. What comes up: the
//! site's state of those servers ([`server_status`], applied at the
//! parent by [`apply_status`]).
//!
//! **Who owns what of a server.** The parent owns the request (name,
//! flavor, image, metadata, and every task it asks for); the site owns
//! where and how it runs (host, node, vm and power state, task progress,
//! launch time, fault). A task asked at the parent carries the parent's
//! generation: a site that sees a newer one than it took takes the task
//! (and bumps its own generation, so its agents act on it); otherwise it
//! keeps its own state. Upward, the parent takes the site's state only
//! when the site had seen the parent's latest request.

pub mod link;
pub mod listener;
pub mod parent;
pub mod pki;
pub mod sim;

use std::path::Path;

use serde_json::Value;
use stratus_store::{Record, StoreError, Tx};
use stratus_wire::sync::SyncChange;

use crate::compute::leases::QuotaLease;
use crate::compute::model::{Flavor, Keypair, QuotaSet, Server, SitePrecache};
use crate::identity::model as id;
use crate::identity::node_users::{NODE_ROLE, NODES_DOMAIN_ID, NODES_PROJECT_ID};
use crate::image::model::{Image, Member};
use crate::network::model as net;

/// Calls `$f::<T>` for the record type of kind `$kind`, for every kind
/// that goes down; `$none` otherwise.
macro_rules! by_kind {
    ($kind:expr, $f:ident ( $($arg:expr),* ), $none:expr) => {
        match $kind {
            k if k == id::Domain::KIND => $f::<id::Domain>($($arg),*),
            k if k == id::Project::KIND => $f::<id::Project>($($arg),*),
            k if k == id::User::KIND => $f::<id::User>($($arg),*),
            k if k == id::Group::KIND => $f::<id::Group>($($arg),*),
            k if k == id::Membership::KIND => $f::<id::Membership>($($arg),*),
            k if k == id::Role::KIND => $f::<id::Role>($($arg),*),
            k if k == id::Inference::KIND => $f::<id::Inference>($($arg),*),
            k if k == id::Assignment::KIND => $f::<id::Assignment>($($arg),*),
            k if k == id::Revocation::KIND => $f::<id::Revocation>($($arg),*),
            k if k == id::AppCredential::KIND => $f::<id::AppCredential>($($arg),*),
            k if k == id::AccessRule::KIND => $f::<id::AccessRule>($($arg),*),
            k if k == id::Trust::KIND => $f::<id::Trust>($($arg),*),
            k if k == id::RegisteredLimit::KIND => $f::<id::RegisteredLimit>($($arg),*),
            k if k == id::Limit::KIND => $f::<id::Limit>($($arg),*),
            k if k == Flavor::KIND => $f::<Flavor>($($arg),*),
            k if k == Keypair::KIND => $f::<Keypair>($($arg),*),
            k if k == QuotaSet::KIND => $f::<QuotaSet>($($arg),*),
            k if k == Image::KIND => $f::<Image>($($arg),*),
            k if k == Member::KIND => $f::<Member>($($arg),*),
            k if k == SitePrecache::KIND => $f::<SitePrecache>($($arg),*),
            k if k == QuotaLease::KIND => $f::<QuotaLease>($($arg),*),
            k if k == net::Network::KIND => $f::<net::Network>($($arg),*),
            k if k == net::Subnet::KIND => $f::<net::Subnet>($($arg),*),
            k if k == net::Port::KIND => $f::<net::Port>($($arg),*),
            k if k == net::SecurityGroup::KIND => $f::<net::SecurityGroup>($($arg),*),
            k if k == net::SecurityGroupRule::KIND => $f::<net::SecurityGroupRule>($($arg),*),
            _ => $none,
        }
    };
}

/// The kinds a site receives from its parent.
pub const KINDS: &[&str] = &[
    Server::KIND,
    id::Domain::KIND,
    id::Project::KIND,
    id::User::KIND,
    id::Group::KIND,
    id::Membership::KIND,
    id::Role::KIND,
    id::Inference::KIND,
    id::Assignment::KIND,
    id::Revocation::KIND,
    id::AppCredential::KIND,
    id::AccessRule::KIND,
    id::Trust::KIND,
    id::RegisteredLimit::KIND,
    id::Limit::KIND,
    Flavor::KIND,
    Keypair::KIND,
    QuotaSet::KIND,
    Image::KIND,
    Member::KIND,
    SitePrecache::KIND,
    QuotaLease::KIND,
    net::Network::KIND,
    net::Subnet::KIND,
    net::Port::KIND,
    net::SecurityGroup::KIND,
    net::SecurityGroupRule::KIND,
];

/// The network kinds that go down: the parent owns them and hands out
/// their addresses; a site marks its copies (`from_parent`) so that it
/// takes no address of them itself and keeps its own networks apart.
const NET_KINDS: &[&str] = &[
    net::Network::KIND,
    net::Subnet::KIND,
    net::Port::KIND,
    net::SecurityGroup::KIND,
    net::SecurityGroupRule::KIND,
];

/// Whether a stored network document came down from the parent.
fn from_parent(body: &str) -> bool {
    serde_json::from_str::<Value>(body)
        .is_ok_and(|v| v.get("from_parent").and_then(Value::as_bool) == Some(true))
}

/// Whether a document of `kind` with `body` goes down to sites. Each
/// controller's node agents are its own: their domain, project, users,
/// role and role assignments never cross a link, so a site's own node
/// users and the parent's never collide. Those are also what a site
/// keeps for itself when a snapshot replaces what it has.
pub fn goes_down(zones: &std::collections::HashSet<String>, kind: &str, body: &str) -> bool {
    if !KINDS.contains(&kind) {
        return false;
    }
    if kind == Server::KIND || kind == SitePrecache::KIND || kind == QuotaLease::KIND {
        // A server (or an image cache request) goes to the site whose
        // subtree its zone is in.
        let key = if kind == Server::KIND {
            "requested_az"
        } else {
            "zone"
        };
        return serde_json::from_str::<Value>(body).is_ok_and(|v| {
            v.get(key)
                .and_then(Value::as_str)
                .is_some_and(|z| zones.contains(z))
        });
    }
    let field = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).map(str::to_string);
    if kind == net::Port::KIND {
        // The ports of servers in the site's subtree (their owner names
        // the zone), DHCP ports, and ports attached to nothing; never a
        // router's or another site's server's.
        return serde_json::from_str::<Value>(body).is_ok_and(|v| {
            match field(&v, "device_owner").as_deref().unwrap_or("") {
                "" => true,
                o if o == net::OWNER_DHCP => true,
                o => o
                    .strip_prefix("compute:")
                    .is_some_and(|z| zones.contains(z)),
            }
        });
    }
    let local = |v: &Value| -> bool {
        match kind {
            k if k == id::Domain::KIND => field(v, "id").as_deref() == Some(NODES_DOMAIN_ID),
            k if k == id::Project::KIND => {
                field(v, "id").as_deref() == Some(NODES_PROJECT_ID)
                    || field(v, "domain_id").as_deref() == Some(NODES_DOMAIN_ID)
            }
            k if k == id::User::KIND || k == id::Group::KIND => {
                field(v, "domain_id").as_deref() == Some(NODES_DOMAIN_ID)
            }
            k if k == id::Role::KIND => {
                field(v, "name").as_deref() == Some(NODE_ROLE)
                    && v.get("domain_id").is_none_or(Value::is_null)
            }
            // The nodes project and domain share one id.
            k if k == id::Assignment::KIND => {
                let t = field(v, "target_id");
                t.as_deref() == Some(NODES_PROJECT_ID) || t.as_deref() == Some(NODES_DOMAIN_ID)
            }
            _ => false,
        }
    };
    match serde_json::from_str::<Value>(body) {
        Ok(v) => !local(&v),
        Err(_) => false,
    }
}

/// Applies one change from the parent. A document whose unique key a
/// local one holds replaces it: the parent's desired state wins.
pub fn apply(tx: &Tx, c: &SyncChange) -> Result<(), crate::ApiError> {
    if c.kind == Server::KIND {
        return match c.body.as_deref() {
            Some(b) => put_server(tx, serde_json::from_str(b).map_err(StoreError::from)?),
            None => remove_server(tx, &c.id),
        };
    }
    let marked;
    let body = match c.body.as_deref() {
        Some(b) if NET_KINDS.contains(&c.kind.as_str()) => {
            marked = mark_from_parent(tx, &c.kind, &c.id, b)?;
            Some(marked.as_str())
        }
        b => b,
    };
    Ok(by_kind!(c.kind.as_str(), apply_one(tx, &c.id, body), {
        tracing::debug!(kind = %c.kind, "a change of a kind this site does not take");
        Ok(())
    })?)
}

/// A network document from the parent, marked as the parent's; a port
/// keeps where this site bound it (`host_id`, `status`).
fn mark_from_parent(tx: &Tx, kind: &str, id: &str, body: &str) -> Result<String, StoreError> {
    let mut v: Value = serde_json::from_str(body)?;
    v["from_parent"] = Value::Bool(true);
    if kind == net::Port::KIND
        && let Some(local) = tx.get::<net::Port>(id)?
        && !local.host_id.is_empty()
    {
        v["host_id"] = Value::from(local.host_id);
        v["status"] = Value::from(local.status);
    }
    Ok(v.to_string())
}

/// A server from the parent: new ones are taken as they are (they wait
/// for this site's scheduler) and counted in the project's usage here;
/// for known ones the parent's request is merged with this site's state.
fn put_server(tx: &Tx, parent: Server) -> Result<(), crate::ApiError> {
    let Some(local) = tx.get::<Server>(&parent.id)? else {
        let mut s = parent;
        s.parent_generation = s.generation;
        crate::compute::service::account_server(tx, &s, 1)?;
        tx.insert(&s)?;
        return Ok(());
    };
    // A server made here, coming back as the parent adopted it: it asks
    // nothing new of this site.
    let echo = local.parent_generation == 0 && adopted_at(&parent) == Some(parent.generation);
    let newer = !echo && parent.generation > local.parent_generation;
    let mut s = parent.clone();
    // What this site owns of the server: where and how it runs, and its
    // flavor (only a resize changes it, and the site carries that out).
    s.flavor = local.flavor.clone();
    s.host = local.host.clone();
    s.node = local.node.clone();
    s.availability_zone = local.availability_zone.clone();
    s.power_state = local.power_state;
    s.launched_us = local.launched_us;
    s.fault = local.fault.clone();
    s.tried_hosts = local.tried_hosts.clone();
    s.settled = local.settled.clone();
    s.snapshot = local.snapshot.clone();
    s.resize = local.resize.clone();
    s.rescue_image = local.rescue_image.clone();
    s.updated_us = parent.updated_us.max(local.updated_us);
    if newer {
        // A task the parent asked for: this site's agents act on it.
        s.generation = local.generation + 1;
        s.parent_generation = parent.generation;
    } else {
        s.vm_state = local.vm_state.clone();
        s.task_state = local.task_state.clone();
        s.generation = local.generation;
        s.parent_generation = if echo {
            parent.generation
        } else {
            local.parent_generation
        };
    }
    tx.update(&s)?;
    Ok(())
}

/// The parent deleted a server: on a node of this site it is torn down the
/// way a delete does it (the agent removes it, then the record goes); one
/// not placed yet, or placed in a site below this one, goes at once (and
/// its delete goes on down).
fn remove_server(tx: &Tx, id: &str) -> Result<(), crate::ApiError> {
    let Some(mut s) = tx.get::<Server>(id)? else {
        return Ok(());
    };
    let on_our_node = match &s.host {
        Some(h) => tx.exists::<crate::compute::model::ComputeNode>(h)?,
        None => false,
    };
    if on_our_node {
        if s.task_state.as_deref() != Some(crate::compute::states::task::DELETING) {
            s.task_state = Some(crate::compute::states::task::DELETING.into());
            s.generation += 1;
            s.updated_us = crate::timeutil::now_us();
            tx.update(&s)?;
        }
    } else {
        crate::compute::service::account_server(tx, &s, -1)?;
        tx.delete::<Server>(id)?;
    }
    Ok(())
}

/// What goes up of a server of this site: its state here.
pub fn server_status(id: &str, s: Option<&Server>) -> stratus_wire::sync::ServerStatus {
    match s {
        Some(s) => stratus_wire::sync::ServerStatus {
            id: id.to_string(),
            deleted: false,
            parent_generation: s.parent_generation,
            host: s.host.clone(),
            node: s.node.clone(),
            vm_state: s.vm_state.clone(),
            task_state: s.task_state.clone(),
            power_state: s.power_state,
            launched_us: s.launched_us,
            fault: s.fault.as_ref().and_then(|f| serde_json::to_value(f).ok()),
            flavor: serde_json::to_value(&s.flavor).ok(),
        },
        None => stratus_wire::sync::ServerStatus {
            id: id.to_string(),
            deleted: true,
            parent_generation: 0,
            host: None,
            node: None,
            vm_state: String::new(),
            task_state: None,
            power_state: 0,
            launched_us: None,
            fault: None,
            flavor: None,
        },
    }
}

/// The hint that marks a server made at a site below and adopted here:
/// the generation it had when adopted.
const ADOPTED: &str = crate::compute::leases::ADOPTED_HINT;

fn adopted_at(s: &Server) -> Option<u64> {
    s.hints.get(ADOPTED).and_then(Value::as_u64)
}

/// At the parent: a server made at the site `site` (or one below it) that
/// this parent has not seen: it is taken as the site made it, in the
/// site's zone (unless it names one below), counted in its project's
/// usage here, and from then on is a server of that zone like any other:
/// it comes back down with this parent's requests, and its state comes up.
/// Until this parent asks something of it, a newer copy from the site
/// replaces its state. The site runs a resize of it: the copy here keeps
/// no resize job and counts the flavor the site shows, as
/// [`apply_status`] does. Answers whether anything changed.
pub fn adopt(
    tx: &Tx,
    site: &str,
    zones: &std::collections::HashSet<String>,
    body: &str,
) -> Result<bool, crate::ApiError> {
    let mut s: Server = serde_json::from_str(body).map_err(|e| {
        crate::ApiError::bad_request(format!("an adopted server does not parse: {e}"))
    })?;
    let Some(mut cur) = tx.get::<Server>(&s.id)? else {
        if !s.requested_az.as_deref().is_some_and(|z| zones.contains(z)) {
            s.requested_az = Some(site.to_string());
        }
        if !s.hints.is_object() {
            s.hints = Value::Object(Default::default());
        }
        s.hints[ADOPTED] = Value::from(s.generation);
        s.availability_zone = s.requested_az.clone();
        s.parent_generation = 0;
        // A job here would count its new flavor until a confirm or revert
        // this parent never sees (the site carries them out).
        s.resize = None;
        crate::compute::service::account_server(tx, &s, 1)?;
        tx.insert(&s)?;
        tracing::info!(server = %s.id, site, "adopted a server made at a site");
        return Ok(true);
    };
    let ours = cur
        .requested_az
        .as_deref()
        .is_some_and(|z| zones.contains(z));
    if !ours || adopted_at(&cur) != Some(cur.generation) {
        return Ok(false);
    }
    let same = cur.flavor == s.flavor
        && cur.resize.is_none()
        && cur.host == s.host
        && cur.vm_state == s.vm_state
        && cur.task_state == s.task_state
        && cur.power_state == s.power_state
        && cur.launched_us == s.launched_us;
    if same {
        return Ok(false);
    }
    cur.host = s.host;
    cur.node = s.node;
    cur.vm_state = s.vm_state;
    cur.task_state = s.task_state;
    cur.power_state = s.power_state;
    cur.launched_us = s.launched_us;
    cur.fault = s.fault;
    follow_flavor(tx, &mut cur, s.flavor)?;
    cur.updated_us = crate::timeutil::now_us();
    tx.update(&cur)?;
    Ok(true)
}

/// At the parent: the copy of a site's server takes the flavor the site
/// shows, and usage here follows. A copy adopted mid-resize by an older
/// release kept the site's resize job, which counted its new flavor
/// whatever the site did next: it goes, and usage is counted again.
fn follow_flavor(
    tx: &Tx,
    s: &mut Server,
    flavor: crate::compute::model::FlavorCopy,
) -> Result<(), crate::ApiError> {
    if s.flavor == flavor && s.resize.is_none() {
        return Ok(());
    }
    crate::compute::service::account_server(tx, s, -1)?;
    s.flavor = flavor;
    s.resize = None;
    crate::compute::service::account_server(tx, s, 1)
}

/// At the parent: a site's state of one of its servers. Only servers in
/// the site's subtree (`zones`) are touched, and only when the site had
/// seen the parent's latest request; a server the site no longer has is
/// left to the parent's own delete.
pub fn apply_status(
    tx: &Tx,
    zones: &std::collections::HashSet<String>,
    st: &stratus_wire::sync::ServerStatus,
) -> Result<bool, crate::ApiError> {
    let Some(mut s) = tx.get::<Server>(&st.id)? else {
        return Ok(false);
    };
    let ours = s.requested_az.as_deref().is_some_and(|z| zones.contains(z));
    if st.deleted {
        // A server the site made and deleted goes here too, unless this
        // parent has asked something of it since it adopted it.
        if ours && adopted_at(&s) == Some(s.generation) {
            crate::compute::service::account_server(tx, &s, -1)?;
            tx.delete::<Server>(&s.id)?;
            return Ok(true);
        }
        return Ok(false);
    }
    if !ours || st.parent_generation < s.generation {
        return Ok(false);
    }
    let fault = st
        .fault
        .as_ref()
        .and_then(|f| serde_json::from_value(f.clone()).ok());
    let flavor: Option<crate::compute::model::FlavorCopy> = st
        .flavor
        .as_ref()
        .and_then(|f| serde_json::from_value(f.clone()).ok());
    let resized = flavor.as_ref().is_some_and(|f| f != &s.flavor) || s.resize.is_some();
    let same = !resized
        && s.host == st.host
        && s.node == st.node
        && s.vm_state == st.vm_state
        && s.task_state == st.task_state
        && s.power_state == st.power_state
        && s.launched_us == st.launched_us;
    if same {
        return Ok(false);
    }
    if let Some(h) = &st.host
        && s.host.as_ref() != Some(h)
    {
        // Its ports show the site's node as their binding.
        crate::network::nova::bind(tx, &s.nics, h).map_err(crate::compute::nics::nova_error)?;
    }
    s.host = st.host.clone();
    s.node = st.node.clone();
    s.vm_state = st.vm_state.clone();
    s.task_state = st.task_state.clone();
    s.power_state = st.power_state;
    s.launched_us = st.launched_us;
    if fault.is_some() {
        s.fault = fault;
    }
    if resized {
        // Resized at the site: usage here follows.
        let f = flavor.unwrap_or_else(|| s.flavor.clone());
        follow_flavor(tx, &mut s, f)?;
    }
    s.updated_us = crate::timeutil::now_us();
    tx.update(&s)?;
    Ok(true)
}

fn apply_one<T: Record>(tx: &Tx, id: &str, body: Option<&str>) -> Result<(), StoreError> {
    let Some(body) = body else {
        tx.delete::<T>(id)?;
        return Ok(());
    };
    let rec: T = serde_json::from_str(body)?;
    if rec.id() != id {
        return Err(StoreError::Db(format!(
            "a synced {} names {} but is sent as {id}",
            T::KIND,
            rec.id()
        )));
    }
    if let Some(holder) = tx.unique_holder(&rec)? {
        tx.delete::<T>(&holder)?;
    }
    tx.upsert(&rec)?;
    Ok(())
}

/// After a snapshot: deletes the documents of `kind` that the snapshot
/// does not list, except those the site keeps for itself.
pub fn prune(
    tx: &Tx,
    kind: &str,
    keep: &std::collections::HashSet<&str>,
) -> Result<u64, StoreError> {
    if kind == Server::KIND {
        return prune_servers(tx, keep);
    }
    by_kind!(kind, prune_kind(tx, keep), Ok(0))
}

fn prune_servers(tx: &Tx, keep: &std::collections::HashSet<&str>) -> Result<u64, StoreError> {
    let mut n = 0;
    for s in tx.list::<Server>(&stratus_store::Query::all())? {
        // Servers made here (while cut off) are this site's own.
        if s.parent_generation == 0 || keep.contains(s.id.as_str()) {
            continue;
        }
        remove_server(tx, &s.id).map_err(|e| StoreError::Db(e.message))?;
        n += 1;
    }
    Ok(n)
}

fn prune_kind<T: Record>(
    tx: &Tx,
    keep: &std::collections::HashSet<&str>,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for rec in tx.list::<T>(&stratus_store::Query::all())? {
        if keep.contains(rec.id()) {
            continue;
        }
        let body = serde_json::to_string(&rec)?;
        let parents = if NET_KINDS.contains(&T::KIND) {
            from_parent(&body)
        } else {
            goes_down(&Default::default(), T::KIND, &body)
        };
        if parents {
            tx.delete::<T>(rec.id())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Compresses an exchange body.
pub fn gzip(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = e.write_all(raw);
    e.finish().unwrap_or_default()
}

/// The Fernet keys in a repository directory: (index, key), by index.
pub fn read_keys(dir: &Path) -> std::io::Result<Vec<(u64, String)>> {
    let mut keys = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let Some(i) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        keys.push((i, std::fs::read_to_string(e.path())?.trim().to_string()));
    }
    keys.sort();
    Ok(keys)
}

/// What names a key set without revealing it.
pub fn keys_hash(keys: &[(u64, String)]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (i, k) in keys {
        h.update(format!("{i}:{k}\n").as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes a site's key repository hold exactly the parent's keys. New keys
/// are written first, then old ones removed, so a validation in between
/// still finds the key it needs.
pub fn write_keys(dir: &Path, keys: &[(u64, String)]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    for (i, k) in keys {
        let tmp = dir.join(format!(".{i}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(k.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(i.to_string()))?;
    }
    for (i, _) in read_keys(dir)? {
        if !keys.iter().any(|(j, _)| *j == i) {
            std::fs::remove_file(dir.join(i.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_agents_identity_stays_with_its_controller() {
        let z = std::collections::HashSet::from(["edge-1".to_string()]);
        let user = |domain: &str| json!({"id": "u", "name": "n", "domain_id": domain}).to_string();
        assert!(goes_down(&z, "user", &user("default")));
        assert!(!goes_down(&z, "user", &user(NODES_DOMAIN_ID)));
        assert!(!goes_down(
            &z,
            "role",
            &json!({"id": "r", "name": NODE_ROLE, "domain_id": null}).to_string()
        ));
        assert!(goes_down(
            &z,
            "role",
            &json!({"id": "r", "name": "member", "domain_id": null}).to_string()
        ));
        assert!(!goes_down(
            &z,
            "role_assignment",
            &json!({"id": "a", "target_id": NODES_PROJECT_ID}).to_string()
        ));
        // The catalog, credentials and sites stay too.
        assert!(!goes_down(&z, "endpoint", "{}"));
        assert!(!goes_down(&z, "credential", "{}"));
        assert!(!goes_down(&z, "site", "{}"));
        assert!(goes_down(&z, "flavor", r#"{"id": "1"}"#));
        // Servers go to the site of their zone only.
        assert!(goes_down(&z, "server", r#"{"requested_az": "edge-1"}"#));
        assert!(!goes_down(&z, "server", r#"{"requested_az": "edge-2"}"#));
        assert!(!goes_down(&z, "server", r#"{"requested_az": null}"#));
    }

    #[test]
    fn a_site_gets_its_servers_ports_and_never_a_routers_or_another_sites() {
        let z = std::collections::HashSet::from(["edge-1".to_string()]);
        let port = |owner: &str| json!({"id": "p", "device_owner": owner}).to_string();
        assert!(goes_down(&z, "port", &port("compute:edge-1")));
        assert!(goes_down(&z, "port", &port("network:dhcp")));
        assert!(goes_down(&z, "port", &port("")));
        assert!(!goes_down(&z, "port", &port("compute:edge-2")));
        assert!(!goes_down(&z, "port", &port("compute:nova")));
        assert!(!goes_down(&z, "port", &port("network:router_interface")));
        assert!(goes_down(&z, "network", r#"{"id": "n"}"#));
        assert!(goes_down(&z, "security_group_rule", r#"{"id": "r"}"#));
        // Addresses stay with the parent: their allocations never go.
        assert!(!goes_down(&z, "ip_allocation", r#"{"id": "s/10.0.0.2"}"#));
        assert!(!goes_down(&z, "router", r#"{"id": "r"}"#));
        assert!(from_parent(r#"{"id": "n", "from_parent": true}"#));
        assert!(!from_parent(r#"{"id": "n"}"#));
    }

    #[test]
    fn a_key_set_is_written_exactly() {
        let dir = std::env::temp_dir().join(format!("stratus-sync-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0"), "old0").unwrap();
        std::fs::write(dir.join("1"), "old1").unwrap();
        let keys = vec![(0, "k0".to_string()), (2, "k2".to_string())];
        write_keys(&dir, &keys).unwrap();
        assert_eq!(read_keys(&dir).unwrap(), keys);
        assert_eq!(keys_hash(&keys), keys_hash(&read_keys(&dir).unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    // ---- usage of servers deleted mid-resize ------------------------------

    use crate::compute::model::{ComputeTreeUsage, ComputeUsage, FlavorCopy, ResizeJob};
    use crate::compute::states::{task, vm};

    fn flavor(id: &str, vcpus: u32, ram: u64) -> FlavorCopy {
        FlavorCopy {
            id: id.into(),
            name: id.into(),
            ram,
            vcpus,
            disk: 1,
            ephemeral: 0,
            swap: 0,
            extra_specs: Default::default(),
        }
    }

    /// A server of project `p` in zone `edge-1`, on a node this store
    /// does not run (as the parent's copy is, or a site's below).
    fn server(id: &str, f: &FlavorCopy) -> Server {
        serde_json::from_value(json!({
            "id": id, "name": id, "project_id": "p", "user_id": "u",
            "image_ref": "img", "flavor": f, "requested_az": "edge-1",
            "availability_zone": "edge-1", "host": "node-a", "node": "node-a",
            "vm_state": vm::ACTIVE, "reservation_id": "r", "hostname": id,
            "created_us": 0, "updated_us": 0, "generation": 1
        }))
        .unwrap()
    }

    /// The steps of a resize a delete can land in.
    const STEPS: &[&str] = &["prep", "verify", "reverting", "confirmed", "reverted"];

    /// Takes `s` (ACTIVE with `old`) to `step` of a resize to `new`, with
    /// the usage changes the resize code makes at each.
    fn resize_to(tx: &Tx, s: &mut Server, step: &str, new: &FlavorCopy) {
        let old = s.flavor.clone();
        // As `resize::resize` counts it when it is asked.
        crate::compute::quotas::account(tx, &s.project_id, &s.user_id, old.vcpus, old.ram, -1)
            .unwrap();
        crate::compute::quotas::account(tx, &s.project_id, &s.user_id, new.vcpus, new.ram, 1)
            .unwrap();
        s.resize = Some(ResizeJob {
            migration_id: format!("m-{}", s.id),
            old_flavor: old,
            new_flavor: new.clone(),
            old_vm_state: vm::ACTIVE.into(),
            source_host: None,
            dest_host: None,
            transfer_image: None,
            source_zone: None,
            failed: false,
            live: false,
            live_uri: None,
            abort: false,
            force_complete: false,
        });
        s.task_state = Some(task::RESIZE_PREP.into());
        if step != "prep" {
            crate::compute::resize::finish(tx, s, task::RESIZE_PREP, true).unwrap();
            s.task_state = None;
        }
        match step {
            "reverting" | "reverted" => {
                s.task_state = Some(task::RESIZE_REVERTING.into());
                if step == "reverted" {
                    crate::compute::resize::finish(tx, s, task::RESIZE_REVERTING, true).unwrap();
                    s.task_state = None;
                }
            }
            "confirmed" => {
                s.vm_state = vm::ACTIVE.into();
                s.resize = None;
            }
            _ => {}
        }
        s.updated_us += 1;
        tx.update(s).unwrap();
    }

    /// (instances, cores, ram) of project `p`, checked equal to its
    /// running subtree total.
    fn used(tx: &Tx) -> (i64, i64, i64) {
        let u = tx.get::<ComputeUsage>("p").unwrap().unwrap_or_default();
        let t = tx.get::<ComputeTreeUsage>("p").unwrap().unwrap_or_default();
        assert_eq!(
            (t.instances, t.cores, t.ram),
            (u.instances, u.cores, u.ram),
            "the subtree total follows the usage"
        );
        (u.instances, u.cores, u.ram)
    }

    fn one(f: &FlavorCopy) -> (i64, i64, i64) {
        (1, f.vcpus as i64, f.ram as i64)
    }

    /// At a site: the parent deletes a server at any step of a resize the
    /// site runs; what the site counted of it goes, nothing more.
    #[test]
    fn a_parent_delete_mid_resize_releases_what_the_site_counted() {
        let (small, big) = (flavor("small", 1, 64), flavor("big", 4, 512));
        for step in STEPS {
            let store = stratus_store::Store::open_in_memory().unwrap();
            store
                .write(|tx| {
                    put_server(tx, server("keep", &small))?;
                    put_server(tx, server("s", &small))?;
                    let mut s = tx.fetch::<Server>("s")?;
                    resize_to(tx, &mut s, step, &big);
                    remove_server(tx, "s")?;
                    assert!(tx.get::<Server>("s")?.is_none());
                    assert_eq!(used(tx), one(&small), "deleted at step {step}");
                    Ok::<_, crate::ApiError>(())
                })
                .unwrap();
        }
    }

    /// A site's record of a server made there (parent generation
    /// `parent_gen`), taken to `step` of a resize from `small` to `big`.
    fn made_at_site(step: &str, parent_gen: u64, small: &FlavorCopy, big: &FlavorCopy) -> Server {
        let scratch = stratus_store::Store::open_in_memory().unwrap();
        let mut s = server("s", small);
        s.parent_generation = parent_gen;
        scratch
            .write(|tx| {
                tx.insert(&s)?;
                resize_to(tx, &mut s, step, big);
                Ok::<_, crate::ApiError>(())
            })
            .unwrap();
        s
    }

    /// At the root: a server made at a site is adopted at any step of a
    /// resize there, the site goes on to any later step, and then deletes
    /// it: the root counts the flavor the site shows all along and
    /// releases exactly that. Its copy carries no resize job (the site
    /// runs the resize), so the root's own delete releases that flavor too.
    #[test]
    fn a_server_adopted_mid_resize_is_released_as_the_root_counted_it() {
        let (small, big) = (flavor("small", 1, 64), flavor("big", 4, 512));
        let zones = std::collections::HashSet::from(["edge-1".to_string()]);
        let plus = |f: &FlavorCopy| (2, 1 + f.vcpus as i64, 64 + f.ram as i64);
        for (i, adopted) in STEPS.iter().enumerate() {
            for step in &STEPS[i..] {
                let root = stratus_store::Store::open_in_memory().unwrap();
                let at = made_at_site(adopted, 0, &small, &big);
                let body = serde_json::to_string(&at).unwrap();
                root.write(|tx| {
                    put_server(tx, server("keep", &small))?;
                    adopt(tx, "edge-1", &zones, &body)?;
                    let copy = tx.fetch::<Server>("s")?;
                    assert!(copy.resize.is_none(), "adopted at {adopted}");
                    assert_eq!(used(tx), plus(&at.flavor), "adopted at {adopted}");
                    // The site took the root's copy back (its parent
                    // generation), and went on to `step`.
                    let now = made_at_site(step, copy.generation, &small, &big);
                    apply_status(tx, &zones, &server_status("s", Some(&now)))?;
                    assert_eq!(tx.fetch::<Server>("s")?.flavor, now.flavor);
                    assert_eq!(
                        used(tx),
                        plus(&now.flavor),
                        "adopted at {adopted}, now {step}"
                    );
                    apply_status(tx, &zones, &server_status("s", None))?;
                    assert!(tx.get::<Server>("s")?.is_none());
                    assert_eq!(
                        used(tx),
                        one(&small),
                        "adopted at {adopted}, deleted at {step}"
                    );
                    Ok::<_, crate::ApiError>(())
                })
                .unwrap();
            }
        }
    }
}
