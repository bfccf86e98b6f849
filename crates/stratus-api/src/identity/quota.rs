//! The quota engine: one set of rules, read from Keystone's unified
//! limits and each service's own quota records, that every service
//! enforces (compute, network, block storage, image) under the model the
//! deployment chose.
//!
//! - **`flat`** (Keystone's default): a project's limit covers its own
//!   usage. Services keep their own checks (see their `quotas` modules).
//! - **`strict_two_level`** (as Keystone describes it): projects are at
//!   most two levels deep; a parent's limit covers its own usage and its
//!   children's; a child's limit is at most its parent's.
//! - **`hierarchical`** (Stratus's own): trees of any depth. A project
//!   with its own limit is a *quota root*; a project without one draws
//!   from its nearest ancestor's pool. A root's limit is split between
//!   its own pool and what it has *allocated* to the roots below it (their
//!   limits), so no creation anywhere under a root can pass the root's
//!   limit. A root over its own limit may *borrow* the unused part of a
//!   sibling's limit when their parent is tagged `quota:borrow`; the loan
//!   is recorded, shown and returned as soon as the borrower no longer
//!   needs it. A parent tagged `quota:pool` is a *shared pool*: its
//!   children (without limits of their own) get shares of it in the
//!   ratio of their `quota:share=N` tags (1 by default), and a member past
//!   its share is refused while another member under its share is waiting
//!   (was refused for lack of room in the last [`WAIT_MS`]).
//!
//! A limit resolves as: the project's Keystone limit, else the service's
//! own per-project quota, else the registered limit, else the service's
//! default. Usage is counted from the records in the same write
//! transaction that creates more; writes are serialised by the store, so
//! concurrent creates (also from several API processes on PostgreSQL)
//! cannot pass a limit.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use stratus_store::{Query, Record, Store, Tx};

use super::model::{Limit, Project, RegisteredLimit, Service};
use crate::ApiError;

/// The store's meta key holding the deployment's model.
const MODEL_KEY: &str = "limits.model";
/// How long a refused pool member counts as waiting for its share.
pub const WAIT_MS: i64 = 300_000;
/// The tag that lets a parent's children borrow from each other.
pub const TAG_BORROW: &str = "quota:borrow";
/// The tag that makes a parent's children a shared pool.
pub const TAG_POOL: &str = "quota:pool";
/// Of two limits on one thing (limits in several regions), the one that
/// allows less.
fn stricter(a: i64, b: i64) -> i64 {
    match (a < 0, b < 0) {
        (true, _) => b,
        (_, true) => a,
        _ => a.min(b),
    }
}

/// A pool member's share ratio: `quota:share=N`.
pub const TAG_SHARE: &str = "quota:share=";
/// How many projects the fast path walks down a pool before it looks up
/// from the limited projects instead.
const DOWN_BUDGET: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    Flat,
    StrictTwoLevel,
    Hierarchical,
}

impl Model {
    pub fn parse(s: &str) -> Option<Model> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "flat" => Some(Model::Flat),
            "strict_two_level" => Some(Model::StrictTwoLevel),
            "hierarchical" => Some(Model::Hierarchical),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Model::Flat => "flat",
            Model::StrictTwoLevel => "strict_two_level",
            Model::Hierarchical => "hierarchical",
        }
    }
    pub fn description(self) -> &'static str {
        match self {
            Model::Flat => {
                "Limit enforcement and validation does not take project hierarchy into consideration."
            }
            Model::StrictTwoLevel => {
                "This model requires project hierarchy never exceeds a depth of two"
            }
            Model::Hierarchical => {
                "Project trees of any depth. A project's limit covers its whole subtree: projects without a limit of their own draw from their nearest ancestor's, and a child's limit is allocated from its parent's free amount. Siblings under a parent tagged quota:borrow may borrow each other's unused limits; the children of a parent tagged quota:pool share it in the ratio of their quota:share=N tags."
            }
        }
    }
}

/// The deployment's model, read inside a transaction.
pub fn model(tx: &Tx) -> Result<Model, ApiError> {
    Ok(tx
        .meta_get(MODEL_KEY)?
        .and_then(|m| Model::parse(&m))
        .unwrap_or(Model::Flat))
}

pub fn model_of(store: &Store) -> Result<Model, ApiError> {
    Ok(store
        .meta_get(MODEL_KEY)?
        .and_then(|m| Model::parse(&m))
        .unwrap_or(Model::Flat))
}

/// Sets the deployment's model (at start, from `--limit-model`).
pub fn set_model(store: &Store, m: Model) -> Result<(), ApiError> {
    store.write(|tx| tx.meta_set(MODEL_KEY, m.name()))?;
    Ok(())
}

/// Reads every project's own limit on a resource: (project, limit).
pub type OwnAll = fn(&Tx) -> Result<Vec<(String, i64)>, ApiError>;

/// Reads one figure of one project.
pub type PerProject = fn(&Tx, &str) -> Result<i64, ApiError>;

