//! `stratus up` and `stratus controller`: open the store, bootstrap (for
//! `up`), start the API, and stop cleanly on SIGINT or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use stratus_api::{ApiConfig, AppState};
use stratus_store::{Durability, Record};

use super::admin::open_store;
use crate::config::ServeArgs;

pub fn run(args: ServeArgs, bootstrap: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args, bootstrap))
}

async fn serve(args: ServeArgs, bootstrap: bool) -> anyhow::Result<()> {
    let common = &args.common;
    let public_url = common.public_url(Some(args.listen));
    let store = Arc::new(open_store(common, Durability::Full)?);
    let site = args.sync.parent.is_some();
    if site {
        // A site's identity, flavors and images come from its parent; it
        // keeps only its own catalog, region and node agents.
        site_catalog_region(&store, &common.region)?;
    } else if bootstrap {
        super::admin::bootstrap_and_report(&store, common, &public_url, None)?;
        if args.public_network != "none" {
            let admin = store
                .list::<stratus_api::identity::model::Project>(&stratus_store::Query::name(
                    "admin",
                ))?
                .into_iter()
                .find(|p| p.domain_id == stratus_api::identity::model::DEFAULT_DOMAIN_ID)
                .context("the admin project is missing after bootstrap")?;
            match stratus_api::network::ensure_public(&store, &admin.id, &args.public_network) {
                Ok(Some(id)) => tracing::info!(
                    network = id,
                    range = args.public_network,
                    "made the external network `public`"
                ),
                Ok(None) => {}
                Err(e) => anyhow::bail!(
                    "cannot make the public network {}: {}",
                    args.public_network,
                    e.message
                ),
            }
        }
    } else if store
        .get::<stratus_api::identity::model::Domain>(
            stratus_api::identity::model::DEFAULT_DOMAIN_ID,
        )?
        .is_none()
    {
        tracing::warn!("this store is not bootstrapped yet: run `stratus admin bootstrap`");
    }
    if site
        || store
            .get::<stratus_api::identity::model::Domain>(
                stratus_api::identity::model::DEFAULT_DOMAIN_ID,
            )?
            .is_some()
    {
        // Keep the catalog's endpoints at the address we serve on.
        for (kind, name, path) in [
            ("identity", "keystone", "identity"),
            ("image", "glance", "image"),
            ("compute", "nova", "compute/v2.1"),
            ("placement", "placement", "placement"),
            ("network", "neutron", "network"),
            // Cinder v3, as devstack lists it (the SDK strips the project).
            ("block-storage", "cinder", "volume/v3/%(project_id)s"),
            ("volumev3", "cinderv3", "volume/v3/%(project_id)s"),
        ] {
            stratus_api::identity::bootstrap::ensure_service(
                &store,
                kind,
                name,
                &common.region,
                &format!("{public_url}/{path}"),
            )
            .map_err(|e| anyhow::anyhow!("updating the catalog: {e}"))?;
        }
    }
    let config = ApiConfig {
        public_url: public_url.clone(),
        data_dir: common.data_dir.clone(),
        token_expiration_s: common.token_expiration,
        region: common.region.clone(),
        login_cache_s: common.login_cache_seconds,
        image_size_cap: common.image_size_cap,
        compute: args.compute.config(site),
        http: args.http.limits(),
        site_down_time_s: args.sync.site_down_time,
    };
    if !site && store.meta_get("compute.flavors_seeded")?.is_none() {
        stratus_api::compute::ensure_default_flavors(&store)
            .map_err(|e| anyhow::anyhow!("creating the default flavors: {e}"))?;
        store.write(|tx| tx.meta_set("compute.flavors_seeded", "1"))?;
    }
    if !site {
        stratus_api::volume::ensure_default_type(&store)
            .map_err(|e| anyhow::anyhow!("creating the default volume type: {e}"))?;
    }
    let state =
        AppState::new(config, store).map_err(|e| anyhow::anyhow!("starting the API: {e}"))?;
    if let Some(m) = &args.limit_model {
        let model = stratus_api::identity::quota::Model::parse(m).ok_or_else(|| {
            anyhow::anyhow!(
                "--limit-model {m}: the models are flat, strict-two-level and hierarchical"
            )
        })?;
        stratus_api::identity::quota::set_model(&state.store, model)
            .map_err(|e| anyhow::anyhow!("setting the limit model: {e}"))?;
    }
    crate::datadir::migrate_credentials(&state.store, &state.identity.credential_keys)?;
    import_images(&state, args.import_images.as_deref())?;
    stratus_api::compute::service::recover(&state)
        .map_err(|e| anyhow::anyhow!("recovering compute state: {e}"))?;
    // Heartbeats are written to the store (and read back from it) several
    // times per `service_down_time`, at most every 15 s: a node
    // heartbeating to another controller is up here too.
    let every = Duration::from_secs((state.compute.config.service_down_time_s / 4).clamp(1, 15));
    let beats = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let st = beats.clone();
            let r = tokio::task::spawn_blocking(move || {
                stratus_api::compute::service::flush_heartbeats(&st)
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "could not record node heartbeats");
            }
        }
    });
    // Nodes heartbeat to one controller each; every controller reads
    // when the others last heard of theirs, so none takes a node that
    // heartbeats elsewhere for down.
    let live = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let st = live.clone();
            let r = tokio::task::spawn_blocking(move || {
                st.store
                    .liveness(stratus_api::compute::model::ComputeNode::KIND)
                    .map(|seen| st.compute.prime_seen(seen))
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "could not read node liveness");
            }
        }
    });
    // One controller process on the store holds the singleton lease and
    // runs the loops that must run once: the sweep for servers nobody is
    // scheduling, and change-log compaction.
    let gained = state.clone();
    tokio::spawn(stratus_api::lease::keep(
        state.singleton.clone(),
        move || {
            if let Err(e) = stratus_api::compute::scheduler::note_all_waiting(&gained) {
                tracing::warn!(error = %e, "cannot list the servers waiting for the scheduler");
            }
        },
    ));
    let sweeper = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ha_tick = std::time::Instant::now();
        loop {
            tick.tick().await;
            if !sweeper.singleton.is_held() {
                continue;
            }
            let st = sweeper.clone();
            let r =
                tokio::task::spawn_blocking(move || stratus_api::compute::scheduler::sweep(&st))
                    .await;
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "could not sweep for unscheduled servers");
            }
            // Instance HA: the servers of nodes that stay down, every 5 s.
            if ha_tick.elapsed() >= Duration::from_secs(5) {
                ha_tick = std::time::Instant::now();
                let st = sweeper.clone();
                let r =
                    tokio::task::spawn_blocking(move || stratus_api::compute::ha::sweep(&st)).await;
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "instance HA: could not look for nodes down");
                }
            }
        }
    });
    if args.change_log_retention_hours > 0 {
        let state = state.clone();
        let keep_ms = args.change_log_retention_hours as i64 * 3_600_000;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(600));
            loop {
                tick.tick().await;
                if !state.singleton.is_held() {
                    continue;
                }
                let st = state.store.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0);
                    st.compact_older_than(now_ms - keep_ms)
                })
                .await;
                match r {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(entries = n, "compacted the change log"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not compact the change log"),
                    Err(e) => tracing::warn!(error = %e, "change-log compaction stopped"),
                }
            }
        });
    }
    // Agents and identity's caches follow the change log too, so a change
    // another controller or a sync stream writes reaches them.
    tokio::spawn(stratus_api::follow::follow_changes(
        state.clone(),
        Duration::from_millis(250),
    ));
    let keys = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            keys.identity.refresh_keys();
        }
    });
    if let Some(addr) = args.sync.sync_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening for sites on {addr}"))?;
        tracing::info!(listen = %addr, "serving sites");
        let st = state.clone();
        tokio::spawn(async move {
            if let Err(e) = stratus_api::sync::listener::serve(st, l).await {
                tracing::error!(error = %e, "the sync listener stopped");
            }
        });
    }
    if let Some(parent) = &args.sync.parent {
        tokio::spawn(stratus_api::sync::link::run(
            state.clone(),
            stratus_api::sync::link::LinkConfig {
                parent: parent.clone(),
                join_token: args.sync.join_token.clone(),
            },
        ));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, %public_url, "stratus is serving");
    if let Some(addr) = args.metrics_listen {
        // Metrics without a token, for a Prometheus on a private
        // interface; it ends with the process.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening for metrics on {addr}"))?;
        tracing::info!(listen = %addr, "serving metrics without a token");
        tokio::spawn(stratus_api::listener::serve(
            listener,
            stratus_api::metrics::open_router(state.clone()),
            state.config.http.clone(),
            std::future::pending(),
        ));
    }
    if bootstrap && !args.no_agent {
        // The API serves even when this machine cannot run workloads; the
        // log says what is missing.
        if let Err(e) = start_local_agent(&args, &public_url, &state) {
            tracing::error!(error = %format!("{e:#}"), "no node agent in this process: servers cannot run here until that is fixed (or use --driver fake to simulate)");
            eprintln!("stratus: no node agent: {e:#}");
        }
    }
    let closing = state.clone();
    let last = state.clone();
    let limits = state.config.http.clone();
    stratus_api::listener::serve(listener, stratus_api::router(state), limits, async move {
        shutdown_signal().await;
        // Agents' long polls would hold the shutdown for up to 30 s.
        closing.compute.close();
    })
    .await;
    // Keep the latest heartbeats for the next start.
    if let Err(e) = stratus_api::compute::service::flush_heartbeats(&last) {
        tracing::warn!(error = %e, "could not record node heartbeats");
    }
    // Another controller takes the singleton loops at once.
    if let Err(e) = last.singleton.release() {
        tracing::warn!(error = %e, "could not give up the controller lease");
    }
    tracing::info!("stopped");
    Ok(())
}

