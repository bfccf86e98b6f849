//! Followers of the change log: every controller reads the store's log
//! a few times a second and brings its in-memory state up to date with
//! changes it did not make itself (another controller on the same
//! database, a change applied straight to the store as sync will). What
//! follows it today: agent wake-ups (`compute::service::on_change`),
//! identity's validation cache and revocations (`Identity::on_change`),
//! placement's index (`Placement::follow`) and the servers waiting for the
//! scheduler (`compute::scheduler::on_change`).
//! A process's own writers still update these at once; following the log
//! covers everyone else within a read interval.

use std::time::Duration;

use stratus_store::StoreError;

use crate::AppState;

/// Changes read per step.
const BATCH: usize = 1000;

/// Reads the change log every `every` from the newest revision at start,
/// and hands every change to the followers. Runs until the process ends.
pub async fn follow_changes(state: AppState, every: Duration) {
    let Some(mut pos) = newest(&state, every).await else {
        return;
    };
    state.sites.advance(pos);
    state.metrics.followed(pos);
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        loop {
            let st = state.clone();
            let r = tokio::task::spawn_blocking(move || st.store.changes_since(pos, BATCH)).await;
            let changes = match r {
                Ok(Ok(c)) => c,
                Ok(Err(StoreError::Compacted { .. })) => {
                    // Fell behind the log: start again from now, and let
                    // everything look again.
                    let Some(p) = newest(&state, every).await else {
                        return;
                    };
                    pos = p;
                    state.sites.advance(pos);
                    state.compute.notify_all();
                    state.compute.touch_all();
                    state.identity.invalidate();
                    let st = state.clone();
                    if let Ok(Err(e)) =
                        tokio::task::spawn_blocking(move || st.placement.refresh()).await
                    {
                        tracing::warn!(error = %e, "cannot bring placement up to date");
                    }
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the change log");
                    break;
                }
                Err(_) => return,
            };
            let full = changes.len() == BATCH;
            let after = pos;
            for c in &changes {
                pos = c.seq;
                crate::compute::service::on_change(&state, c);
                crate::compute::scheduler::on_change(&state, c);
                if c.kind == <crate::sites::Site as stratus_store::Record>::KIND {
                    state.sites.forget_routes();
                }
                state.identity.on_change(c);
                crate::volume::on_change(&state, c);
            }
            if !changes.is_empty() {
                // Placement's index moves over every change, so a write
                // transaction never has a long way to catch up.
                let st = state.clone();
                match tokio::task::spawn_blocking(move || st.placement.follow(after, &changes))
                    .await
                {
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot bring placement up to date"),
                    Err(_) => return,
                    Ok(Ok(())) => {}
                }
            }
            // Sites' exchanges wait on this to send what is new.
            state.sites.advance(pos);
            state.metrics.followed(pos);
            if !full {
                break;
            }
        }
    }
}

/// The newest revision, retried until the store answers.
async fn newest(state: &AppState, every: Duration) -> Option<i64> {
    loop {
        let st = state.clone();
        match tokio::task::spawn_blocking(move || st.store.last_revision()).await {
            Ok(Ok(p)) => return Some(p),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the change log; retrying"),
            Err(_) => return None,
        }
        tokio::time::sleep(every).await;
    }
}
