//! Server resize (`resize`, `confirmResize`, `revertResize`) and the
//! migration records `os-migrations` lists.
//!
//! `resize` (from ACTIVE or STOPPED, no task, not locked, to another
//! visible and enabled flavor whose root disk is not smaller) checks the
//! quota for what grows, claims the new flavor in placement, records a
//! [`Migration`] (`resize`, pre-migrating), puts the server into task
//! `resize_prep` (status RESIZE) and answers 202. The node agent applies
//! the new limits (for a container: its cgroup's memory and CPU, restarting
//! a running workload, as a VM resize reboots the guest) and reports: the
//! server shows the new flavor in `VERIFY_RESIZE` (vm_state `resized`)
//! and its power state is what it was. `confirmResize` (204) keeps it;
//! `revertResize` (202, `REVERT_RESIZE`) has the node put the old limits
//! back. Either way the server returns to ACTIVE or SHUTOFF, as it was.
//!
//! A resize stays on the server's node: the container's root file system
//! lives there. While it waits for confirmation the server holds the
//! larger of the two flavors in placement, class by class, so a revert
//! always fits; confirm and revert shrink the claim to the flavor kept.
//! Quota usage counts the new flavor from the moment the resize is asked
//! until it is reverted ([`counted`]); every place that counts a server
//! in or out of its project's usage counts that flavor.

use std::collections::BTreeMap;

use stratus_store::Query as StoreQuery;

use super::common::{check_locked, fetch_tx, record_action};
use super::model::{Aggregate, ComputeNode, FlavorCopy, Migration, ResizeJob, Server};
use super::quotas::{self, Resource};
use super::scheduler::server_resources;
use super::states::wrong_state;
use super::states::{power, task, vm};
use crate::identity::policy::Ctx;
use crate::placement::ClaimError;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// The vm_states a server can be resized from.
const FROM: &[&str] = &[vm::ACTIVE, vm::STOPPED];

