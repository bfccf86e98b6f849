//! Placement: resource providers, their inventories, traits and
//! aggregates, and the allocations of consumers against them.
//!
//! Everything is kept as store documents (so it reaches the change log)
//! and mirrored in an in-memory index that answers candidate queries
//! without parsing documents. The index follows the change log: every
//! change (claim, inventory, generation, name) first brings it up to the
//! newest commit *inside* its store transaction, where no other writer of
//! any process can commit, and decides from it there. So two concurrent
//! claims, in one process or in two controllers on one database, can never
//! overcommit a provider or pass the same generation check twice. Reads
//! (candidates, usages) use the index as the log follower last left it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use stratus_store::{Query, Record, Store, Tx};

use crate::ApiError;

mod api;
pub(crate) use api::fault_response;
pub use api::router;

/// One resource class of a provider, as Placement models it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub total: u64,
    pub reserved: u64,
    pub min_unit: u64,
    pub max_unit: u64,
    pub step_size: u64,
    pub allocation_ratio: f64,
}

impl Inventory {
    /// What can be allocated: (total - reserved) * allocation_ratio.
    pub fn capacity(&self) -> u64 {
        ((self.total.saturating_sub(self.reserved)) as f64 * self.allocation_ratio) as u64
    }

    /// Whether `amount` is a valid single allocation of this class.
    pub fn valid_amount(&self, amount: u64) -> bool {
        amount >= self.min_unit.max(1)
            && amount <= self.max_unit
            && amount.is_multiple_of(self.step_size.max(1))
    }
}

/// A resource provider (a compute node, for now).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provider {
    /// The provider's uuid.
    pub id: String,
    pub name: String,
    pub generation: u64,
    #[serde(default)]
    pub inventories: BTreeMap<String, Inventory>,
    #[serde(default)]
    pub traits: Vec<String>,
    #[serde(default)]
    pub aggregates: Vec<String>,
}

record!(
    Provider,
    "resource_provider",
    name = |p| Some(&p.name),
    unique = |p| Some(p.name.clone())
);

/// What one consumer holds: provider -> class -> amount.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Allocation {
    /// The consumer's uuid.
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub generation: u64,
    pub allocations: BTreeMap<String, BTreeMap<String, u64>>,
}

record!(Allocation, "allocation", owner = |a| Some(&a.project_id));

/// A request for allocation candidates.
#[derive(Debug, Clone, Default)]
pub struct CandidateRequest {
    pub resources: BTreeMap<String, u64>,
    pub required_traits: Vec<String>,
    pub forbidden_traits: Vec<String>,
    /// AND of ORs of aggregate uuids.
    pub member_of: Vec<Vec<String>>,
    pub in_tree: Option<String>,
    pub limit: Option<usize>,
}

/// A provider that can hold a request now.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub provider: String,
    pub name: String,
    pub free: BTreeMap<String, u64>,
    pub capacity: BTreeMap<String, u64>,
    pub used: BTreeMap<String, u64>,
    pub traits: Vec<String>,
    pub aggregates: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("resource provider {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("not enough {class} on provider {provider}")]
    Capacity { provider: String, class: String },
    #[error("{0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(String),
}

impl From<stratus_store::StoreError> for PlacementError {
    fn from(e: stratus_store::StoreError) -> Self {
        PlacementError::Store(e.to_string())
    }
}

