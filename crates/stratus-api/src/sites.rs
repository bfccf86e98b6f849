//! Edge sites as a parent sees them: the `site` record, the live state of
//! each site's link (kept in memory and in the store's liveness table, out
//! of the change log), and what the rest of the API asks of them (which
//! availability zones the sites are). The sync machinery itself is in
//! `crate::sync`; this module depends on nothing else of the API, so
//! compute can list sites as zones without a module loop.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use stratus_store::{Query, Record, Store};

use crate::timeutil::now_us;

/// A site's lifecycle.
pub mod state {
    /// Created, its join token not redeemed yet.
    pub const JOINING: &str = "joining";
    /// Joined; `active` or `unreachable` by its last contact.
    pub const ACTIVE: &str = "active";
    /// Shown (never stored) for an active site not heard of lately.
    pub const UNREACHABLE: &str = "unreachable";
    /// Its certificate was revoked: the link is refused until it joins
    /// again with a new token.
    pub const REVOKED: &str = "revoked";
    /// Being emptied before it is decommissioned: its link stays, but no
    /// new server goes to it.
    pub const DRAINING: &str = "draining";
    /// Declared lost by an operator: its link is refused and its servers
    /// are in ERROR.
    pub const DEAD: &str = "dead";

    /// Whether a site in `s` may exchange with its parent.
    pub fn linked(s: &str) -> bool {
        s == ACTIVE || s == DRAINING
    }
}

/// A site of this controller's subtree: a child controller that dials in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Site {
    pub id: String,
    /// Its name, which is also its availability zone.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub state: String,
    /// SHA-256 of the one-time join token's secret, while it is unused.
    #[serde(default)]
    pub token_hash: Option<String>,
    #[serde(default)]
    pub token_expires_us: i64,
    /// SHA-256 of the site's current client certificate (DER), hex.
    #[serde(default)]
    pub cert_sha256: Option<String>,
    #[serde(default)]
    pub cert_expires_us: i64,
    /// Certificates refused from now on (revoked or rotated out).
    #[serde(default)]
    pub revoked: Vec<String>,
    /// An operator asked for the certificate to be rotated: the next
    /// exchange tells the site.
    #[serde(default)]
    pub rotate: bool,
    /// The zones of the site's own sites, and theirs (a tree): servers in
    /// them go down through this site. Reported by the site.
    #[serde(default)]
    pub subtree: Vec<String>,
    /// The site's compute nodes and those of the sites below it, as it
    /// last reported them (resources and health).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<stratus_wire::sync::NodeSummary>,
    /// When it last reported a change of them (µs).
    #[serde(default)]
    pub nodes_us: i64,
    pub created_us: i64,
    pub updated_us: i64,
}
record!(
    Site,
    "site",
    name = |s| Some(&s.name),
    unique = |s| Some(s.name.clone())
);

/// Liveness-table kinds: a site's last contact (µs) and the parent
/// revision it acknowledged. Neither is desired state, so neither goes
/// through the change log.
pub const CONTACT_KIND: &str = "site_contact";
pub const ACKED_KIND: &str = "site_acked";

/// What a parent knows of a site's link from its last exchange.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub last_contact_us: i64,
    pub acked: i64,
    pub software: String,
    pub rtt_ms: u64,
    /// Bytes on the wire as the parent counted them (request and answer
    /// bodies as sent, compressed where they were).
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub exchanges: u64,
}

/// Sites' in-memory state on a parent, and the newest revision this
/// process has seen in the change log (what the exchanges long-poll on).
pub struct Sites {
    revision: tokio::sync::watch::Sender<i64>,
    links: Mutex<HashMap<String, Link>>,
    /// Certificate fingerprint to site id.
    by_cert: Mutex<HashMap<String, String>>,
    /// Seconds without an exchange after which a site is unreachable.
    pub down_after_s: u64,
    /// Zone name to the site (of this controller) it belongs to: each
    /// site's own zone and its subtree's. Rebuilt after a site changes.
    routes: Mutex<Option<HashMap<String, String>>>,
    /// On a site: its own zone name at its parent. Servers asked for in
    /// it may land on any of this site's nodes.
    own_zone: Mutex<Option<String>>,
    /// Per site: operator requests waiting for its next exchange, and a
    /// counter its waiting exchange watches.
    tunnel: Mutex<HashMap<String, Queue>>,
    /// Requests sent down, waiting for the site's answer.
    answers: Mutex<HashMap<String, tokio::sync::oneshot::Sender<TunnelAnswer>>>,
    /// On a site: how image data comes from the parent.
    fetcher: std::sync::OnceLock<BlobFetcher>,
}

