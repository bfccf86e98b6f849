//! The parent's sync listener (`--sync-listen`): TLS with the site CA's
//! certificate; a site that presents its client certificate is known by
//! the certificate's SHA-256 (see `parent::Peer`). Also keeps the sites'
//! last contact and acknowledged revision in the liveness table.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::parent::{Peer, sync_routes};
use super::pki::fingerprint;
use crate::AppState;
use crate::sites::{ACKED_KIND, CONTACT_KIND};

/// Serves sites on `listener` until the process ends.
pub async fn serve(state: AppState, listener: TcpListener) -> Result<(), crate::ApiError> {
    let ca = {
        let st = state.clone();
        tokio::task::spawn_blocking(move || st.sync.ca())
            .await
            .map_err(|e| crate::ApiError::internal(e.to_string()))??
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
    let router = sync_routes()
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(state.clone());
    {
        let st = state.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || st.sites.prime(&st.store)).await {
            tracing::warn!(error = %e, "cannot read the sites' last contact");
        }
    }
    tokio::spawn(flush_links(state.clone()));
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a sync connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(30), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::info!(%addr, error = %e, "sync TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| fingerprint(c.as_ref()));
            let service = TowerToHyperService::new(router.layer(axum::Extension(Peer(peer))));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "sync connection ended");
            }
        });
    }
}

/// Writes the sites' last contact and acknowledged revisions to the
/// liveness table every 15 s (not the change log), so a restarted parent
/// still knows them.
async fn flush_links(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        let links = state.sites.snapshot();
        if links.is_empty() {
            continue;
        }
        let st = state.clone();
        let r = tokio::task::spawn_blocking(move || {
            st.store.write(|tx| {
                for (id, contact, acked) in &links {
                    tx.set_liveness(CONTACT_KIND, id, *contact)?;
                    tx.set_liveness(ACKED_KIND, id, *acked)?;
                }
                Ok::<_, stratus_store::StoreError>(())
            })
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "could not record the sites' links");
        }
    }
}