impl From<PlacementError> for ApiError {
    fn from(e: PlacementError) -> Self {
        match e {
            PlacementError::NotFound(_) => {
                ApiError::new(axum::http::StatusCode::NOT_FOUND, e.to_string())
            }
            PlacementError::Conflict(_) | PlacementError::Capacity { .. } => {
                ApiError::conflict(e.to_string())
            }
            PlacementError::Invalid(_) => ApiError::bad_request(e.to_string()),
            PlacementError::Store(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// One consumer's claim in [`Placement::claim_batch`].
#[derive(Debug, Clone)]
pub struct ClaimItem {
    pub consumer: String,
    pub project_id: String,
    pub user_id: String,
    pub allocs: BTreeMap<String, BTreeMap<String, u64>>,
}

/// What became of one item of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Claimed,
    /// The provider had no room left (or the consumer already holds
    /// allocations): try another.
    NoCapacity,
    /// The caller chose not to keep it.
    Skipped,
}

/// A claim refused by placement, or by the caller's own writes.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError<E> {
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error("caller refused the claim")]
    Caller(E),
}

/// The in-memory index: providers and their usage, as of change-log
/// revision `seq`. It follows the log (see [`Placement::refresh`]), so
/// writes of other processes reach it too.
#[derive(Default)]
struct Index {
    providers: HashMap<String, Provider>,
    /// provider -> class -> used.
    usage: HashMap<String, BTreeMap<String, u64>>,
    allocations: HashMap<String, Allocation>,
    /// The newest change-log revision applied.
    seq: i64,
    /// Set when the index may hold writes that never committed: the next
    /// change reloads it.
    stale: bool,
}

/// Change-log entries read per step when catching up.
const CATCH_UP: usize = 1000;

impl Index {
    fn apply(&mut self, a: &Allocation, sign: i64) {
        for (rp, classes) in &a.allocations {
            let u = self.usage.entry(rp.clone()).or_default();
            for (c, n) in classes {
                let e = u.entry(c.clone()).or_default();
                *e = if sign > 0 {
                    *e + n
                } else {
                    e.saturating_sub(*n)
                };
            }
        }
    }

    fn used(&self, rp: &str, class: &str) -> u64 {
        self.usage
            .get(rp)
            .and_then(|u| u.get(class))
            .copied()
            .unwrap_or(0)
    }

    /// Replaces a consumer's allocations (idempotent: a change read twice
    /// counts once).
    fn put_allocation(&mut self, a: Allocation) {
        self.remove_allocation(&a.id.clone());
        self.apply(&a, 1);
        self.allocations.insert(a.id.clone(), a);
    }

    fn remove_allocation(&mut self, id: &str) {
        if let Some(old) = self.allocations.remove(id) {
            self.apply(&old, -1);
        }
    }

    /// Starts again from every provider and allocation at revision `seq`.
    fn reload(&mut self, providers: Vec<Provider>, allocations: Vec<Allocation>, seq: i64) {
        *self = Index::default();
        for p in providers {
            self.providers.insert(p.id.clone(), p);
        }
        for a in allocations {
            self.put_allocation(a);
        }
        self.seq = seq;
    }

    /// Applies one change-log entry (other kinds only move `seq`).
    fn on_change(&mut self, c: &stratus_store::Change) -> Result<(), stratus_store::StoreError> {
        match (c.kind.as_str(), c.body.as_deref()) {
            (Provider::KIND, Some(b)) => {
                let p: Provider = serde_json::from_str(b)?;
                self.providers.insert(p.id.clone(), p);
            }
            (Provider::KIND, None) => {
                self.providers.remove(&c.id);
                self.usage.remove(&c.id);
            }
            (Allocation::KIND, Some(b)) => self.put_allocation(serde_json::from_str(b)?),
            (Allocation::KIND, None) => self.remove_allocation(&c.id),
            _ => {}
        }
        self.seq = c.seq;
        Ok(())
    }