/// A site's own region record: its catalog's endpoints name it. The
/// services' endpoints are kept up to date at every start as on any
/// controller.
fn site_catalog_region(store: &stratus_store::Store, region: &str) -> anyhow::Result<()> {
    use stratus_api::identity::model::Region;
    store.write(|tx| {
        if tx.get::<Region>(region)?.is_none() {
            tx.insert(&Region {
                id: region.to_string(),
                description: String::new(),
                parent_region_id: None,
            })?;
        }
        Ok::<_, stratus_store::StoreError>(())
    })?;
    Ok(())
}

/// Imports the images listed in `dir/images.tsv` (name, file,
/// disk_format, container_format, description), owned by the admin
/// project; without a directory, suggests it when the cloud has no images.
fn import_images(state: &AppState, dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use stratus_api::image::local::{LocalImage, import};
    use stratus_api::image::model::Image;
    let Some(dir) = dir else {
        if state
            .store
            .list::<Image>(&stratus_store::Query::all())?
            .is_empty()
        {
            tracing::info!(
                "no images yet: `scripts/build-test-images` builds busybox test images and `stratus up --import-images target/test-images` imports them"
            );
        }
        return Ok(());
    };
    let admin = state
        .store
        .get_unique::<stratus_api::identity::model::Project>(&format!(
            "{}/admin",
            stratus_api::identity::model::DEFAULT_DOMAIN_ID
        ))?
        .context("the admin project is missing: run `stratus admin bootstrap`")?;
    let list = dir.join("images.tsv");
    let text = std::fs::read_to_string(&list).with_context(|| {
        format!(
            "reading {} (build it with scripts/build-test-images)",
            list.display()
        )
    })?;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        let [name, file, disk, container, rest @ ..] = f.as_slice() else {
            anyhow::bail!("{}: bad line {line:?}", list.display());
        };
        let img = LocalImage {
            name,
            file: &dir.join(file),
            disk_format: disk,
            container_format: container,
            description: rest.first().copied(),
        };
        match import(state, &admin.id, &img) {
            Ok(Some(i)) => println!("imported image {name} ({disk}/{container}) as {}", i.id),
            Ok(None) => tracing::info!(image = name, "image already present"),
            Err(e) => anyhow::bail!("importing {name}: {e}"),
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

/// `stratus up` runs a node agent in-process: the same agent as
/// `stratus agent`, talking to this controller over loopback, as its
/// node's own user (made here, with a new password on every start).
/// Its metrics are the controller's too (`/metrics` shows both).
fn start_local_agent(args: &ServeArgs, public_url: &str, state: &AppState) -> anyhow::Result<()> {
    let common = &args.common;
    let store = &state.store;
    let state_dir = common.data_dir.join("agent");
    let driver = super::agent::make_driver(&args.agent, &state_dir, None)?;
    let host = super::agent::node_name(&args.agent, None);
    let metrics = Arc::new(stratus_agent::node::metrics::AgentMetrics::new(&host));
    let shown = metrics.clone();
    state.metrics.attach(Arc::new(move |out: &mut String| {
        out.push_str(&shown.scrape())
    }));
    let node = stratus_api::identity::node_users::provision(store, &host)
        .map_err(|e| anyhow::anyhow!("making the node's identity: {e}"))?;
    let cfg = stratus_agent::node::AgentConfig {
        controller: public_url.to_string(),
        host,
        login: stratus_agent::node::Login::Node(node),
        state_dir,
        listen: args.agent.agent_listen,
        advertise: args.agent.agent_url.clone(),
        orphans: args.agent.orphans.into(),
        tunnel_ip: args.agent.tunnel_ip,
        l3: true,
        heartbeat: Duration::from_secs(10),
        metrics,
        volumes: Some(stratus_agent::node::volumes::VolumesConfig {
            dir: args
                .agent
                .volumes
                .clone()
                .unwrap_or_else(|| common.data_dir.join("volumes")),
            max_over_subscription_ratio: args.agent.max_over_subscription_ratio,
            backend_name: args.agent.volume_backend.clone(),
        }),
    };
    std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || {
            if let Err(e) = stratus_agent::node::run(cfg, driver) {
                tracing::error!(error = %format!("{e:#}"), "node agent stopped");
            }
        })?;
    Ok(())
}
