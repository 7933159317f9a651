//! Poll mode: follow the repository's folders, loading new and changed models beside the
//! serving ones (they swap in once ready) and unloading removed ones.

use std::sync::Arc;
use std::time::Duration;

use infera_core::InferenceServer;
use infera_core::repository::poll::Poller;
use tracing::{info, warn};

pub(super) async fn follow(server: Arc<InferenceServer>, every: Duration) {
    let repo = server.repository.clone();
    let poller = {
        let repo = repo.clone();
        tokio::task::spawn_blocking(move || Poller::new(&repo)).await
    };
    let Ok(mut poller) = poller else {
        warn!("cannot read the model repository to follow it");
        return;
    };
    info!(
        every_secs = every.as_secs(),
        "following the model repository (poll mode)"
    );
    loop {
        tokio::time::sleep(every).await;
        let repo = repo.clone();
        let looked = tokio::task::spawn_blocking(move || {
            let changes = poller.changes(&repo);
            for name in &changes.load {
                info!(model = %name, "repository changed: loading");
            }
            repo.load_each(changes.load.clone());
            for name in &changes.unload {
                match repo.unload(name, false) {
                    Ok(()) => info!(model = %name, "model folder removed: unloaded"),
                    Err(e) => warn!(model = %name, error = %e, "model folder removed, but it cannot be unloaded"),
                }
            }
            poller
        })
        .await;
        match looked {
            Ok(p) => poller = p,
            Err(e) => {
                warn!(error = %e, "the repository poll failed; polling stops");
                return;
            }
        }
    }
}