/// Class by class, the larger of two claims.
fn larger(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = a.clone();
    for (k, v) in b {
        let e = out.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
    out
}

/// Replaces the server's claim with `resources` on its node's provider.
/// `also` runs in the same transaction; nothing changes if it fails.
fn claim_on_node<R>(
    state: &AppState,
    s: &Server,
    resources: BTreeMap<String, u64>,
    also: impl FnOnce(&stratus_store::Tx) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let host = s.host.as_deref().unwrap_or_default();
    let node = state
        .store
        .get::<ComputeNode>(host)?
        .ok_or_else(|| ApiError::conflict(format!("The server's node {host} is not registered")))?;
    let allocs = BTreeMap::from([(node.uuid, resources)]);
    match state
        .placement
        .claim(&s.id, &s.project_id, &s.user_id, &allocs, also)
    {
        Ok(r) => Ok(r),
        Err(ClaimError::Caller(e)) => Err(e),
        Err(ClaimError::Placement(e)) => Err(ApiError::bad_request(format!(
            "No valid host was found. There is not enough room on {host} for the new flavor: {e}"
        ))),
    }
}

/// The quota check for growing from `old` to `new` (cores and ram).
fn check_quota(
    tx: &stratus_store::Tx,
    own_zone: Option<&str>,
    s: &Server,
    old: &FlavorCopy,
    new: &FlavorCopy,
) -> Result<(), ApiError> {
    let (dc, dr) = (
        new.vcpus as i64 - old.vcpus as i64,
        new.ram as i64 - old.ram as i64,
    );
    // At an edge site a server made there grows within the site's lease.
    if let Some(zone) = own_zone
        && (s.parent_generation == 0 || s.hints.get(super::leases::ADOPTED_HINT).is_some())
    {
        super::leases::check_here(tx, zone, &s.project_id, [0, dc.max(0), dr.max(0)], 1)?;
    }
    if quotas::tree_model(tx)? {
        let deltas = [(Resource::Cores, dc), (Resource::Ram, dr)];
        return quotas::take(tx, &s.project_id, &deltas);
    }
    // What the project's leases to sites hold back here.
    let held = super::leases::reserved(tx, own_zone, &s.project_id)?;
    let used = quotas::usage_tx(tx, &s.project_id, None, &s.user_id)?;
    let mut over = Vec::new();
    for (r, delta, now) in [
        (
            Resource::Cores,
            new.vcpus as i64 - old.vcpus as i64,
            used.cores,
        ),
        (Resource::Ram, new.ram as i64 - old.ram as i64, used.ram),
    ] {
        if delta <= 0 {
            continue;
        }
        let limit = quotas::limit_tx(tx, &s.project_id, Some(&s.user_id), r)?;
        let now = now + held.get(r.key()).copied().unwrap_or(0);
        if limit >= 0 && now + delta > limit {
            over.push((r.key(), delta, now, limit));
        }
    }
    if over.is_empty() {
        Ok(())
    } else {
        Err(quotas::exceeded(&over))
    }
}

/// `resize`: 202; the node applies the new flavor.
pub fn resize(
    state: &AppState,
    ctx: &Ctx,
    s: &Server,
    flavor_ref: &str,
    rid: &str,
) -> Result<(), ApiError> {
    let flavor = super::common::fetch_flavor(state, ctx, flavor_ref)
        .map_err(|_| ApiError::bad_request("Unable to locate requested flavor."))?;
    if flavor.disabled {
        return Err(ApiError::bad_request("Flavor is disabled."));
    }
    let new = FlavorCopy::of(&flavor);
    if new.id == s.flavor.id {
        return Err(ApiError::bad_request(
            "When resizing, instances must change flavor!",
        ));
    }
    if !s.image_ref.is_empty() && new.disk < s.flavor.disk {
        return Err(ApiError::bad_request(
            "Resize error: Unable to resize disk down.",
        ));
    }
    // Cheap checks first, so a wrong state is a 409 before any claim.
    if s.task_state.is_some() || !FROM.contains(&s.vm_state.as_str()) || s.host.is_none() {
        return Err(wrong_state("resize", s));
    }
    check_locked(ctx, s)?;
    // A resize stays on the server's node: its volumes (a volume-backed
    // server's root volume too) stay where they are.
    super::states::no_swap(s, "resize")?;
    let old = s.flavor.clone();
    // Over quota is a 403 before any placement question (checked again
    // in the claim's transaction).
    let own_zone = state.sites.own_zone();
    state
        .store
        .write(|tx| check_quota(tx, own_zone.as_deref(), s, &old, &new))?;
    let hold = larger(&server_resources(s, &old), &server_resources(s, &new));
    let now = now_us();
    let migration_id = uuid::Uuid::new_v4().to_string();
    let host = s.host.clone().unwrap_or_default();
    let s = claim_on_node(state, s, hold, |tx| {
        let mut cur = fetch_tx(tx, ctx, &s.id)?;
        check_locked(ctx, &cur)?;
        if cur.task_state.is_some()
            || !FROM.contains(&cur.vm_state.as_str())
            || cur.host.as_deref() != Some(host.as_str())
        {
            return Err(wrong_state("resize", &cur));
        }
        check_quota(tx, own_zone.as_deref(), &cur, &old, &new)?;
        let mut m = Migration {
            id: migration_id.clone(),
            seq: 0,
            server_id: cur.id.clone(),
            project_id: cur.project_id.clone(),
            user_id: cur.user_id.clone(),
            migration_type: "resize".into(),
            source_compute: host.clone(),
            dest_compute: host.clone(),
            old_flavor_id: old.id.clone(),
            new_flavor_id: new.id.clone(),
            status: "pre-migrating".into(),
            created_us: now,
            updated_us: now,
            progress: None,
        };
        m.seq = tx.insert(&m)?;
        tx.update(&m)?;
        quotas::account(tx, &cur.project_id, &cur.user_id, old.vcpus, old.ram, -1)?;
        quotas::account(tx, &cur.project_id, &cur.user_id, new.vcpus, new.ram, 1)?;
        cur.resize = Some(ResizeJob {
            migration_id: migration_id.clone(),
            old_flavor: old.clone(),
            new_flavor: new.clone(),
            old_vm_state: cur.vm_state.clone(),
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
        cur.task_state = Some(task::RESIZE_PREP.into());
        cur.generation += 1;
        cur.updated_us = now;
        tx.update(&cur)?;
        record_action(tx, &cur, "resize", ctx, rid)?;
        Ok(cur)
    })?;
    state.compute.notify(s.host.as_deref());
    Ok(())
}

/// `confirmResize`: 204; keeps the new flavor (or, for a migration, the
/// new node: the source node lets its stopped copy go).
pub fn confirm(state: &AppState, ctx: &Ctx, s: &Server, rid: &str) -> Result<(), ApiError> {
    let Some(job) = s.resize.clone() else {
        return Err(wrong_state("confirmResize", s));
    };
    if s.task_state.is_some() || s.vm_state != vm::RESIZED {
        return Err(wrong_state("confirmResize", s));
    }
    check_locked(ctx, s)?;
    let gen_at = s.generation;
    let apply = |tx: &stratus_store::Tx| {
        let mut cur = fetch_tx(tx, ctx, &s.id)?;
        if cur.generation != gen_at || cur.vm_state != vm::RESIZED || cur.task_state.is_some() {
            return Err(wrong_state("confirmResize", &cur));
        }
        set_migration(tx, &job.migration_id, "confirmed")?;
        cur.vm_state = job.old_vm_state.clone();
        cur.resize = None;
        cur.updated_us = now_us();
        tx.update(&cur)?;
        record_action(tx, &cur, "confirmResize", ctx, rid)?;
        super::common::action_event(
            tx,
            &cur.id,
            "compute_confirm_resize",
            true,
            None,
            cur.host.as_deref(),
        )?;
        Ok(())
    };
    if job.is_migration() {
        state.store.write(apply)?;
        // What the source node held goes with its copy.
        release(state, &job.migration_id);
        state.compute.notify(job.source_host.as_deref());
    } else {
        claim_on_node(state, s, server_resources(s, &job.new_flavor), apply)?;
    }
    Ok(())
}

/// `revertResize`: 202; the node puts the old flavor back (for a
/// migration: the server returns to the source node, which starts its
/// copy again, and the destination lets its copy go).
pub fn revert(state: &AppState, ctx: &Ctx, s: &Server, rid: &str) -> Result<(), ApiError> {
    let (s, job) = state.store.write(|tx| {
        let mut cur = fetch_tx(tx, ctx, &s.id)?;
        check_locked(ctx, &cur)?;
        let Some(job) = cur.resize.clone() else {
            return Err(wrong_state("revertResize", &cur));
        };
        if cur.task_state.is_some() || cur.vm_state != vm::RESIZED {
            return Err(wrong_state("revertResize", &cur));
        }
        if let Some(src) = &job.source_host {
            cur.host = Some(src.clone());
            cur.node = Some(src.clone());
        }
        cur.task_state = Some(task::RESIZE_REVERTING.into());
        cur.generation += 1;
        cur.updated_us = now_us();
        tx.update(&cur)?;
        record_action(tx, &cur, "revertResize", ctx, rid)?;
        Ok((cur, job))
    })?;
    if job.is_migration() {
        unmigrate_claims(state, &s.id, &job.migration_id);
        state.compute.notify(job.dest_host.as_deref());
    }
    state.compute.notify(s.host.as_deref());
    Ok(())
}

/// `migrate` (admin): a cold migration to another node (2.56: `host`
/// names it). The source node stops the server and writes its root file
/// system into a hidden transfer image; the destination boots it; the
/// server waits in VERIFY_RESIZE, as after a resize.
pub fn migrate(
    state: &AppState,
    ctx: &Ctx,
    s: &Server,
    want: Option<String>,
    rid: &str,
) -> Result<(), ApiError> {
    if s.task_state.is_some() || !FROM.contains(&s.vm_state.as_str()) || s.host.is_none() {
        return Err(wrong_state("migrate", s));
    }
    check_locked(ctx, s)?;
    super::states::may_move(state, s, "migrate")?;
    if let Some(h) = &want {
        if state.store.get::<ComputeNode>(h)?.is_none() {
            return Err(ApiError::bad_request(format!(
                "Compute host {h} could not be found."
            )));
        }
        if Some(h) == s.host.as_ref() {
            return Err(ApiError::bad_request(
                "The target host can't be the same one.",
            ));
        }
    }
    let (dest, rp, resources) = match super::scheduler::pick_destination(state, s, want.as_deref())?
    {
        Ok(d) => d,
        Err(why) => {
            return Err(ApiError::bad_request(format!(
                "No valid host was found. {why}"
            )));
        }
    };
    let source = s.host.clone().unwrap_or_default();
    let migration_id = uuid::Uuid::new_v4().to_string();
    // The migration claims the destination (with the server's records in
    // the same transaction); then the two claims change hands, so the
    // server holds the destination and the migration the source, as in
    // Nova.
    let now = now_us();
    let allocs = BTreeMap::from([(rp, resources)]);
    let result = state
        .placement
        .claim(&migration_id, &s.project_id, &s.user_id, &allocs, |tx| {
            let mut cur = fetch_tx(tx, ctx, &s.id)?;
            if cur.task_state.is_some()
                || !FROM.contains(&cur.vm_state.as_str())
                || cur.host.as_deref() != Some(source.as_str())
            {
                return Err(wrong_state("migrate", &cur));
            }
            Migration::moving(
                &migration_id,
                &cur,
                "migration",
                &source,
                &dest,
                "pre-migrating",
                now,
            )
            .insert(tx)?;
            let image = super::snapshots::transfer_image(tx, &cur)?;
            cur.resize = Some(ResizeJob {
                migration_id: migration_id.clone(),
                old_flavor: cur.flavor.clone(),
                new_flavor: cur.flavor.clone(),
                old_vm_state: cur.vm_state.clone(),
                source_host: Some(source.clone()),
                dest_host: Some(dest.clone()),
                transfer_image: Some(image),
                source_zone: cur.availability_zone.clone(),
                failed: false,
                live: false,
                live_uri: None,
                abort: false,
                force_complete: false,
            });
            cur.task_state = Some(task::RESIZE_MIGRATING.into());
            cur.generation += 1;
            cur.updated_us = now;
            tx.update(&cur)?;
            record_action(tx, &cur, "migrate", ctx, rid)?;
            Ok(())
        });
    match result {
        Ok(()) => {
            if let Err(e) = state.placement.swap_consumers(&s.id, &migration_id) {
                tracing::error!(server = %s.id, error = %e, "could not hand the claims over for a migration");
            }
            state.compute.notify(Some(&source));
            Ok(())
        }
        Err(e) => Err(match e {
            ClaimError::Caller(e) => e,
            ClaimError::Placement(e) => ApiError::bad_request(format!(
                "No valid host was found. There is not enough room on {dest}: {e}"
            )),
        }),
    }
}

/// A migration went back (or failed): the server gives up its claim on
/// the destination and takes back what the migration held on the source.
fn unmigrate_claims(state: &AppState, server: &str, migration: &str) {
    if let Err(e) = state.placement.swap_consumers(server, migration) {
        tracing::error!(server, error = %e, "could not give the source claim back");
    }
    release(state, migration);
}

fn release(state: &AppState, consumer: &str) {
    if let Err(e) = state.placement.release(consumer) {
        tracing::error!(consumer, error = %e, "could not release a claim");
    }
}

/// Sets a migration record's status (and its update time).
pub(super) fn set_migration(
    tx: &stratus_store::Tx,
    id: &str,
    status: &str,
) -> Result<(), ApiError> {
    if let Some(mut m) = tx.get::<Migration>(id)? {
        m.status = status.into();
        m.updated_us = now_us();
        tx.update(&m)?;
    }
    Ok(())
}

/// The flavor a server's quota usage counts: the new one from the moment
/// a resize is asked ([`resize`]) until it is confirmed or reverted
/// ([`finish`]), the one it shows otherwise. A copy of a server that
/// another controller resizes (an edge site's, at its parent) has no job
/// here and counts the flavor that controller shows.
pub fn counted(s: &Server) -> &FlavorCopy {
    s.resize.as_ref().map_or(&s.flavor, |j| &j.new_flavor)
}

/// The flavor the node must apply for the server's current task: the new
/// one for `resize_prep`, the old one for `resize_reverting`.
pub fn flavor_for_task(s: &Server) -> &FlavorCopy {
    match (&s.resize, s.task_state.as_deref()) {
        (Some(j), Some(task::RESIZE_PREP)) => &j.new_flavor,
        (Some(j), Some(task::RESIZE_REVERTING)) => &j.old_flavor,
        _ => &s.flavor,
    }
}

/// What a node's report on a resize or migration step leaves to do once
/// its transaction is written.
#[derive(Default)]
pub struct Next {
    /// The task the server moves on to (its generation is bumped).
    pub task: Option<&'static str>,
    /// The claim the server keeps on its node, if it changes.
    pub settle: Option<BTreeMap<String, u64>>,
    /// The migration ended before confirmation: claims go back to the
    /// source (the migration's id).
    pub unmigrate: Option<String>,
    /// A transfer image to delete.
    pub drop_image: Option<String>,
    /// Another node to wake.
    pub notify: Option<String>,
    /// A claim to free (a finished live migration's, on its source).
    pub release: Option<String>,
}

fn recount(
    tx: &stratus_store::Tx,
    cur: &Server,
    from: &FlavorCopy,
    to: &FlavorCopy,
) -> Result<(), ApiError> {
    quotas::account(tx, &cur.project_id, &cur.user_id, from.vcpus, from.ram, -1)?;
    quotas::account(tx, &cur.project_id, &cur.user_id, to.vcpus, to.ram, 1)
}

/// Applies the node's report of a resize or migration step to `cur`
/// inside the report's transaction (the caller clears the task and then
/// sets [`Next::task`]).
pub fn finish(
    tx: &stratus_store::Tx,
    cur: &mut Server,
    task_name: &str,
    ok: bool,
) -> Result<Next, ApiError> {
    let Some(mut job) = cur.resize.clone() else {
        return Ok(Next::default());
    };
    if task_name == task::MIGRATING {
        return if job.live {
            finish_live(tx, cur, &job, ok)
        } else {
            Ok(Next::default())
        };
    }
    let mut next = Next::default();
    match (task_name, ok) {
        (task::RESIZE_PREP, true) => {
            cur.flavor = job.new_flavor.clone();
            cur.vm_state = vm::RESIZED.into();
            set_migration(tx, &job.migration_id, "finished")?;
        }
        (task::RESIZE_PREP, false) => {
            // Nothing changed on the node: back to the old flavor.
            recount(tx, cur, &job.new_flavor, &job.old_flavor)?;
            cur.vm_state = job.old_vm_state.clone();
            cur.resize = None;
            set_migration(tx, &job.migration_id, "error")?;
            next.settle = Some(server_resources(cur, &job.old_flavor));
        }
        // The source wrote the transfer image: on to the destination.
        (task::RESIZE_MIGRATING, true) => {
            cur.host = job.dest_host.clone();
            cur.node = job.dest_host.clone();
            if let Some(dest) = &job.dest_host {
                let aggs = tx.list::<Aggregate>(&StoreQuery::all())?;
                cur.availability_zone = Some(super::zones::zone_of(&aggs, dest));
            }
            set_migration(tx, &job.migration_id, "post-migrating")?;
            next.task = Some(task::RESIZE_FINISH);
            next.notify = job.dest_host.clone();
        }
        // The source kept (and restarted) the server.
        (task::RESIZE_MIGRATING, false) => {
            cur.resize = None;
            set_migration(tx, &job.migration_id, "error")?;
            next.unmigrate = Some(job.migration_id.clone());
            next.drop_image = job.transfer_image.clone();
        }
        (task::RESIZE_FINISH, true) => {
            cur.vm_state = vm::RESIZED.into();
            set_migration(tx, &job.migration_id, "finished")?;
            next.drop_image = job.transfer_image.take();
            cur.resize = Some(job);
        }
        // The destination could not boot it: back to the source, which
        // starts its copy again.
        (task::RESIZE_FINISH, false) => {
            cur.host = job.source_host.clone();
            cur.node = job.source_host.clone();
            cur.availability_zone = job.source_zone.clone();
            next.drop_image = job.transfer_image.take();
            next.unmigrate = Some(job.migration_id.clone());
            next.notify = job.source_host.clone();
            next.task = Some(task::RESIZE_REVERTING);
            job.failed = true;
            cur.resize = Some(job);
        }
        (task::RESIZE_REVERTING, true) => {
            if job.is_migration() {
                cur.availability_zone = job.source_zone.clone();
                let status = if job.failed { "error" } else { "reverted" };
                set_migration(tx, &job.migration_id, status)?;
            } else {
                recount(tx, cur, &job.new_flavor, &job.old_flavor)?;
                cur.flavor = job.old_flavor.clone();
                set_migration(tx, &job.migration_id, "reverted")?;
                next.settle = Some(server_resources(cur, &job.old_flavor));
            }
            cur.vm_state = job.old_vm_state.clone();
            cur.resize = None;
        }
        // A failed revert of a resize leaves it to confirm or revert again.
        (task::RESIZE_REVERTING, false) if !job.is_migration() => {}
        // The source could not start its copy again.
        (task::RESIZE_REVERTING, false) => {
            set_migration(tx, &job.migration_id, "error")?;
            cur.vm_state = vm::ERROR.into();
            cur.resize = None;
        }
        _ => {}
    }
    Ok(next)
}

/// The source's report on a live migration (`migrating`, see `live.rs`).
fn finish_live(
    tx: &stratus_store::Tx,
    cur: &mut Server,
    job: &ResizeJob,
    ok: bool,
) -> Result<Next, ApiError> {
    let mut next = Next::default();
    if ok {
        cur.host = job.dest_host.clone();
        cur.node = job.dest_host.clone();
        if let Some(dest) = &job.dest_host {
            let aggs = tx.list::<Aggregate>(&stratus_store::Query::all())?;
            cur.availability_zone = Some(super::zones::zone_of(&aggs, dest));
        }
        set_migration(tx, &job.migration_id, "completed")?;
        // The source reports its copy gone; the guest runs on (or stays
        // paused) at the destination.
        cur.power_state = if job.old_vm_state == vm::PAUSED {
            power::PAUSED
        } else {
            power::RUNNING
        };
        next.release = Some(job.migration_id.clone());
        next.notify = job.dest_host.clone();
    } else {
        // An abort an admin asked for ends as Nova's `cancelled`.
        let status = if job.abort { "cancelled" } else { "error" };
        set_migration(tx, &job.migration_id, status)?;
        next.unmigrate = Some(job.migration_id.clone());
        next.notify = job.dest_host.clone();
    }
    cur.resize = None;
    Ok(next)
}

/// `os-resetState` ends a resize or migration where it stands (inside the
/// reset's transaction): the server keeps the flavor it shows and the
/// node it is on; the migration ends in `error`. [`after_reset`] then
/// settles the claims and drops the transfer image.
pub fn reset(tx: &stratus_store::Tx, cur: &mut Server) -> Result<Option<ResizeJob>, ApiError> {
    let Some(job) = cur.resize.take() else {
        return Ok(None);
    };
    let shown = cur.flavor.clone();
    recount(tx, cur, &job.new_flavor, &shown)?;
    set_migration(tx, &job.migration_id, "error")?;
    Ok(Some(job))
}

/// After [`reset`]: the server claims its flavor on its node only.
pub fn after_reset(state: &AppState, id: &str, job: &ResizeJob) {
    release(state, &job.migration_id);
    if let Ok(Some(s)) = state.store.get::<Server>(id)
        && s.host.is_some()
    {
        settle_claim(state, id, server_resources(&s, &s.flavor));
    }
    if let Some(image) = &job.transfer_image {
        super::snapshots::drop_image(state, id, image);
    }
}

/// Carries out a [`Next`] after its transaction.
pub fn after(state: &AppState, id: &str, next: Next) {
    if let Some(resources) = next.settle {
        settle_claim(state, id, resources);
    }
    if let Some(m) = &next.unmigrate {
        unmigrate_claims(state, id, m);
    }
    if let Some(m) = &next.release {
        release(state, m);
    }
    if let Some(image) = &next.drop_image {
        super::snapshots::drop_image(state, id, image);
    }
    state.compute.notify(next.notify.as_deref());
}

/// Shrinks a server's claim after a resize ended (best effort: the
/// smaller claim always fits where the larger one was held).
pub fn settle_claim(state: &AppState, id: &str, resources: BTreeMap<String, u64>) {
    let Ok(Some(s)) = state.store.get::<Server>(id) else {
        return;
    };
    if let Err(e) = claim_on_node(state, &s, resources, |_| Ok(())) {
        tracing::warn!(server = %id, error = %e.message, "could not shrink the claim after a resize");
    }
}

/// A server with an unsettled migration is going away: the source's
/// claim (held by the migration) and the transfer image go too.
pub fn abandon_claims(state: &AppState, s: &Server) {
    if let Some(job) = &s.resize {
        release(state, &job.migration_id);
        if let Some(image) = &job.transfer_image {
            super::snapshots::drop_image(state, &s.id, image);
        }
    }
}

/// Releases what a deleted server's unfinished resize held (its migration
/// record is marked as such).
pub fn abandon(tx: &stratus_store::Tx, s: &Server) -> Result<(), ApiError> {
    if let Some(job) = &s.resize
        && let Some(m) = tx.get::<Migration>(&job.migration_id)?
        && !matches!(m.status.as_str(), "confirmed" | "reverted" | "error")
    {
        set_migration(tx, &job.migration_id, "error")?;
    }
    Ok(())
}

// ---- os-migrations ------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn larger_takes_the_max_of_each_class() {
        let a = BTreeMap::from([("VCPU".to_string(), 2), ("MEMORY_MB".to_string(), 512)]);
        let b = BTreeMap::from([
            ("VCPU".to_string(), 1),
            ("MEMORY_MB".to_string(), 1024),
            ("DISK_GB".to_string(), 5),
        ]);
        let m = larger(&a, &b);
        assert_eq!(m["VCPU"], 2);
        assert_eq!(m["MEMORY_MB"], 1024);
        assert_eq!(m["DISK_GB"], 5);
    }
}