/// One quota-limited resource of one service.
pub struct Meter {
    /// The catalog types whose Keystone limits apply (`compute`, ...).
    pub services: &'static [&'static str],
    /// The unified-limits resource name (`servers`, `class:VCPU`, ...).
    pub resource: &'static str,
    /// The project's limit set through the service's own quota API.
    pub own: fn(&Tx, &str) -> Result<Option<i64>, ApiError>,
    /// The service's default limit.
    pub default: fn(&Tx) -> Result<i64, ApiError>,
    /// What the project itself (not its children) uses now.
    pub used: fn(&Tx, &str) -> Result<i64, ApiError>,
    /// Every project's own limit set through the service, in one read
    /// (with [`Meter::subtree`], the engine's fast path).
    pub own_all: Option<OwnAll>,
    /// What a project and every project below it use, kept as a running
    /// total, so a check never adds up a whole pool.
    pub subtree: Option<PerProject>,
    /// What is held back from projects' quotas (quota leases to edge
    /// sites, not yet spent): (project, amount) for each that has some.
    pub reserved_all: Option<OwnAll>,
}

impl Meter {
    /// The key loans and waits are filed under.
    pub fn key(&self) -> String {
        format!("{}:{}", self.services[0], self.resource)
    }
}

/// A loan of part of one root's limit to a sibling root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuotaLoan {
    pub id: String,
    pub meter: String,
    pub lender: String,
    pub borrower: String,
    pub amount: i64,
    pub created_us: i64,
}
record!(
    QuotaLoan,
    "quota_loan",
    owner = |l| Some(&l.borrower),
    parent = |l| Some(&l.lender),
    name = |l| Some(&l.meter)
);

/// A pool member refused for lack of room while under its share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuotaWait {
    pub id: String,
    pub meter: String,
    pub pool: String,
    pub member: String,
    pub until_ms: i64,
}
record!(
    QuotaWait,
    "quota_wait",
    owner = |w| Some(&w.member),
    parent = |w| Some(&w.pool),
    name = |w| Some(&w.meter)
);

/// Where a project stands on one resource. `-1` limits are unlimited,
/// and then `free` is `-1` too.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// The project whose limit applies (itself, or the ancestor whose
    /// pool it draws from).
    pub quota_root: String,
    pub limit: i64,
    pub in_use: i64,
    pub reserved: i64,
    pub allocated: i64,
    pub borrowed: i64,
    pub lent: i64,
    pub free: i64,
    /// The project's own usage (without the rest of its pool).
    pub own_use: i64,
    /// For a shared-pool member: its share of the pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<i64>,
}

/// A refused request, with the figures that refused it in words (each
/// service puts them in its own error shape).
#[derive(Debug, Clone)]
pub struct Over {
    pub why: String,
}

// ---- the tree ---------------------------------------------------------------

/// A root's pool: the projects drawing from it (the root first), and the
/// roots right below it with their limits (its allocations).
type Pool = (Vec<String>, Roots);

/// Roots with their limits.
type Roots = Vec<(String, i64)>;

/// Project lookups for one decision, cached.
pub struct Tree<'a, 't> {
    tx: &'a Tx<'t>,
    projects: HashMap<String, Option<Project>>,
    children: HashMap<String, Vec<String>>,
    services: Option<Vec<Service>>,
    /// Per meter with `own_all`: every project's explicit limit.
    explicit: HashMap<&'static str, HashMap<String, i64>>,
}

impl<'a, 't> Tree<'a, 't> {
    pub fn new(tx: &'a Tx<'t>) -> Self {
        Tree {
            tx,
            projects: HashMap::new(),
            children: HashMap::new(),
            services: None,
            explicit: HashMap::new(),
        }
    }

    pub fn project(&mut self, id: &str) -> Result<Option<Project>, ApiError> {
        if let Some(p) = self.projects.get(id) {
            return Ok(p.clone());
        }
        let p = self.tx.get::<Project>(id)?;
        self.projects.insert(id.to_string(), p.clone());
        Ok(p)
    }

    pub fn parent(&mut self, id: &str) -> Result<Option<String>, ApiError> {
        Ok(self.project(id)?.and_then(|p| p.parent_id))
    }

    fn has_tag(&mut self, id: &str, tag: &str) -> Result<bool, ApiError> {
        Ok(self
            .project(id)?
            .is_some_and(|p| p.tags.iter().any(|t| t == tag)))
    }

    fn share_ratio(&mut self, id: &str) -> Result<i64, ApiError> {
        Ok(self
            .project(id)?
            .and_then(|p| {
                p.tags
                    .iter()
                    .find_map(|t| t.strip_prefix(TAG_SHARE)?.parse::<i64>().ok())
            })
            .filter(|n| *n > 0)
            .unwrap_or(1))
    }

