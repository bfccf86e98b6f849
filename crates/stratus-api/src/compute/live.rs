//! Live migration (`os-migrateLive`), as Nova's libvirt driver does it
//! with block migration (no shared storage), QEMU driven directly.
//!
//! 1. The API (admin) checks the server (a running or paused VM, no task,
//!    not locked, on a node with QEMU), has the scheduler pick (or check)
//!    a destination that runs VMs, and claims the flavor there for the
//!    migration; the claims change hands as in a cold migration (the
//!    server holds the destination, the migration the source). It records
//!    a [`Migration`] (`live-migration`, `preparing`) and puts the server
//!    into task `migrating` (status MIGRATING); 202.
//! 2. Pre-live-migration: the controller asks the destination's agent
//!    (its own listener, as for console output) to build the VM from the
//!    server's assignment (base image, disk, config drive) and start QEMU
//!    waiting for a migration stream; the agent answers with its port.
//!    The migration is then `running` and the source's task carries the
//!    address (`tcp:HOST:PORT`).
//! 3. The source's agent streams memory, devices and disk with QEMU's
//!    block migration, reporting progress (`server-migrations` shows the
//!    bytes), and removes its copy once the destination runs the guest;
//!    its report moves the server to the destination (`completed`) and
//!    frees the source's claim (`resize::finish`, with the other move
//!    operations' reports).
//!
//! A failure at any step leaves the server running where it was, ACTIVE,
//! with the migration in `error` and its claims back on the source; the
//! destination's half-built copy is reaped as a leftover.
//!
//! A VM's ports move with it: while it migrates, the destination's wiring
//! lists its ports too (a [`LiveIncoming`] record), so the taps are on the
//! destination's bridges, under the same rules, before QEMU starts there;
//! the ports stay bound to the source until the switch, when the
//! destination binds them and the source's taps are swept. Not yet:
//! containers (400, as Nova answers a driver that cannot), aborting or
//! An admin may abort a migration in progress (the guest runs on at the
//! source, the migration ends `cancelled`) or force it to complete (the
//! source lifts QEMU's downtime limit, so the rest goes in one pause).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;

use super::common::{action_event, check_locked, fetch_tx, record_action};
use super::model::{ComputeNode, LiveIncoming, Migration, ResizeJob, Server};
use super::states::wrong_state;
use super::states::{task, vm};
use crate::identity::policy::Ctx;
use crate::image::model::Image;
use crate::placement::ClaimError;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// The vm_states a server can be live-migrated from.
const FROM: &[&str] = &[vm::ACTIVE, vm::PAUSED];

/// How long the destination may take to get ready (it may download the
/// image first).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);

fn precheck(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Migration pre-check error: {why}"))
}