    /// Brings the index up to the newest change inside a write
    /// transaction: with the writer held nobody else can commit, so what
    /// is decided from the index until the commit is exact, across every
    /// process on the store.
    fn catch_up_tx(&mut self, tx: &Tx) -> Result<(), stratus_store::StoreError> {
        if !self.stale {
            loop {
                match tx.changes_since(self.seq, CATCH_UP) {
                    Ok(changes) => {
                        for c in &changes {
                            self.on_change(c)?;
                        }
                        if changes.len() < CATCH_UP {
                            return Ok(());
                        }
                    }
                    Err(stratus_store::StoreError::Compacted { .. }) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        let seq = tx.last_revision()?;
        self.reload(
            tx.list::<Provider>(&Query::all())?,
            tx.list::<Allocation>(&Query::all())?,
            seq,
        );
        Ok(())
    }
}

/// The placement service held in [`crate::Inner`].
pub struct Placement {
    store: Arc<Store>,
    index: RwLock<Index>,
}

/// Why a change through [`Placement::change`] failed.
enum Fail<E> {
    Store(stratus_store::StoreError),
    Placement(PlacementError),
    Caller(E),
}

impl<E> From<stratus_store::StoreError> for Fail<E> {
    fn from(e: stratus_store::StoreError) -> Self {
        Fail::Store(e)
    }
}

impl<E> From<PlacementError> for Fail<E> {
    fn from(e: PlacementError) -> Self {
        Fail::Placement(e)
    }
}

impl<E> From<Fail<E>> for ClaimError<E> {
    fn from(f: Fail<E>) -> Self {
        match f {
            Fail::Store(e) => ClaimError::Placement(e.into()),
            Fail::Placement(e) => ClaimError::Placement(e),
            Fail::Caller(e) => ClaimError::Caller(e),
        }
    }
}

impl From<Fail<std::convert::Infallible>> for PlacementError {
    fn from(f: Fail<std::convert::Infallible>) -> Self {
        match f {
            Fail::Store(e) => e.into(),
            Fail::Placement(e) => e,
            Fail::Caller(never) => match never {},
        }
    }
}

type Plain<T> = Result<T, Fail<std::convert::Infallible>>;

impl Placement {
    /// Loads every provider and allocation into the index.
    pub fn open(store: Arc<Store>) -> Result<Self, ApiError> {
        let p = Placement {
            store,
            index: RwLock::new(Index {
                stale: true,
                ..Index::default()
            }),
        };
        p.refresh()?;
        Ok(p)
    }

    /// Applies the change-log entries written since the index was last
    /// brought up to date (by any process); the change-log follower calls
    /// it, and the scheduler before it reads candidates.
    pub fn refresh(&self) -> Result<(), PlacementError> {
        let mut idx = self.lock();
        if !idx.stale {
            loop {
                match self.store.changes_since(idx.seq, CATCH_UP) {
                    Ok(changes) => {
                        for c in &changes {
                            idx.on_change(c)?;
                        }
                        if changes.len() < CATCH_UP {
                            return Ok(());
                        }
                    }
                    Err(stratus_store::StoreError::Compacted { .. }) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let snap = self.store.snapshot(&[Provider::KIND, Allocation::KIND])?;
        let (mut providers, mut allocations) = (Vec::new(), Vec::new());
        for d in &snap.documents {
            if d.kind == Provider::KIND {
                providers.push(serde_json::from_str(&d.body).map_err(|e| {
                    PlacementError::Store(format!("resource provider {}: {e}", d.id))
                })?);
            } else {
                allocations.push(
                    serde_json::from_str(&d.body)
                        .map_err(|e| PlacementError::Store(format!("allocation {}: {e}", d.id)))?,
                );
            }
        }
        idx.reload(providers, allocations, snap.revision);
        Ok(())
    }

    /// Applies `changes`, every change-log entry after revision `after`
    /// up to the last of them (as the log follower reads them); when the
    /// index is further behind than `after`, reads what it lacks itself.
    pub fn follow(
        &self,
        after: i64,
        changes: &[stratus_store::Change],
    ) -> Result<(), PlacementError> {
        {
            let mut idx = self.lock();
            if !idx.stale && idx.seq >= after {
                for c in changes {
                    if c.seq > idx.seq {
                        idx.on_change(c)?;
                    }
                }
                return Ok(());
            }
        }
        self.refresh()
    }

    /// Runs `f` in one store transaction with the index brought up to the
    /// newest change first (so `f` decides from exact usage, names and
    /// generations, whoever wrote them) and then to `f`'s own writes.
    fn change<R, E>(
        &self,
        f: impl FnOnce(&Index, &Tx) -> Result<R, Fail<E>>,
    ) -> Result<R, Fail<E>> {
        let mut idx = self.lock();
        let mut own_applied = false;
        let out = self.store.write(|tx| {
            idx.catch_up_tx(tx)?;
            let r = f(&idx, tx)?;
            own_applied = true;
            idx.catch_up_tx(tx)?;
            Ok(r)
        });
        if out.is_err() && own_applied {
            // The index may hold writes that were rolled back.
            idx.stale = true;
        }
        out
    }

    /// The index for a change (checks and writes under it).
    fn lock(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The index for reading; readers do not wait on each other.
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the provider if missing (by uuid), renames it if needed.
    pub fn ensure_provider(&self, uuid: &str, name: &str) -> Result<(), PlacementError> {
        // Nothing to write (the usual case): no write transaction.
        if self
            .read()
            .providers
            .get(uuid)
            .is_some_and(|p| p.name == name)
        {
            return Ok(());
        }
        Ok(self.change(|idx, tx| -> Plain<()> {
            match idx.providers.get(uuid) {
                Some(p) if p.name == name => Ok(()),
                Some(p) => {
                    let mut p = p.clone();
                    p.name = name.to_string();
                    p.generation += 1;
                    tx.upsert(&p)?;
                    Ok(())
                }
                None => {
                    if idx.providers.values().any(|p| p.name == name) {
                        return Err(PlacementError::Conflict(format!(
                            "Conflicting resource provider name: {name} already exists."
                        ))
                        .into());
                    }
                    tx.upsert(&Provider {
                        id: uuid.to_string(),
                        name: name.to_string(),
                        generation: 0,
                        inventories: BTreeMap::new(),
                        traits: vec![],
                        aggregates: vec![],
                    })?;
                    Ok(())
                }
            }
        })?)
    }

    /// Replaces the provider's inventories; refuses to shrink a class
    /// below what is allocated.
    pub fn set_inventories(
        &self,
        uuid: &str,
        inv: &BTreeMap<String, Inventory>,
    ) -> Result<(), PlacementError> {
        Ok(self.change(|idx, tx| -> Plain<()> {
            let mut p = idx
                .providers
                .get(uuid)
                .cloned()
                .ok_or_else(|| PlacementError::NotFound(uuid.to_string()))?;
            for (class, used) in idx.usage.get(uuid).cloned().unwrap_or_default() {
                if used == 0 {
                    continue;
                }
                match inv.get(&class) {
                    None => {
                        return Err(PlacementError::Conflict(format!(
                            "Inventory for {class} on resource provider {uuid} in use."
                        ))
                        .into());
                    }
                    Some(i) if i.capacity() < used => {
                        tracing::warn!(
                            provider = uuid,
                            class,
                            used,
                            capacity = i.capacity(),
                            "inventory now below what is allocated"
                        );
                    }
                    _ => {}
                }
            }
            for (class, i) in inv {
                if i.step_size == 0 || i.min_unit > i.max_unit || i.allocation_ratio <= 0.0 {
                    return Err(
                        PlacementError::Invalid(format!("bad inventory for {class}")).into(),
                    );
                }
            }
            p.inventories = inv.clone();
            p.generation += 1;
            tx.upsert(&p)?;
            Ok(())
        })?)
    }

    pub fn set_traits(&self, uuid: &str, traits: &[String]) -> Result<(), PlacementError> {
        let mut want = traits.to_vec();
        want.sort();
        want.dedup();
        // Nothing to write (the usual case): no write transaction.
        if self
            .read()
            .providers
            .get(uuid)
            .is_some_and(|p| p.traits == want)
        {
            return Ok(());
        }
        Ok(self.change(|idx, tx| -> Plain<()> {
            let mut p = idx
                .providers
                .get(uuid)
                .cloned()
                .ok_or_else(|| PlacementError::NotFound(uuid.to_string()))?;
            let mut t = traits.to_vec();
            t.sort();
            t.dedup();
            if p.traits == t {
                return Ok(());
            }
            p.traits = t;
            p.generation += 1;
            tx.upsert(&p)?;
            Ok(())
        })?)
    }

    pub fn set_aggregates(&self, uuid: &str, aggs: &[String]) -> Result<(), PlacementError> {
        Ok(self.change(|idx, tx| -> Plain<()> {
            let mut p = idx
                .providers
                .get(uuid)
                .cloned()
                .ok_or_else(|| PlacementError::NotFound(uuid.to_string()))?;
            p.aggregates = aggs.to_vec();
            p.generation += 1;
            tx.upsert(&p)?;
            Ok(())
        })?)
    }

    pub fn delete_provider(&self, uuid: &str) -> Result<(), PlacementError> {
        Ok(self.change(|idx, tx| -> Plain<()> {
            if idx
                .usage
                .get(uuid)
                .is_some_and(|u| u.values().any(|v| *v > 0))
            {
                return Err(PlacementError::Conflict(format!(
                    "Unable to delete resource provider {uuid}: it has allocations"
                ))
                .into());
            }
            tx.delete::<Provider>(uuid)?;
            Ok(())
        })?)
    }

    /// Providers that can hold `req` now, with their free capacity.
    pub fn candidates(&self, req: &CandidateRequest) -> Result<Vec<Candidate>, PlacementError> {
        let idx = self.read();
        let mut out = Vec::new();
        for p in idx.providers.values() {
            if req.in_tree.as_deref().is_some_and(|t| t != p.id) {
                continue;
            }
            if !req.required_traits.iter().all(|t| p.traits.contains(t))
                || req.forbidden_traits.iter().any(|t| p.traits.contains(t))
            {
                continue;
            }
            if !req
                .member_of
                .iter()
                .all(|any| any.iter().any(|a| p.aggregates.contains(a)))
            {
                continue;
            }
            let mut free = BTreeMap::new();
            let mut capacity = BTreeMap::new();
            let mut used = BTreeMap::new();
            let mut fits = true;
            for (class, inv) in &p.inventories {
                let cap = inv.capacity();
                let u = idx.used(&p.id, class);
                free.insert(class.clone(), cap.saturating_sub(u));
                capacity.insert(class.clone(), cap);
                used.insert(class.clone(), u);
            }
            for (class, amount) in &req.resources {
                match p.inventories.get(class) {
                    Some(inv) if inv.valid_amount(*amount) && free[class] >= *amount => {}
                    _ => {
                        fits = false;
                        break;
                    }
                }
            }
            if fits {
                out.push(Candidate {
                    provider: p.id.clone(),
                    name: p.name.clone(),
                    free,
                    capacity,
                    used,
                    traits: p.traits.clone(),
                    aggregates: p.aggregates.clone(),
                });
            }
        }
        if let Some(l) = req.limit {
            out.sort_by(|a, b| a.name.cmp(&b.name));
            out.truncate(l);
        }
        Ok(out)
    }

    /// Claims for many new consumers in one store transaction (one disk
    /// sync for the lot). Each item is checked, inside the transaction,
    /// against the usage every process committed plus the items taken
    /// before it; `also(tx, i)` runs for each item that fits and returns
    /// whether to keep it (it must write nothing when it returns false).
    /// An error from `also` aborts the whole batch.
    pub fn claim_batch<E>(
        &self,
        items: &[ClaimItem],
        mut also: impl FnMut(&Tx, usize) -> Result<bool, E>,
    ) -> Result<Vec<Outcome>, ClaimError<E>> {
        Ok(self.change(|idx, tx| -> Result<Vec<Outcome>, Fail<E>> {
            let mut extra: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
            let mut outcomes = vec![Outcome::NoCapacity; items.len()];
            for (i, it) in items.iter().enumerate() {
                let fits = !idx.allocations.contains_key(&it.consumer)
                    && it.allocs.iter().all(|(rp, classes)| {
                        let Some(p) = idx.providers.get(rp) else {
                            return false;
                        };
                        classes.iter().all(|(class, amount)| {
                            p.inventories.get(class).is_some_and(|inv| {
                                let pending = extra
                                    .get(rp)
                                    .and_then(|m| m.get(class))
                                    .copied()
                                    .unwrap_or(0);
                                inv.valid_amount(*amount)
                                    && idx.used(rp, class) + pending + amount <= inv.capacity()
                            })
                        })
                    });
                if !fits {
                    continue;
                }
                if !also(tx, i).map_err(Fail::Caller)? {
                    outcomes[i] = Outcome::Skipped;
                    continue;
                }
                for (rp, classes) in &it.allocs {
                    let m = extra.entry(rp.clone()).or_default();
                    for (c, n) in classes {
                        *m.entry(c.clone()).or_default() += n;
                    }
                }
                tx.upsert(&Allocation {
                    id: it.consumer.clone(),
                    project_id: it.project_id.clone(),
                    user_id: it.user_id.clone(),
                    generation: 1,
                    allocations: it.allocs.clone(),
                })?;
                outcomes[i] = Outcome::Claimed;
            }
            Ok(outcomes)
        })?)
    }

    /// Atomically claims `allocs` for `consumer` (replacing what it held)
    /// and runs `also(tx)` in the same store transaction. Nothing is
    /// written, and the index is untouched, if any check or `also` fails.
    pub fn claim<R, E>(
        &self,
        consumer: &str,
        project_id: &str,
        user_id: &str,
        allocs: &BTreeMap<String, BTreeMap<String, u64>>,
        also: impl FnOnce(&Tx) -> Result<R, E>,
    ) -> Result<R, ClaimError<E>> {
        Ok(self.change(|idx, tx| -> Result<R, Fail<E>> {
            let alloc = checked(idx, consumer, project_id, user_id, allocs, None)?;
            tx.upsert(&alloc)?;
            also(tx).map_err(Fail::Caller)
        })?)
    }

    /// Exchanges what two consumers hold, in one store transaction (either
    /// may hold nothing). Usage is unchanged, so nothing is checked.
    pub fn swap_consumers(&self, a: &str, b: &str) -> Result<(), PlacementError> {
        Ok(self.change(|idx, tx| -> Plain<()> {
            let rekey = |x: Option<Allocation>, to: &str| {
                x.map(|x| Allocation {
                    id: to.to_string(),
                    generation: x.generation + 1,
                    ..x
                })
            };
            let new_b = rekey(idx.allocations.get(a).cloned(), b);
            let new_a = rekey(idx.allocations.get(b).cloned(), a);
            for (id, new) in [(a, &new_a), (b, &new_b)] {
                match new {
                    Some(n) => {
                        tx.upsert(n)?;
                    }
                    None => {
                        if idx.allocations.contains_key(id) {
                            tx.delete::<Allocation>(id)?;
                        }
                    }
                }
            }
            Ok(())
        })?)
    }

    /// Deletes a consumer's allocations (no-op if it has none).
    pub fn release(&self, consumer: &str) -> Result<(), PlacementError> {
        Ok(self.change(|idx, tx| -> Plain<()> {
            if idx.allocations.contains_key(consumer) {
                tx.delete::<Allocation>(consumer)?;
            }
            Ok(())
        })?)
    }

    /// Every provider, sorted by name.
    pub fn providers(&self) -> Vec<Provider> {
        let mut v: Vec<Provider> = self.read().providers.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn provider(&self, uuid: &str) -> Option<Provider> {
        self.read().providers.get(uuid).cloned()
    }

    /// What is allocated on a provider, by class.
    pub fn usage(&self, uuid: &str) -> BTreeMap<String, u64> {
        self.read().usage.get(uuid).cloned().unwrap_or_default()
    }

    pub fn allocation(&self, consumer: &str) -> Option<Allocation> {
        self.read().allocations.get(consumer).cloned()
    }

    /// The allocations held against one provider, by consumer.
    pub fn provider_allocations(&self, uuid: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.read()
            .allocations
            .values()
            .filter_map(|a| a.allocations.get(uuid).map(|c| (a.id.clone(), c.clone())))
            .collect()
    }

    /// What a project (and optionally one user) holds, by class.
    pub fn project_usage(&self, project: &str, user: Option<&str>) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for a in self.read().allocations.values() {
            if a.project_id != project || user.is_some_and(|u| u != a.user_id) {
                continue;
            }
            for classes in a.allocations.values() {
                for (c, n) in classes {
                    *out.entry(c.clone()).or_default() += n;
                }
            }
        }
        out
    }

    /// Creates a provider with a name (and uuid, else a new one).
    pub fn create_provider(
        &self,
        uuid: Option<&str>,
        name: &str,
    ) -> Result<Provider, PlacementError> {
        let id = uuid
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Ok(self.change(|idx, tx| -> Plain<Provider> {
            if idx.providers.values().any(|p| p.name == name) {
                return Err(PlacementError::Conflict(format!(
                    "Conflicting resource provider name: {name} already exists."
                ))
                .into());
            }
            if idx.providers.contains_key(&id) {
                return Err(PlacementError::Conflict(format!(
                    "Conflicting resource provider uuid: {id} already exists."
                ))
                .into());
            }
            let p = Provider {
                id: id.clone(),
                name: name.to_string(),
                generation: 0,
                inventories: BTreeMap::new(),
                traits: vec![],
                aggregates: vec![],
            };
            tx.upsert(&p)?;
            Ok(p)
        })?)
    }

    /// Changes a provider if its generation is `expect` (when given);
    /// bumps the generation.
    pub fn update_provider(
        &self,
        uuid: &str,
        expect: Option<u64>,
        f: impl FnOnce(&mut Provider, &BTreeMap<String, u64>) -> Result<(), PlacementError>,
    ) -> Result<Provider, PlacementError> {
        Ok(self.change(|idx, tx| -> Plain<Provider> {
            let mut p = idx
                .providers
                .get(uuid)
                .cloned()
                .ok_or_else(|| PlacementError::NotFound(uuid.to_string()))?;
            if let Some(g) = expect
                && g != p.generation
            {
                return Err(PlacementError::Conflict(format!(
                    "resource provider generation conflict: {uuid} is at generation {}, not {g}",
                    p.generation
                ))
                .into());
            }
            let used = idx.usage.get(uuid).cloned().unwrap_or_default();
            f(&mut p, &used)?;
            if idx
                .providers
                .values()
                .any(|o| o.id != p.id && o.name == p.name)
            {
                return Err(PlacementError::Conflict(format!(
                    "Conflicting resource provider name: {} already exists.",
                    p.name
                ))
                .into());
            }
            p.generation += 1;
            tx.upsert(&p)?;
            Ok(p)
        })?)
    }

    /// Like [`Placement::claim`] with Placement's consumer generation
    /// check: `expect` None skips it, Some(None) means a new consumer.
    pub fn claim_checked(
        &self,
        consumer: &str,
        project_id: &str,
        user_id: &str,
        allocs: &BTreeMap<String, BTreeMap<String, u64>>,
        expect: Option<Option<u64>>,
    ) -> Result<(), PlacementError> {
        Ok(self.change(|idx, tx| -> Plain<()> {
            if allocs.is_empty() {
                consumer_generation(idx, consumer, expect)?;
                if idx.allocations.contains_key(consumer) {
                    tx.delete::<Allocation>(consumer)?;
                }
                return Ok(());
            }
            let alloc = checked(idx, consumer, project_id, user_id, allocs, expect)?;
            tx.upsert(&alloc)?;
            Ok(())
        })?)
    }

    pub fn allocations_of(&self, consumer: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.read()
            .allocations
            .get(consumer)
            .map(|a| a.allocations.clone())
            .unwrap_or_default()
    }
}

/// Placement's consumer generation check: `expect` None skips it,
/// Some(None) means a new consumer.
fn consumer_generation(
    idx: &Index,
    consumer: &str,
    expect: Option<Option<u64>>,
) -> Result<(), PlacementError> {
    if let Some(e) = expect {
        let have = idx.allocations.get(consumer).map(|a| a.generation);
        if have != e {
            return Err(PlacementError::Conflict(format!(
                "consumer generation conflict - expected {:?} but got {:?}",
                e, have
            )));
        }
    }
    Ok(())
}

/// The allocation `consumer` gets for `allocs` (replacing what it held),
/// if every provider has room for it; checked against the index, which
/// [`Placement::change`] has brought up to the newest commit.
fn checked(
    idx: &Index,
    consumer: &str,
    project_id: &str,
    user_id: &str,
    allocs: &BTreeMap<String, BTreeMap<String, u64>>,
    expect: Option<Option<u64>>,
) -> Result<Allocation, PlacementError> {
    consumer_generation(idx, consumer, expect)?;
    let previous = idx.allocations.get(consumer);
    for (rp, classes) in allocs {
        let p = idx
            .providers
            .get(rp)
            .ok_or_else(|| PlacementError::NotFound(rp.clone()))?;
        for (class, amount) in classes {
            let inv = p
                .inventories
                .get(class)
                .ok_or_else(|| PlacementError::Capacity {
                    provider: rp.clone(),
                    class: class.clone(),
                })?;
            if !inv.valid_amount(*amount) {
                return Err(PlacementError::Invalid(format!(
                    "Unable to allocate {amount} {class} on {rp}: outside min_unit/max_unit/step_size"
                )));
            }
            let held = previous
                .and_then(|a| a.allocations.get(rp))
                .and_then(|c| c.get(class))
                .copied()
                .unwrap_or(0);
            let used = idx.used(rp, class).saturating_sub(held);
            if used + amount > inv.capacity() {
                return Err(PlacementError::Capacity {
                    provider: rp.clone(),
                    class: class.clone(),
                });
            }
        }
    }
    Ok(Allocation {
        id: consumer.to_string(),
        project_id: project_id.to_string(),
        user_id: user_id.to_string(),
        generation: previous.map(|a| a.generation + 1).unwrap_or(1),
        allocations: allocs.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(total: u64, ratio: f64) -> Inventory {
        Inventory {
            total,
            reserved: 0,
            min_unit: 1,
            max_unit: total,
            step_size: 1,
            allocation_ratio: ratio,
        }
    }

    #[test]
    fn concurrent_claims_never_overcommit() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let p = Arc::new(Placement::open(store).unwrap());
        p.ensure_provider("rp1", "node1").unwrap();
        let mut m = BTreeMap::new();
        m.insert("VCPU".to_string(), inv(4, 2.0));
        p.set_inventories("rp1", &m).unwrap();
        let won = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for i in 0..32 {
                let (p, won) = (&p, &won);
                s.spawn(move || {
                    let mut a = BTreeMap::new();
                    a.insert(
                        "rp1".to_string(),
                        BTreeMap::from([("VCPU".to_string(), 1u64)]),
                    );
                    if p.claim(&format!("c{i}"), "p", "u", &a, |_| Ok::<_, ()>(()))
                        .is_ok()
                    {
                        won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        // (4 - 0) * 2.0 = 8 VCPU.
        assert_eq!(won.load(std::sync::atomic::Ordering::SeqCst), 8);
        let req = CandidateRequest {
            resources: BTreeMap::from([("VCPU".to_string(), 1)]),
            ..Default::default()
        };
        assert!(p.candidates(&req).unwrap().is_empty());
        let holder = (0..32)
            .map(|i| format!("c{i}"))
            .find(|c| !p.allocations_of(c).is_empty())
            .unwrap();
        p.release(&holder).unwrap();
        assert_eq!(p.candidates(&req).unwrap()[0].free["VCPU"], 1);
        // A caller failure leaves nothing behind.
        let mut a = BTreeMap::new();
        a.insert(
            "rp1".to_string(),
            BTreeMap::from([("VCPU".to_string(), 1u64)]),
        );
        assert!(matches!(
            p.claim("x", "p", "u", &a, |_| Err::<(), _>("no")),
            Err(ClaimError::Caller("no"))
        ));
        assert_eq!(p.candidates(&req).unwrap()[0].free["VCPU"], 1);
        assert!(p.allocations_of("x").is_empty());
    }

    /// Two processes on one store file: each has its own index, and
    /// neither lets the other's claims be counted twice or forgotten.
    #[test]
    fn two_indexes_on_one_store_never_overcommit() {
        let first = Store::open_in_memory().unwrap();
        let path = first.path().unwrap().to_path_buf();
        let a = Placement::open(Arc::new(first)).unwrap();
        let b = Placement::open(Arc::new(
            Store::open(&path, stratus_store::Durability::Normal).unwrap(),
        ))
        .unwrap();
        a.ensure_provider("rp1", "node1").unwrap();
        // The second learns of the provider from the log and may not
        // take its name again.
        assert!(matches!(
            b.create_provider(None, "node1"),
            Err(PlacementError::Conflict(_))
        ));
        b.set_inventories("rp1", &BTreeMap::from([("VCPU".to_string(), inv(4, 1.0))]))
            .unwrap();
        // A generation read before the other process changed it is stale.
        let seen = a.provider("rp1").unwrap().generation;
        b.set_traits("rp1", &["CUSTOM_X".to_string()]).unwrap();
        assert!(matches!(
            a.update_provider("rp1", Some(seen), |_, _| Ok(())),
            Err(PlacementError::Conflict(_))
        ));
        let won = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for i in 0..16 {
                let (p, won) = (if i % 2 == 0 { &a } else { &b }, &won);
                s.spawn(move || {
                    let one = BTreeMap::from([(
                        "rp1".to_string(),
                        BTreeMap::from([("VCPU".to_string(), 1u64)]),
                    )]);
                    if i % 4 < 2 {
                        if p.claim(&format!("c{i}"), "p", "u", &one, |_| Ok::<_, ()>(()))
                            .is_ok()
                        {
                            won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    } else {
                        let item = ClaimItem {
                            consumer: format!("c{i}"),
                            project_id: "p".into(),
                            user_id: "u".into(),
                            allocs: one,
                        };
                        let out = p.claim_batch(&[item], |_, _| Ok::<_, ()>(true)).unwrap();
                        if out[0] == Outcome::Claimed {
                            won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(won.load(std::sync::atomic::Ordering::SeqCst), 4);
        // Both indexes agree once they follow the log.
        a.refresh().unwrap();
        b.refresh().unwrap();
        assert_eq!(a.usage("rp1")["VCPU"], 4);
        assert_eq!(b.usage("rp1")["VCPU"], 4);
        // A consumer generation check sees the other process's claim.
        let holder = (0..16)
            .map(|i| format!("c{i}"))
            .find(|c| !a.allocations_of(c).is_empty())
            .unwrap();
        assert!(matches!(
            b.claim_checked(&holder, "p", "u", &BTreeMap::new(), Some(None)),
            Err(PlacementError::Conflict(_))
        ));
        a.release(&holder).unwrap();
        b.refresh().unwrap();
        assert_eq!(b.usage("rp1")["VCPU"], 3);
    }
}