use stratus_wire::sync::{TunnelAnswer, TunnelRequest};

/// Fetches a blob (image data, by its sha512 and size) from this site's
/// parent: set by the sync link, used by the image service when a blob a
/// synced image names is not here yet.
pub type BlobFetcher = std::sync::Arc<
    dyn Fn(
            String,
            u64,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// A site's waiting requests and the counter its exchange watches.
type Queue = (Vec<TunnelRequest>, tokio::sync::watch::Sender<u64>);

impl Sites {
    pub fn new(down_after_s: u64) -> Self {
        Sites {
            revision: tokio::sync::watch::channel(0).0,
            links: Mutex::new(HashMap::new()),
            by_cert: Mutex::new(HashMap::new()),
            down_after_s,
            routes: Mutex::new(None),
            own_zone: Mutex::new(None),
            tunnel: Mutex::new(HashMap::new()),
            answers: Mutex::new(HashMap::new()),
            fetcher: std::sync::OnceLock::new(),
        }
    }

    /// On a site: sets how image data is fetched from the parent.
    pub fn set_blob_fetcher(&self, f: BlobFetcher) {
        let _ = self.fetcher.set(f);
    }

    /// Fetches blob `key` of `size` bytes from the parent; `None` when this
    /// controller is not a site.
    pub async fn fetch_blob(&self, key: &str, size: u64) -> Option<Result<(), String>> {
        let f = self.fetcher.get()?.clone();
        Some(f(key.to_string(), size).await)
    }

    /// Sends `req` down site `site`'s link and waits for its answer (at
    /// most `wait`).
    pub async fn ask(
        &self,
        site: &str,
        req: TunnelRequest,
        wait: std::time::Duration,
    ) -> Result<TunnelAnswer, String> {
        let reachable = self
            .link(site)
            .is_some_and(|l| now_us() - l.last_contact_us < self.down_after_s as i64 * 1_000_000);
        if !reachable {
            return Err("The site is unreachable: its link to this controller is down.".into());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = req.id.clone();
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        {
            let mut t = self.tunnel.lock().unwrap_or_else(|e| e.into_inner());
            let e = t
                .entry(site.to_string())
                .or_insert_with(|| (Vec::new(), tokio::sync::watch::channel(0).0));
            e.0.push(req);
            e.1.send_modify(|n| *n += 1);
        }
        let out = tokio::time::timeout(wait, rx).await;
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let drop_request = || {
            if let Some(e) = self
                .tunnel
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(site)
            {
                e.0.retain(|r| r.id != id);
            }
        };
        match out {
            Ok(Ok(a)) => Ok(a),
            _ => {
                drop_request();
                Err("The site did not answer in time: its link may be down.".into())
            }
        }
    }

    /// The requests waiting for site `site`'s next exchange (taken).
    pub fn take_requests(&self, site: &str) -> Vec<TunnelRequest> {
        self.tunnel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(site)
            .map(|e| std::mem::take(&mut e.0))
            .unwrap_or_default()
    }

    /// What a waiting exchange of site `site` watches for new requests.
    pub fn requests_watch(&self, site: &str) -> tokio::sync::watch::Receiver<u64> {
        self.tunnel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(site.to_string())
            .or_insert_with(|| (Vec::new(), tokio::sync::watch::channel(0).0))
            .1
            .subscribe()
    }

    /// A site's answer: it goes to whoever asked, if still waiting.
    pub fn answer(&self, a: TunnelAnswer) {
        if let Some(tx) = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&a.id)
        {
            let _ = tx.send(a);
        }
    }

    /// A site record changed (its name, its subtree): zones are looked up
    /// again.
    pub fn forget_routes(&self) {
        *self.routes.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The id of the site (of this controller) whose subtree holds `zone`.
    pub fn site_of_zone(&self, store: &Store, zone: &str) -> stratus_store::Result<Option<String>> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.is_none() {
            let mut map = HashMap::new();
            for s in store.list::<Site>(&Query::all())? {
                if s.state == state::JOINING {
                    continue;
                }
                for z in &s.subtree {
                    map.insert(z.clone(), s.id.clone());
                }
                map.insert(s.name.clone(), s.id.clone());
            }
            *routes = Some(map);
        }
        Ok(routes.as_ref().and_then(|m| m.get(zone).cloned()))
    }

    /// Every zone of this controller's sites and their subtrees.
    pub fn subtree_zones(&self, store: &Store) -> stratus_store::Result<Vec<String>> {
        self.site_of_zone(store, "")?;
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut zones: Vec<String> = routes
            .as_ref()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        zones.sort();
        Ok(zones)
    }

    /// On a site: its zone at its parent (from the parent's answers).
    pub fn set_own_zone(&self, name: &str) {
        let mut own = self.own_zone.lock().unwrap_or_else(|e| e.into_inner());
        if own.as_deref() != Some(name) {
            *own = Some(name.to_string());
        }
    }

    pub fn own_zone(&self) -> Option<String> {
        self.own_zone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The change log has reached `rev` (called by the log follower and
    /// by writers that want their change sent at once).
    pub fn advance(&self, rev: i64) {
        self.revision.send_if_modified(|v| {
            let newer = rev > *v;
            if newer {
                *v = rev;
            }
            newer
        });
    }

    pub fn watch(&self) -> tokio::sync::watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Records an exchange of site `id` (or its answer being sent).
    pub fn touch(&self, id: &str, f: impl FnOnce(&mut Link)) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let l = links.entry(id.to_string()).or_default();
        f(l);
        l.last_contact_us = now_us();
    }

    pub fn link(&self, id: &str) -> Option<Link> {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Every link's last contact and acknowledged revision, for the
    /// liveness table.
    pub fn snapshot(&self) -> Vec<(String, i64, i64)> {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, l)| (id.clone(), l.last_contact_us, l.acked))
            .collect()
    }

    /// Links known before a restart (newer ones win).
    pub fn prime(&self, store: &Store) -> stratus_store::Result<()> {
        let contact = store.liveness(CONTACT_KIND)?;
        let acked = store.liveness(ACKED_KIND)?;
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        for (id, at) in contact {
            let l = links.entry(id.clone()).or_default();
            l.last_contact_us = l.last_contact_us.max(at);
            l.acked = l.acked.max(acked.get(&id).copied().unwrap_or(0));
        }
        Ok(())
    }

    /// The site whose current certificate has fingerprint `fp`.
    pub fn by_certificate(&self, store: &Store, fp: &str) -> stratus_store::Result<Option<Site>> {
        let known = self
            .by_cert
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(fp)
            .cloned();
        if let Some(id) = known
            && let Some(s) = store.get::<Site>(&id)?
            && s.cert_sha256.as_deref() == Some(fp)
        {
            return Ok(Some(s));
        }
        let sites = store.list::<Site>(&Query::all())?;
        let mut map = self.by_cert.lock().unwrap_or_else(|e| e.into_inner());
        map.clear();
        for s in &sites {
            if let Some(c) = &s.cert_sha256 {
                map.insert(c.clone(), s.id.clone());
            }
        }
        Ok(sites
            .into_iter()
            .find(|s| s.cert_sha256.as_deref() == Some(fp)))
    }

    /// The state a site is shown in: an active site not heard of for
    /// `down_after_s` is unreachable.
    pub fn shown_state(&self, s: &Site) -> &'static str {
        match s.state.as_str() {
            state::JOINING => state::JOINING,
            state::REVOKED => state::REVOKED,
            state::DEAD => state::DEAD,
            state::DRAINING => state::DRAINING,
            _ => {
                let last = self.link(&s.id).map(|l| l.last_contact_us).unwrap_or(0);
                if now_us() - last < self.down_after_s as i64 * 1_000_000 {
                    state::ACTIVE
                } else {
                    state::UNREACHABLE
                }
            }
        }
    }

    /// The sites (and their subtrees) as availability zones: name and
    /// whether the site that leads there is reachable.
    pub fn zones(&self, store: &Store) -> stratus_store::Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        for s in store.list::<Site>(&Query::all())? {
            if s.state == state::JOINING || s.state == state::DEAD {
                continue;
            }
            let up = self.shown_state(&s) == state::ACTIVE;
            out.extend(s.subtree.iter().map(|z| (z.clone(), up)));
            out.push((s.name, up));
        }
        Ok(out)
    }

    /// Why no new server may go to `zone` (a draining or dead site's), if
    /// so.
    pub fn refuses_servers(
        &self,
        store: &Store,
        zone: &str,
    ) -> stratus_store::Result<Option<String>> {
        let Some(id) = self.site_of_zone(store, zone)? else {
            return Ok(None);
        };
        Ok(store.get::<Site>(&id)?.and_then(|s| match s.state.as_str() {
            state::DRAINING | state::DEAD => Some(format!(
                "The availability zone {zone} is at site {}, which is {}: it takes no new servers",
                s.name, s.state
            )),
            _ => None,
        }))
    }

    /// Whether `zone` is a site of this controller or in a site's subtree.
    pub fn is_site_zone(&self, store: &Store, zone: &str) -> stratus_store::Result<bool> {
        Ok(self.site_of_zone(store, zone)?.is_some())
    }
}