/// `os-migrateLive`: 202 once the migration is under way.
pub fn live_migrate(
    state: &AppState,
    ctx: &Ctx,
    s: &Server,
    want: Option<String>,
    rid: &str,
) -> Result<(), ApiError> {
    if s.task_state.is_some() || !FROM.contains(&s.vm_state.as_str()) || s.host.is_none() {
        return Err(wrong_state("os-migrateLive", s));
    }
    check_locked(ctx, s)?;
    super::states::refuse_with_volumes(s, "os-migrateLive")?;
    let source = s.host.clone().unwrap_or_default();
    let is_vm = state
        .store
        .get::<Image>(&s.image_ref)?
        .is_some_and(|i| i.boots_vm());
    let source_node = state.store.get::<ComputeNode>(&source)?;
    if !is_vm
        || !source_node
            .as_ref()
            .is_some_and(|n| n.driver.contains("qemu"))
    {
        return Err(precheck(format!(
            "instance {} is not a virtual machine on a QEMU node: only VMs are live-migrated (cold-migrate a container with `migrate`)",
            s.id
        )));
    }
    if let Some(h) = &want {
        let Some(node) = state.store.get::<ComputeNode>(h)? else {
            return Err(ApiError::bad_request(format!(
                "Compute host {h} could not be found."
            )));
        };
        if h == &source {
            return Err(precheck(format!(
                "Unable to migrate instance ({}) to current host ({h}).",
                s.id
            )));
        }
        if !node.driver.contains("qemu") {
            return Err(precheck(format!("host {h} runs no virtual machines")));
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
    let migration_id = uuid::Uuid::new_v4().to_string();
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
                return Err(wrong_state("os-migrateLive", &cur));
            }
            Migration::moving(
                &migration_id,
                &cur,
                "live-migration",
                &source,
                &dest,
                "preparing",
                now,
            )
            .insert(tx)?;
            cur.resize = Some(ResizeJob {
                migration_id: migration_id.clone(),
                old_flavor: cur.flavor.clone(),
                new_flavor: cur.flavor.clone(),
                old_vm_state: cur.vm_state.clone(),
                source_host: Some(source.clone()),
                dest_host: Some(dest.clone()),
                transfer_image: None,
                source_zone: cur.availability_zone.clone(),
                failed: false,
                live: true,
                live_uri: None,
                abort: false,
                force_complete: false,
            });
            if !cur.nics.is_empty() {
                tx.upsert(&LiveIncoming {
                    id: cur.id.clone(),
                    host: dest.clone(),
                })?;
            }
            cur.task_state = Some(task::MIGRATING.into());
            cur.generation += 1;
            cur.updated_us = now;
            tx.update(&cur)?;
            record_action(tx, &cur, "live-migration", ctx, rid)?;
            Ok(())
        });
    match result {
        Ok(()) => {}
        Err(ClaimError::Caller(e)) => return Err(e),
        Err(ClaimError::Placement(e)) => {
            return Err(ApiError::bad_request(format!(
                "No valid host was found. There is not enough room on {dest}: {e}"
            )));
        }
    }
    if let Err(e) = state.placement.swap_consumers(&s.id, &migration_id) {
        tracing::error!(server = %s.id, error = %e, "could not hand the claims over for a live migration");
    }
    let (st, id) = (state.clone(), s.id.clone());
    std::thread::spawn(move || {
        if let Err(e) = prepare(&st, &id) {
            tracing::warn!(server = %id, error = %e.message, "live migration could not start");
            fail(&st, &id, &e.message);
        }
    });
    Ok(())
}

/// Pre-live-migration: the destination builds the VM and waits; the
/// source's task gets the address.
fn prepare(state: &AppState, id: &str) -> Result<(), ApiError> {
    let Some(s) = state.store.get::<Server>(id)? else {
        return Ok(());
    };
    let Some(job) = s.resize.clone().filter(|j| j.live) else {
        return Ok(());
    };
    let dest = job.dest_host.clone().unwrap_or_default();
    let node = state
        .store
        .get::<ComputeNode>(&dest)?
        .ok_or_else(|| ApiError::conflict(format!("compute host {dest} is gone")))?;
    let url = node.agent_url.clone().ok_or_else(|| {
        ApiError::conflict(format!(
            "the agent of {dest} takes no requests from the controller"
        ))
    })?;
    let assignment = super::service::assignment(state, &s)?;
    let port = super::agent_client::prepare_incoming(
        &url,
        node.agent_key.as_deref().unwrap_or_default(),
        id,
        &assignment,
        PREPARE_TIMEOUT,
    )?;
    let host = super::agent_client::stream_host(&node.host_ip, &url)
        .ok_or_else(|| ApiError::conflict(format!("no host in the agent address {url}")))?;
    let uri = format!("tcp:{host}:{port}");
    let started = state.store.write(|tx| {
        let Some(mut cur) = tx.get::<Server>(id)? else {
            return Ok::<_, ApiError>(false);
        };
        let Some(j) = cur.resize.as_mut().filter(|j| {
            j.live
                && j.migration_id == job.migration_id
                && cur.task_state.as_deref() == Some(task::MIGRATING)
        }) else {
            return Ok(false);
        };
        j.live_uri = Some(uri.clone());
        cur.generation += 1;
        cur.updated_us = now_us();
        tx.update(&cur)?;
        super::resize::set_migration(tx, &job.migration_id, "running")?;
        Ok(true)
    })?;
    if started {
        state.compute.notify(job.source_host.as_deref());
    }
    Ok(())
}

/// The migration could not start: the server stays where it runs.
fn fail(state: &AppState, id: &str, why: &str) {
    let r = state.store.write(|tx| {
        let Some(mut cur) = tx.get::<Server>(id)? else {
            return Ok::<_, ApiError>(None);
        };
        if !cur.resize.as_ref().is_some_and(|j| j.live) {
            return Ok(None);
        }
        end_unstreamed(tx, &mut cur, "error", why).map(Some)
    });
    match r {
        Ok(Some(job)) => after_unstreamed(state, id, &job),
        Ok(None) => {}
        Err(e) => {
            tracing::error!(server = %id, error = %e.message, "could not end a failed live migration")
        }
    }
}

