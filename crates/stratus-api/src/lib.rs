//! The Stratus HTTP APIs: OpenStack-compatible services on one listener,
//! each under its own path prefix (the devstack layout), sharing one
//! [`AppState`].
//!
//! Handlers translate: they decode and validate a request, check policy,
//! call the service and render. Service logic lives beside them in each
//! service module (`identity::service`, ...).

/// Implements [`stratus_store::Record`] for a struct with an `id` field.
macro_rules! record {
    ($t:ty, $kind:literal $(, owner = |$o:ident| $owner:expr)? $(, parent = |$p:ident| $parent:expr)? $(, name = |$n:ident| $name:expr)? $(, unique = |$u:ident| $unique:expr)? $(, created = |$c:ident| $created:expr)? $(, state = |$st:ident| $state:expr)?) => {
        impl Record for $t {
            const KIND: &'static str = $kind;
            fn id(&self) -> &str { &self.id }
            $(fn owner(&self) -> Option<&str> { let $o = self; $owner })?
            $(fn parent(&self) -> Option<&str> { let $p = self; $parent })?
            $(fn name(&self) -> Option<&str> { let $n = self; $name })?
            $(fn unique_key(&self) -> Option<String> { let $u = self; $unique })?
            $(fn created(&self) -> Option<i64> { let $c = self; $created })?
            $(fn state(&self) -> Option<String> { let $st = self; $state })?
        }
    };
}

pub mod compute;
pub mod dashboard;
pub mod error;
pub mod follow;
pub mod identity;
pub mod image;
pub mod json;
pub mod lease;
pub mod listener;
pub mod metrics;
pub mod middleware;
pub mod network;
pub mod placement;
pub mod sites;
pub mod sync;
pub mod timeutil;
pub mod volume;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use stratus_store::Store;

pub use error::ApiError;
pub use listener::HttpLimits;

/// Settings the API layer needs; the binary fills them from its config.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Base URL clients reach this controller at, without a trailing slash
    /// (e.g. `http://127.0.0.1:8080`). Used in links and the catalog.
    pub public_url: String,
    /// Directory holding the Fernet key repository (`fernet-keys/`).
    pub data_dir: PathBuf,
    /// Token lifetime in seconds (Keystone's `[token] expiration`).
    pub token_expiration_s: u64,
    /// Region the catalog advertises.
    pub region: String,
    /// Seconds a verified password login is remembered (see
    /// `identity::password`); 0 runs Argon2 on every login.
    pub login_cache_s: u64,
    /// Largest image accepted, in bytes (Glance's `image_size_cap`).
    pub image_size_cap: u64,
    /// Scheduler and placement settings.
    pub compute: compute::ComputeConfig,
    /// Request size limits at the HTTP edge.
    pub http: HttpLimits,
    /// Seconds without an exchange after which a site is unreachable.
    pub site_down_time_s: u64,
}

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    pub config: ApiConfig,
    pub store: Arc<Store>,
    pub identity: identity::Identity,
    pub image: image::ImageService,
    pub compute: compute::Compute,
    pub placement: placement::Placement,
    /// The lease for the singleton loops (see [`lease`]).
    pub singleton: Arc<lease::Lease>,
    /// Servers seen waiting for the scheduler in the change log (see
    /// `compute::scheduler::sweep`).
    pub unscheduled: compute::scheduler::Unscheduled,
    /// Edge sites of this controller (see [`sites`]).
    pub sites: sites::Sites,
    /// Sync with sites and with this controller's parent (see [`sync`]).
    pub sync: sync::parent::SyncState,
    /// Prometheus metrics (see [`metrics`]).
    pub metrics: metrics::Metrics,
    /// Wakes storage nodes waiting for volume work (see [`volume`]).
    pub volumes: volume::Volumes,
    /// Every resource the quota engine enforces, of every service (see
    /// `identity::quota`).
    pub quota_meters: Vec<&'static identity::quota::Meter>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    /// Builds the shared state: loads Fernet keys (creating them on first
    /// use) and the revocation list.
    pub fn new(config: ApiConfig, store: Arc<Store>) -> Result<Self, ApiError> {
        let identity = identity::Identity::open(&config, store.clone())?;
        let image = image::ImageService::open(&config.data_dir, &store, config.image_size_cap)?;
        let compute = compute::Compute::new(config.compute.clone(), store.clone());
        let placement = placement::Placement::open(store.clone())?;
        let store_for_lease = store.clone();
        let config_site_down = config.site_down_time_s;
        let config_data_dir = config.data_dir.clone();
        let metrics = metrics::Metrics::new();
        store.observe(metrics.store_observer());
        Ok(AppState {
            inner: Arc::new(Inner {
                config,
                store,
                identity,
                image,
                compute,
                placement,
                singleton: Arc::new(lease::Lease::new(store_for_lease, "singleton")),
                unscheduled: Default::default(),
                sites: sites::Sites::new(config_site_down),
                sync: sync::parent::SyncState::new(&config_data_dir),
                metrics,
                volumes: Default::default(),
                quota_meters: compute::quotas::METERS
                    .iter()
                    .chain(network::quotas::METERS.iter())
                    .chain(volume::service::METERS.iter())
                    .chain(image::quota::METERS.iter())
                    .copied()
                    .collect(),
            }),
        })
    }
}

/// The whole public router: every service under its prefix, with request
/// ids, access logging and the request limits (see [`middleware`]).
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(identity::router())
        .merge(image::router())
        .merge(compute::router())
        .merge(placement::router())
        .merge(network::router())
        .merge(volume::router())
        .merge(sync::parent::routes())
        .merge(compute::lease_api::routes())
        .merge(dashboard::router(state.clone()))
        .merge(metrics::router())
        .route("/", axum::routing::get(root_versions))
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed)
        // Bodies are read under `HttpLimits` (see `middleware`), not
        // axum's default.
        .layer(axum::extract::DefaultBodyLimit::disable())
        // For middleware that has no state of its own (`volume::upload`).
        .layer(axum::Extension(state.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_context,
        ))
        .with_state(state)
}

/// `GET /`: what lives here, for curious clients; a browser (it accepts
/// HTML) is sent to the dashboard.
async fn root_versions(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if dashboard::wants_html(&headers) {
        return dashboard::redirect_to_dashboard();
    }
    let base = &state.config.public_url;
    axum::Json(serde_json::json!({
        "name": "stratus",
        "version": env!("CARGO_PKG_VERSION"),
        "services": {
            "identity": format!("{base}/identity/v3/"),
            "image": format!("{base}/image/v2/"),
            "compute": format!("{base}/compute/v2.1/"),
            "placement": format!("{base}/placement/"),
            "network": format!("{base}/network/"),
            "volume": format!("{base}/volume/v3/"),
        }
    }))
    .into_response()
}
