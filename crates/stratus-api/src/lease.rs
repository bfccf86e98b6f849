//! A lease in the store: the one controller process, among all those on
//! one database or SQLite file, that runs the singleton loops (the sweep
//! for servers nobody is scheduling, change-log compaction).
//!
//! The lease is one row of the store's `meta` table, `lease.<name>` =
//! `"<holder> <expires_ms>"`, taken and renewed in a write transaction
//! (serialised across processes, so two can never both take it). The
//! holder renews it every [`RENEW`]; anyone may take it once it has
//! expired, so when the holder dies (even by SIGKILL) another process has
//! it within [`TTL`] plus one renewal. A holder whose renewals fail stops
//! counting itself the holder a little before its lease can expire
//! anywhere ([`Lease::is_held`] uses its own monotonic clock from before
//! the write). Expiry times are wall-clock milliseconds: processes on
//! different machines need clocks agreeing to well within [`TTL`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stratus_store::{Store, StoreError};

/// How long a lease lasts without renewal.
pub const TTL: Duration = Duration::from_secs(3);
/// How often the holder renews it (and others look whether it expired).
pub const RENEW: Duration = Duration::from_secs(1);
/// Kept off the end of the local validity, for clock differences.
const MARGIN: Duration = Duration::from_millis(500);

/// One named lease, as this process sees it.
pub struct Lease {
    store: Arc<Store>,
    key: String,
    /// This process (a new id at every start).
    holder: String,
    /// Until when this process may act as the holder.
    held_until: Mutex<Option<Instant>>,
}

impl Lease {
    pub fn new(store: Arc<Store>, name: &str) -> Self {
        Lease {
            store,
            key: format!("lease.{name}"),
            holder: uuid::Uuid::new_v4().to_string(),
            held_until: Mutex::new(None),
        }
    }

    /// This process's holder id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Whether this process holds the lease now.
    pub fn is_held(&self) -> bool {
        self.held_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| Instant::now() < t)
    }

    /// Takes the lease if it is free or expired, or renews it if this
    /// process holds it; whether this process holds it now.
    pub fn try_hold(&self) -> Result<bool, StoreError> {
        let start = Instant::now();
        let now = now_ms();
        let other = |v: Option<String>| {
            v.as_deref()
                .and_then(parse)
                .is_some_and(|(h, exp)| h != self.holder && exp > now)
        };
        // Most attempts find another holder: a read, no write.
        let held = if other(self.store.meta_get(&self.key)?) {
            false
        } else {
            self.store.write(|tx| {
                if other(tx.meta_get(&self.key)?) {
                    return Ok::<_, StoreError>(false);
                }
                let until = now + TTL.as_millis() as i64;
                tx.meta_set(&self.key, &format!("{} {until}", self.holder))?;
                Ok(true)
            })?
        };
        *self.held_until.lock().unwrap_or_else(|e| e.into_inner()) =
            held.then(|| start + TTL - MARGIN);
        Ok(held)
    }

    /// Gives the lease up (on a clean shutdown), so another process takes
    /// it at its next look instead of after [`TTL`].
    pub fn release(&self) -> Result<(), StoreError> {
        *self.held_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.store.write(|tx| {
            let mine = tx
                .meta_get(&self.key)?
                .as_deref()
                .and_then(parse)
                .is_some_and(|(h, _)| h == self.holder);
            if mine {
                tx.meta_set(&self.key, &format!("{} 0", self.holder))?;
            }
            Ok(())
        })
    }
}

/// Keeps trying to take or renew `lease` every [`RENEW`], and calls
/// `gained` each time this process becomes the holder. Runs until the
/// process ends.
pub async fn keep(lease: Arc<Lease>, gained: impl Fn() + Send + Sync + 'static) {
    let gained = Arc::new(gained);
    let mut tick = tokio::time::interval(RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was = false;
    loop {
        tick.tick().await;
        let l = lease.clone();
        let g = gained.clone();
        let r = tokio::task::spawn_blocking(move || {
            let held = l.try_hold();
            if matches!(held, Ok(true)) && !was {
                g();
            }
            held
        })
        .await;
        let now = match r {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot renew the controller lease");
                lease.is_held()
            }
            Err(_) => return,
        };
        if now != was {
            if now {
                tracing::info!(
                    holder = lease.holder(),
                    "this controller holds the lease: it runs the singleton loops"
                );
            } else {
                tracing::info!("this controller no longer holds the lease");
            }
        }
        was = now;
    }
}

fn parse(v: &str) -> Option<(&str, i64)> {
    let (h, exp) = v.split_once(' ')?;
    Some((h, exp.parse().ok()?))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_it_moves_when_released_or_expired() {
        let first = Store::open_in_memory().unwrap();
        let path = first.path().unwrap().to_path_buf();
        let a = Lease::new(Arc::new(first), "t");
        let b = Lease::new(
            Arc::new(Store::open(&path, stratus_store::Durability::Normal).unwrap()),
            "t",
        );
        assert!(a.try_hold().unwrap());
        assert!(!b.try_hold().unwrap());
        assert!(a.try_hold().unwrap(), "the holder renews");
        assert!(a.is_held() && !b.is_held());
        a.release().unwrap();
        assert!(!a.is_held());
        assert!(b.try_hold().unwrap());
        assert!(!a.try_hold().unwrap());
        // The holder stops renewing (it died): the lease expires.
        std::thread::sleep(TTL + Duration::from_millis(100));
        assert!(!b.is_held());
        assert!(a.try_hold().unwrap());
        assert!(!b.try_hold().unwrap());
    }
}