/// Ends server `cur`'s live migration before any stream began (inside
/// the caller's write): the server runs on where it is, the migration
/// ends in `status`. [`after_unstreamed`] then settles the claims.
fn end_unstreamed(
    tx: &stratus_store::Tx,
    cur: &mut Server,
    status: &str,
    why: &str,
) -> Result<ResizeJob, ApiError> {
    let job = cur
        .resize
        .take()
        .ok_or_else(|| ApiError::internal("no migration to end"))?;
    cur.task_state = None;
    cur.generation += 1;
    cur.updated_us = now_us();
    tx.update(cur)?;
    super::resize::set_migration(tx, &job.migration_id, status)?;
    action_event(
        tx,
        &cur.id,
        "compute_pre_live_migration",
        false,
        Some(why),
        job.dest_host.as_deref(),
    )?;
    Ok(job)
}

fn after_unstreamed(state: &AppState, id: &str, job: &ResizeJob) {
    super::resize::after(
        state,
        id,
        super::resize::Next {
            unmigrate: Some(job.migration_id.clone()),
            notify: job.source_host.clone(),
            ..Default::default()
        },
    );
    state.compute.notify(job.dest_host.as_deref());
}

/// An admin's abort (`DELETE /servers/{id}/migrations/{mid}`, 2.24+) or
/// force-complete (`force_complete`, 2.22+) of live migration `mid`
/// (Nova's integer id). An abort before the stream began ends it here;
/// otherwise the source's agent is told (its assignment), cancels the
/// stream (the guest runs on at the source, the migration ends
/// `cancelled`) or lifts the downtime limit so the rest goes in one
/// pause.
pub fn control(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    mid: &str,
    abort: bool,
    queued_too: bool,
) -> Result<(), ApiError> {
    let method = if abort {
        "abort live migration"
    } else {
        "force complete"
    };
    let ended = state.store.write(|tx| {
        let mut cur = fetch_tx(tx, ctx, id)?;
        let m = tx
            .list::<Migration>(&stratus_store::Query::parent(id))?
            .into_iter()
            .find(|m| m.seq.to_string() == mid && in_progress(m))
            .ok_or_else(|| not_in_progress(id, mid))?;
        let Some(job) = cur
            .resize
            .as_mut()
            .filter(|j| j.live && j.migration_id == m.id)
        else {
            return Err(not_in_progress(id, mid));
        };
        if m.status != "running" && !(abort && queued_too) {
            return Err(ApiError::bad_request(format!(
                "Migration {mid} state of instance {id} is {}. Cannot {method} while the migration is in this state.",
                m.status
            )));
        }
        if abort && job.live_uri.is_none() {
            let job = end_unstreamed(tx, &mut cur, "cancelled", "aborted by an admin")?;
            return Ok(Some(job));
        }
        if abort {
            job.abort = true;
        } else {
            job.force_complete = true;
        }
        cur.updated_us = now_us();
        tx.update(&cur)?;
        Ok(None)
    })?;
    match ended {
        Some(job) => after_unstreamed(state, id, &job),
        None => {
            let source = state.store.get::<Server>(id)?.and_then(|s| s.host);
            state.compute.notify(source.as_deref());
        }
    }
    Ok(())
}

/// A progress report from the source: the bytes go on the migration.
pub fn progress(
    state: &AppState,
    id: &str,
    generation: u64,
    bytes: stratus_wire::MigrationBytes,
) -> Result<(), ApiError> {
    state.store.write(|tx| {
        let Some(cur) = tx.get::<Server>(id)? else {
            return Ok::<_, ApiError>(());
        };
        let Some(job) = cur.resize.as_ref().filter(|j| j.live) else {
            return Ok(());
        };
        if cur.generation != generation {
            return Ok(());
        }
        if let Some(mut m) = tx.get::<Migration>(&job.migration_id)? {
            m.progress = Some(bytes);
            m.updated_us = now_us();
            tx.update(&m)?;
        }
        Ok(())
    })
}

/// Nova's in-progress migrations of a server (`server-migrations`).
pub fn in_progress(m: &Migration) -> bool {
    m.migration_type == "live-migration"
        && matches!(m.status.as_str(), "queued" | "preparing" | "running")
}

/// A 404 in Nova's words for a migration that is not in progress.
pub fn not_in_progress(server: &str, mid: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("In-progress live migration {mid} is not found for server {server}."),
    )
}
