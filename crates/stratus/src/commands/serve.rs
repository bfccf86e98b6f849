//! `stratus up` and `stratus controller`: open the store, bootstrap (for
//! `up`), start the API, and stop cleanly on SIGINT or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use stratus_api::{ApiConfig, AppState};
use stratus_store::Durability;

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
    if bootstrap {
        super::admin::bootstrap_and_report(&store, common, &public_url, None)?;
    } else if store
        .get::<stratus_api::identity::model::Domain>(
            stratus_api::identity::model::DEFAULT_DOMAIN_ID,
        )?
        .is_none()
    {
        tracing::warn!("this store is not bootstrapped yet: run `stratus admin bootstrap`");
    } else {
        // Keep the catalog's identity endpoint at the address we serve on.
        stratus_api::identity::bootstrap::ensure_service(
            &store,
            "identity",
            "keystone",
            &common.region,
            &format!("{public_url}/identity"),
        )
        .map_err(|e| anyhow::anyhow!("updating the catalog: {e}"))?;
    }
    let config = ApiConfig {
        public_url: public_url.clone(),
        data_dir: common.data_dir.clone(),
        token_expiration_s: common.token_expiration,
        region: common.region.clone(),
        login_cache_s: common.login_cache_seconds,
    };
    let state =
        AppState::new(config, store).map_err(|e| anyhow::anyhow!("starting identity: {e}"))?;
    let keys = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            keys.identity.refresh_keys();
        }
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, %public_url, "stratus is serving");
    axum::serve(listener, stratus_api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("stopped");
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