    pub fn children(&mut self, id: &str) -> Result<Vec<String>, ApiError> {
        if let Some(c) = self.children.get(id) {
            return Ok(c.clone());
        }
        let mut kids = self.tx.list::<Project>(&Query::parent(id))?;
        kids.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<String> = kids.iter().map(|p| p.id.clone()).collect();
        for k in kids {
            self.projects.insert(k.id.clone(), Some(k));
        }
        self.children.insert(id.to_string(), ids.clone());
        Ok(ids)
    }

    fn service_ids(&mut self, m: &Meter) -> Result<Vec<String>, ApiError> {
        if self.services.is_none() {
            self.services = Some(self.tx.list::<Service>(&Query::all())?);
        }
        Ok(self
            .services
            .as_ref()
            .map(|s| {
                s.iter()
                    .filter(|s| m.services.contains(&s.kind.as_str()))
                    .map(|s| s.id.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The Keystone limit of a project (or domain) on `m`, if set.
    pub fn keystone_limit(&mut self, m: &Meter, owner: &str) -> Result<Option<i64>, ApiError> {
        let ids = self.service_ids(m)?;
        Ok(self
            .tx
            .list::<Limit>(&Query {
                owner: Some(owner),
                name: Some(m.resource),
                ..Query::default()
            })?
            .into_iter()
            .filter(|l| ids.contains(&l.service_id))
            .map(|l| l.resource_limit)
            .reduce(stricter))
    }

    /// The registered (default) limit on `m`, if any.
    pub fn registered(&mut self, m: &Meter) -> Result<Option<i64>, ApiError> {
        let ids = self.service_ids(m)?;
        Ok(self
            .tx
            .list::<RegisteredLimit>(&Query::name(m.resource))?
            .into_iter()
            .find(|l| ids.contains(&l.service_id))
            .map(|l| l.default_limit))
    }

    /// Every project's explicit limit on `m`, read once (when the meter
    /// can list its own).
    fn explicit_all(&mut self, m: &Meter) -> Result<Option<&HashMap<String, i64>>, ApiError> {
        let Some(own_all) = m.own_all else {
            return Ok(None);
        };
        if !self.explicit.contains_key(m.resource) {
            let mut map: HashMap<String, i64> = own_all(self.tx)?.into_iter().collect();
            let ids = self.service_ids(m)?;
            let mut keystone: HashMap<String, i64> = HashMap::new();
            for l in self.tx.list::<Limit>(&Query::name(m.resource))? {
                if ids.contains(&l.service_id)
                    && let Some(p) = l.project_id
                {
                    let v = keystone
                        .get(&p)
                        .map_or(l.resource_limit, |v| stricter(*v, l.resource_limit));
                    keystone.insert(p, v);
                }
            }
            map.extend(keystone);
            self.explicit.insert(m.resource, map);
        }
        Ok(self.explicit.get(m.resource))
    }

    /// The project's own limit: Keystone's, else the service's.
    pub fn explicit(&mut self, m: &Meter, p: &str) -> Result<Option<i64>, ApiError> {
        if let Some(all) = self.explicit.get(m.resource) {
            return Ok(all.get(p).copied());
        }
        match self.keystone_limit(m, p)? {
            Some(l) => Ok(Some(l)),
            None => (m.own)(self.tx, p),
        }
    }

    /// The limit that applies to the project on its own (flat).
    pub fn base(&mut self, m: &Meter, p: &str) -> Result<i64, ApiError> {
        if let Some(l) = self.explicit(m, p)? {
            return Ok(l);
        }
        match self.registered(m)? {
            Some(l) => Ok(l),
            None => (m.default)(self.tx),
        }
    }

    /// Hierarchical: whether the project has a limit of its own (or is at
    /// the top of its tree).
    fn is_root(&mut self, m: &Meter, p: &str) -> Result<bool, ApiError> {
        if self.parent(p)?.is_none() {
            return Ok(true);
        }
        Ok(self.explicit(m, p)?.is_some_and(|l| l >= 0))
    }

    /// Hierarchical: the root whose pool the project draws from.
    pub fn root_of(&mut self, m: &Meter, p: &str) -> Result<String, ApiError> {
        let mut cur = p.to_string();
        for _ in 0..64 {
            if self.is_root(m, &cur)? {
                return Ok(cur);
            }
            match self.parent(&cur)? {
                Some(up) => cur = up,
                None => return Ok(cur),
            }
        }
        Err(ApiError::conflict(format!(
            "The project tree above {p} is too deep or has a cycle."
        )))
    }

    /// Hierarchical: the projects drawing from root `q`'s pool (q first)
    /// and the roots right below it (with their limits).
    fn pool(&mut self, m: &Meter, q: &str) -> Result<Pool, ApiError> {
        let mut members = vec![q.to_string()];
        let mut subs = Vec::new();
        let mut todo = vec![q.to_string()];
        while let Some(p) = todo.pop() {
            for c in self.children(&p)? {
                if self.is_root(m, &c)? {
                    let l = self.explicit(m, &c)?.unwrap_or(0);
                    subs.push((c, l));
                } else {
                    members.push(c.clone());
                    todo.push(c);
                }
            }
        }
        Ok((members, subs))
    }

    fn used(&mut self, m: &Meter, p: &str) -> Result<i64, ApiError> {
        (m.used)(self.tx, p)
    }

    /// The roots right below `x`: projects under it with a limit of their
    /// own and no other root between. Found walking down while the pool
    /// is small; past [`DOWN_BUDGET`] projects, from every limited project
    /// up instead (one read of all limits, then cached parents).
    fn frontier(&mut self, m: &Meter, x: &str) -> Result<Vec<(String, i64)>, ApiError> {
        let mut out = Vec::new();
        let mut todo = vec![x.to_string()];
        let mut seen = 0;
        while let Some(p) = todo.pop() {
            for c in self.children(&p)? {
                seen += 1;
                if seen > DOWN_BUDGET {
                    return self.frontier_up(m, x);
                }
                if self.is_root(m, &c)? {
                    let l = self.explicit(m, &c)?.unwrap_or(0);
                    out.push((c, l));
                } else {
                    todo.push(c);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn frontier_up(&mut self, m: &Meter, x: &str) -> Result<Vec<(String, i64)>, ApiError> {
        let limited: Vec<(String, i64)> = match self.explicit_all(m)? {
            Some(all) => all
                .iter()
                .filter(|(p, l)| **l >= 0 && p.as_str() != x)
                .map(|(p, l)| (p.clone(), *l))
                .collect(),
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for (p, l) in limited {
            let mut cur = self.parent(&p)?;
            let mut depth = 0;
            while let Some(a) = cur {
                if a == x {
                    out.push((p.clone(), l));
                    break;
                }
                depth += 1;
                if depth > 64 || self.is_root(m, &a)? {
                    break;
                }
                cur = self.parent(&a)?;
            }
        }
        out.sort();
        Ok(out)
    }

    /// What `x`'s pool uses (x and the projects below it that have no
    /// limit of their own), and the roots right below it with their
    /// limits.
    fn pool_use(&mut self, m: &Meter, x: &str) -> Result<(i64, Roots), ApiError> {
        if let (Some(sub), Some(_)) = (m.subtree, m.own_all) {
            let subs = self.frontier(m, x)?;
            let mut in_use = sub(self.tx, x)?;
            for (s, _) in &subs {
                in_use -= sub(self.tx, s)?;
            }
            return Ok((in_use, subs));
        }
        let (members, subs) = self.pool(m, x)?;
        let mut in_use = 0;
        for p in &members {
            in_use += self.used(m, p)?;
        }
        Ok((in_use, subs))
    }

    /// Usage of a project and every project below it.
    fn subtree_use(&mut self, m: &Meter, p: &str) -> Result<i64, ApiError> {
        if let Some(sub) = m.subtree {
            return sub(self.tx, p);
        }
        let mut total = self.used(m, p)?;
        for c in self.children(p)? {
            total += self.subtree_use(m, &c)?;
        }
        Ok(total)
    }
}

// ---- loans --------------------------------------------------------------------

/// The loans to `borrower` on `m`, oldest first, each cut to what the
/// borrower still needs (a loan it no longer needs is returned).
fn loans_to(tree: &mut Tree, m: &Meter, borrower: &str) -> Result<Vec<(QuotaLoan, i64)>, ApiError> {
    let key = m.key();
    let mut loans: Vec<QuotaLoan> = tree
        .tx
        .list::<QuotaLoan>(&Query {
            owner: Some(borrower),
            name: Some(&key),
            ..Query::default()
        })?
        .into_iter()
        .collect();
    if loans.is_empty() {
        return Ok(Vec::new());
    }
    loans.sort_by_key(|l| (l.created_us, l.id.clone()));
    let limit = tree.base(m, borrower)?;
    let (in_use, subs) = tree.pool_use(m, borrower)?;
    let allocated: i64 = subs.iter().map(|s| s.1.max(0)).sum();
    let reserved = reserved_in(tree, m, borrower)?;
    let mut need = (in_use + reserved + allocated - limit).max(0);
    Ok(loans
        .into_iter()
        .map(|l| {
            let eff = l.amount.min(need);
            need -= eff;
            (l, eff)
        })
        .collect())
}

/// What `lender` has lent on `m`, counting each loan as far as it is
/// still needed.
fn lent_by(tree: &mut Tree, m: &Meter, lender: &str) -> Result<i64, ApiError> {
    let key = m.key();
    let loans = tree.tx.list::<QuotaLoan>(&Query {
        parent: Some(lender),
        name: Some(&key),
        ..Query::default()
    })?;
    let mut borrowers: Vec<String> = loans.iter().map(|l| l.borrower.clone()).collect();
    borrowers.sort();
    borrowers.dedup();
    let mut total = 0;
    for b in borrowers {
        total += loans_to(tree, m, &b)?
            .iter()
            .filter(|(l, _)| l.lender == lender)
            .map(|(_, eff)| eff)
            .sum::<i64>();
    }
    Ok(total)
}

/// Writes loans back cut to what is still needed (the rest returned).
fn settle(tree: &mut Tree, m: &Meter, borrower: &str) -> Result<(), ApiError> {
    for (mut l, eff) in loans_to(tree, m, borrower)? {
        if eff == 0 {
            tree.tx.delete::<QuotaLoan>(&l.id)?;
        } else if eff < l.amount {
            l.amount = eff;
            tree.tx.update(&l)?;
        }
    }
    Ok(())
}

// ---- figures -----------------------------------------------------------------

/// Hierarchical figures of root `q`.
fn root_figures(tree: &mut Tree, m: &Meter, q: &str) -> Result<Figures, ApiError> {
    let limit = tree.base(m, q)?;
    let (in_use, subs) = tree.pool_use(m, q)?;
    let allocated: i64 = subs.iter().map(|s| s.1.max(0)).sum();
    let borrowed: i64 = loans_to(tree, m, q)?.iter().map(|(_, e)| e).sum();
    let lent = lent_by(tree, m, q)?;
    let reserved = reserved_in(tree, m, q)?;
    let free = if limit < 0 {
        -1
    } else {
        (limit - in_use - reserved - allocated - lent + borrowed).max(0)
    };
    let own_use = tree.used(m, q)?;
    Ok(Figures {
        quota_root: q.to_string(),
        limit,
        in_use,
        reserved,
        allocated,
        borrowed,
        lent,
        free,
        own_use,
        share: None,
    })
}

/// What is held back in root `q`'s pool (leases of its members).
fn reserved_in(tree: &mut Tree, m: &Meter, q: &str) -> Result<i64, ApiError> {
    let Some(all) = m.reserved_all else {
        return Ok(0);
    };
    let mut total = 0;
    for (p, amount) in all(tree.tx)? {
        if tree.project(&p)?.is_some() && tree.root_of(m, &p)? == q {
            total += amount;
        }
    }
    Ok(total)
}

/// Where `project` stands on `m` under the deployment's model.
pub fn figures(tx: &Tx, m: &Meter, project: &str) -> Result<Figures, ApiError> {
    let model = model(tx)?;
    let mut tree = Tree::new(tx);
    match model {
        Model::Flat => {
            let limit = tree.base(m, project)?;
            let in_use = tree.used(m, project)?;
            Ok(Figures {
                quota_root: project.to_string(),
                limit,
                in_use,
                own_use: in_use,
                free: if limit < 0 {
                    -1
                } else {
                    (limit - in_use).max(0)
                },
                ..Figures::default()
            })
        }
        Model::StrictTwoLevel => {
            let limit = tree.base(m, project)?;
            let in_use = tree.subtree_use(m, project)?;
            let own_use = tree.used(m, project)?;
            let mut free = if limit < 0 {
                -1
            } else {
                (limit - in_use).max(0)
            };
            if let Some(p) = tree.parent(project)? {
                let pl = tree.base(m, &p)?;
                if pl >= 0 {
                    let pf = (pl - tree.subtree_use(m, &p)?).max(0);
                    free = if free < 0 { pf } else { free.min(pf) };
                }
            }
            Ok(Figures {
                quota_root: project.to_string(),
                limit,
                in_use,
                own_use,
                free,
                ..Figures::default()
            })
        }
        Model::Hierarchical => {
            let q = tree.root_of(m, project)?;
            let mut f = root_figures(&mut tree, m, &q)?;
            if q != project {
                f.own_use = tree.used(m, project)?;
                if let Some(share) = pool_share(&mut tree, m, &q, project, f.limit)? {
                    f.share = Some(share.share);
                }
            }
            Ok(f)
        }
    }
}

// ---- shared pools -------------------------------------------------------------

struct Share {
    /// The pool member (a child of the pool root) the project is under.
    member: String,
    share: i64,
    member_use: i64,
    /// Other members under their share with a live wait.
    waiting: Vec<String>,
}

/// For a project under a `quota:pool` root: its member's share and use.
fn pool_share(
    tree: &mut Tree,
    m: &Meter,
    q: &str,
    project: &str,
    limit: i64,
) -> Result<Option<Share>, ApiError> {
    if limit < 0 || project == q || !tree.has_tag(q, TAG_POOL)? {
        return Ok(None);
    }
    // The member: the child of q on the way up from the project.
    let mut member = project.to_string();
    loop {
        match tree.parent(&member)? {
            Some(p) if p == q => break,
            Some(p) => member = p,
            None => return Ok(None),
        }
    }
    let f = root_figures(tree, m, q)?;
    let capacity = (f.limit - f.allocated - f.lent + f.borrowed - f.own_use).max(0);
    let mut members = Vec::new();
    for c in tree.children(q)? {
        if !tree.is_root(m, &c)? {
            let ratio = tree.share_ratio(&c)?;
            let u = tree.pool_use(m, &c)?.0;
            members.push((c, ratio, u));
        }
    }
    let total: i64 = members.iter().map(|x| x.1).sum::<i64>().max(1);
    let now = crate::timeutil::now_us() / 1000;
    let key = m.key();
    let waits = tree.tx.list::<QuotaWait>(&Query {
        parent: Some(q),
        name: Some(&key),
        ..Query::default()
    })?;
    let mut out = None;
    let mut waiting = Vec::new();
    for (c, ratio, u) in &members {
        let share = capacity * ratio / total;
        if *c == member {
            out = Some((share, *u));
        } else if *u < share && waits.iter().any(|w| w.member == *c && w.until_ms > now) {
            waiting.push(c.clone());
        }
    }
    Ok(out.map(|(share, member_use)| Share {
        member,
        share,
        member_use,
        waiting,
    }))
}

// ---- enforcement ----------------------------------------------------------------

fn over(why: String) -> Over {
    Over { why }
}

/// How much more of `m` the project could take now (borrowing
/// included), or `None` when nothing limits it. Writes nothing.
pub fn room(tx: &Tx, m: &Meter, project: &str) -> Result<Option<i64>, ApiError> {
    let model = model(tx)?;
    let mut tree = Tree::new(tx);
    match model {
        Model::Flat | Model::StrictTwoLevel => {
            let f = figures(tx, m, project)?;
            Ok((f.free >= 0).then_some(f.free))
        }
        Model::Hierarchical => {
            let q = tree.root_of(m, project)?;
            let f = root_figures(&mut tree, m, &q)?;
            if f.limit < 0 {
                return Ok(None);
            }
            let mut room = f.free + borrowable(&mut tree, m, &q)?;
            if let Some(s) = pool_share(&mut tree, m, &q, project, f.limit)?
                && !s.waiting.is_empty()
            {
                room = room.min((s.share - s.member_use).max(0));
            }
            Ok(Some(room))
        }
    }
}

/// Hierarchical: what root `q` could borrow from its siblings now.
fn borrowable(tree: &mut Tree, m: &Meter, q: &str) -> Result<i64, ApiError> {
    let mut total = 0;
    for (s, _) in lenders(tree, m, q)? {
        total += root_figures(tree, m, &s)?.free;
    }
    Ok(total)
}

/// The sibling roots `q` may borrow from (with their limits).
fn lenders(tree: &mut Tree, m: &Meter, q: &str) -> Result<Vec<(String, i64)>, ApiError> {
    let Some(parent) = tree.parent(q)? else {
        return Ok(Vec::new());
    };
    if !tree.has_tag(&parent, TAG_BORROW)? {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for c in tree.children(&parent)? {
        if c != q && tree.is_root(m, &c)? {
            // A project that borrows does not lend.
            let borrowed: i64 = loans_to(tree, m, &c)?.iter().map(|x| x.1).sum();
            let l = tree.explicit(m, &c)?.unwrap_or(0);
            if borrowed == 0 && l >= 0 {
                out.push((c, l));
            }
        }
    }
    Ok(out)
}

/// Takes `delta` of `m` for `project` under the deployment's model, or
/// refuses. Under `hierarchical` this borrows what the project's root
/// lacks from its siblings (recording the loans) and keeps pool shares.
/// Runs inside the write that creates the resources.
pub fn take(tx: &Tx, m: &Meter, project: &str, delta: i64) -> Result<(), Over> {
    take_inner(tx, m, project, delta).map_err(|e| match e {
        Refusal::Over(o) => o,
        Refusal::Api(e) => over(e.message),
    })
}

enum Refusal {
    Over(Over),
    Api(ApiError),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Api(e)
    }
}

impl From<stratus_store::StoreError> for Refusal {
    fn from(e: stratus_store::StoreError) -> Self {
        Refusal::Api(e.into())
    }
}

fn take_inner(tx: &Tx, m: &Meter, project: &str, delta: i64) -> Result<(), Refusal> {
    let model = model(tx)?;
    let mut tree = Tree::new(tx);
    match model {
        Model::Flat => {
            let limit = tree.base(m, project)?;
            let used = tree.used(m, project)?;
            if limit >= 0 && used + delta > limit {
                return Err(Refusal::Over(over(format!(
                    "Quota exceeded for {}: requested {delta}, but already used {used} of {limit}.",
                    m.resource
                ))));
            }
            Ok(())
        }
        Model::StrictTwoLevel => {
            let mut levels = vec![project.to_string()];
            if let Some(p) = tree.parent(project)? {
                levels.push(p);
            }
            for p in levels {
                let limit = tree.base(m, &p)?;
                let used = tree.subtree_use(m, &p)?;
                if limit >= 0 && used + delta > limit {
                    let whose = if p == project {
                        String::new()
                    } else {
                        format!(" of parent project {p}")
                    };
                    return Err(Refusal::Over(over(format!(
                        "Quota exceeded for {}{whose}: requested {delta}, but its tree already uses {used} of {limit}.",
                        m.resource
                    ))));
                }
            }
            Ok(())
        }
        Model::Hierarchical => take_hierarchical(&mut tree, m, project, delta),
    }
}

fn take_hierarchical(tree: &mut Tree, m: &Meter, project: &str, delta: i64) -> Result<(), Refusal> {
    let q = tree.root_of(m, project)?;
    settle(tree, m, &q)?;
    let f = root_figures(tree, m, &q)?;
    if f.limit < 0 || delta <= 0 {
        return Ok(());
    }
    let key = m.key();
    if let Some(s) = pool_share(tree, m, &q, project, f.limit)? {
        if s.member_use + delta > s.share && !s.waiting.is_empty() {
            return Err(Refusal::Over(over(format!(
                "Quota exceeded for {}: {} has used {} of its share of {} in pool {q}, and {} waits for its own share.",
                m.resource,
                s.member,
                s.member_use,
                s.share,
                s.waiting.join(", ")
            ))));
        }
        if delta <= f.free {
            // Served: it no longer waits.
            tree.tx
                .delete::<QuotaWait>(&format!("{key}/{}", s.member))?;
        }
    }
    check_ancestors(tree, m, &q, delta)?;
    let mut need = delta - f.free;
    if need <= 0 {
        return Ok(());
    }
    // A project that lends does not borrow (its need would not count
    // what it lent).
    let lenders = if f.lent > 0 {
        Vec::new()
    } else {
        lenders(tree, m, &q)?
    };
    let mut plan = Vec::new();
    for (s, _) in lenders {
        if need <= 0 {
            break;
        }
        let free = root_figures(tree, m, &s)?.free;
        let amount = free.min(need);
        if amount > 0 {
            plan.push((s, amount));
            need -= amount;
        }
    }
    if need > 0 {
        let whose = if q == project {
            String::new()
        } else {
            format!(" (drawn from {q})")
        };
        return Err(Refusal::Over(over(format!(
            "Quota exceeded for {}{whose}: requested {delta}, but only {} is free of the limit {} (in use {}, allocated to child projects {}, lent {}, borrowed {}).",
            m.resource, f.free, f.limit, f.in_use, f.allocated, f.lent, f.borrowed
        ))));
    }
    let now = crate::timeutil::now_us();
    for (lender, amount) in plan {
        let id = format!("{key}/{lender}/{q}");
        match tree.tx.get::<QuotaLoan>(&id)? {
            Some(mut l) => {
                l.amount += amount;
                tree.tx.update(&l)?;
            }
            None => {
                tree.tx.insert(&QuotaLoan {
                    id,
                    meter: key.clone(),
                    lender,
                    borrower: q.clone(),
                    amount,
                    created_us: now,
                })?;
            }
        }
    }
    Ok(())
}

/// The roots above `q`: each must still hold what its subtree would use.
/// Allocations keep that true by themselves; this catches a parent whose
/// limit was lowered (with `force`) or changed where nothing validates it.
fn check_ancestors(tree: &mut Tree, m: &Meter, q: &str, delta: i64) -> Result<(), Refusal> {
    let mut cur = tree.parent(q)?;
    let mut depth = 0;
    while let Some(p) = cur {
        depth += 1;
        if depth > 64 {
            break;
        }
        let a = tree.root_of(m, &p)?;
        let f = root_figures(tree, m, &a)?;
        if f.limit >= 0 && f.in_use + f.reserved + f.allocated + f.lent - f.borrowed > f.limit {
            // Over-committed: count the whole subtree.
            let used = tree.subtree_use(m, &a)?;
            if used + f.reserved + delta > f.limit + f.borrowed - f.lent {
                return Err(Refusal::Over(over(format!(
                    "Quota exceeded for {}: the tree under {a} already uses {used} of its limit {}.",
                    m.resource, f.limit
                ))));
            }
        }
        cur = tree.parent(&a)?;
    }
    Ok(())
}

/// After a refusal: a shared-pool member that was refused while under
/// its share now waits for it, so the others stop taking more than
/// theirs. Call outside the failed transaction.
pub fn note_refused(store: &Store, project: &str, asks: &[(&Meter, i64)]) {
    let r = store.write(|tx| {
        if model(tx)? != Model::Hierarchical {
            return Ok::<_, ApiError>(());
        }
        let mut tree = Tree::new(tx);
        for (m, delta) in asks {
            let q = tree.root_of(m, project)?;
            let f = root_figures(&mut tree, m, &q)?;
            if let Some(s) = pool_share(&mut tree, m, &q, project, f.limit)?
                && s.member_use + delta <= s.share
                && *delta > f.free
            {
                let key = m.key();
                tx.upsert(&QuotaWait {
                    id: format!("{key}/{}", s.member),
                    meter: key,
                    pool: q.clone(),
                    member: s.member.clone(),
                    until_ms: crate::timeutil::now_us() / 1000 + WAIT_MS,
                })?;
            }
        }
        Ok(())
    });
    if let Err(e) = r {
        tracing::warn!(error = %e, "recording a quota wait failed");
    }
}

// ---- validating limits -------------------------------------------------------

/// Checks that the limits now written (inside `tx`) for `project` on `m`
/// keep the model's rules: strict two-level (depth, child at most
/// parent, parent at least its children) or hierarchical (a child's
/// allocation fits its parent's free amount; a limit is not below what is
/// in use unless `force`).
pub fn validate(tx: &Tx, m: &Meter, project: &str, force: bool) -> Result<(), ApiError> {
    let model = model(tx)?;
    let mut tree = Tree::new(tx);
    match model {
        Model::Flat => Ok(()),
        Model::StrictTwoLevel => {
            let limit = tree.base(m, project)?;
            if let Some(p) = tree.parent(project)? {
                if tree.parent(&p)?.is_some() {
                    return Err(invalid(
                        project,
                        m,
                        limit,
                        "the project is deeper than two levels",
                    ));
                }
                let pl = tree.base(m, &p)?;
                if pl >= 0 && (limit < 0 || limit > pl) {
                    return Err(invalid(project, m, limit, "Limit is bigger than parent."));
                }
            }
            for c in tree.children(project)? {
                if let Some(cl) = tree.explicit(m, &c)?
                    && limit >= 0
                    && (cl < 0 || cl > limit)
                {
                    return Err(invalid(project, m, limit, "Limit is smaller than child."));
                }
            }
            Ok(())
        }
        Model::Hierarchical => {
            let q = tree.root_of(m, project)?;
            // Loans no longer needed are returned before anything counts them.
            settle(&mut tree, m, &q)?;
            let f = root_figures(&mut tree, m, &q)?;
            if f.limit >= 0 && !force {
                let needed = f.in_use + f.allocated + f.lent - f.borrowed;
                if needed > f.limit {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!(
                            "The limit {} on {} of project {q} is below what it holds: in use {}, allocated to child projects {}, lent {}.",
                            f.limit, m.resource, f.in_use, f.allocated, f.lent
                        ),
                    ));
                }
            }
            // The parent's side: the allocation must fit its free amount.
            if let Some(p) = tree.parent(&q)? {
                let pq = tree.root_of(m, &p)?;
                let pf = root_figures(&mut tree, m, &pq)?;
                let used = pf.in_use + pf.allocated + pf.lent - pf.borrowed;
                if pf.limit >= 0 && used > pf.limit {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "The limit on {} of project {q} is more than its parent {pq} has free: the parent's limit is {}, with {} in use, {} allocated to child projects (this one included) and {} lent.",
                            m.resource, pf.limit, pf.in_use, pf.allocated, pf.lent
                        ),
                    ));
                }
            }
            Ok(())
        }
    }
}

fn invalid(project: &str, m: &Meter, limit: i64, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Invalid resource limit (project_id: {project}, resource_name: {}, resource_limit: {limit}): {why} It doesn't satisfy current hierarchy model.",
        m.resource
    ))
}

/// Strict two-level: a domain limit must be at least each of its
/// projects' limits.
pub fn validate_domain(tx: &Tx, m: &Meter, domain: &str, limit: i64) -> Result<(), ApiError> {
    if model(tx)? != Model::StrictTwoLevel || limit < 0 {
        return Ok(());
    }
    let mut tree = Tree::new(tx);
    for p in tx.list::<Project>(&Query::owner(domain))? {
        if let Some(pl) = tree.explicit(m, &p.id)?
            && (pl < 0 || pl > limit)
        {
            return Err(ApiError::bad_request(format!(
                "Invalid resource limit (domain_id: {domain}, resource_name: {}, resource_limit: {limit}): Limit is smaller than child. It doesn't satisfy current hierarchy model.",
                m.resource
            )));
        }
    }
    Ok(())
}

/// Every loan, for the report (lender, borrower, meter, amount in force).
pub fn loans(tx: &Tx, m: &Meter, project: &str) -> Result<Vec<(String, String, i64)>, ApiError> {
    let mut tree = Tree::new(tx);
    let key = m.key();
    let mut out = Vec::new();
    for (l, eff) in loans_to(&mut tree, m, project)? {
        if eff > 0 {
            out.push((l.lender, l.borrower, eff));
        }
    }
    let from = tx.list::<QuotaLoan>(&Query {
        parent: Some(project),
        name: Some(&key),
        ..Query::default()
    })?;
    let mut borrowers: Vec<String> = from.iter().map(|l| l.borrower.clone()).collect();
    borrowers.sort();
    borrowers.dedup();
    for b in borrowers {
        for (l, eff) in loans_to(&mut tree, m, &b)? {
            if l.lender == project && eff > 0 {
                out.push((l.lender, l.borrower, eff));
            }
        }
    }
    Ok(out)
}
