//! Model control modes at the HTTP edge: outside explicit mode, load and unload are refused
//! with Triton's status and message, and the model keeps serving.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use infera_core::InferenceServer;
use infera_core::server::{ControlMode, LOAD_NOT_ALLOWED};
use infera_testkit::{Repo, memory_config};
use tower::ServiceExt;

async fn post(app: &axum::Router, path: &str) -> (StatusCode, String) {
    let r = app
        .clone()
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn load_and_unload_are_refused_unless_explicit() {
    let repo = Repo::new();
    repo.model("m", &memory_config("m", 4, 8, &[]));
    for mode in [ControlMode::None, ControlMode::Poll] {
        let server = repo.server(vec![]);
        let server = Arc::new(
            Arc::try_unwrap(server)
                .ok()
                .expect("the only reference")
                .with_control_mode(mode),
        );
        let app = infera_http::router(server.clone(), 1 << 20);
        for action in ["load", "unload"] {
            let (status, body) = post(&app, &format!("/v2/repository/models/m/{action}")).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{mode:?} {action}");
            assert!(body.contains(LOAD_NOT_ALLOWED), "{body}");
        }
        assert!(server.model_ready("m", None));
    }
    // Explicit (the default) allows them.
    let server: Arc<InferenceServer> = repo.server(vec![]);
    let app = infera_http::router(server.clone(), 1 << 20);
    assert_eq!(
        post(&app, "/v2/repository/models/m/unload").await.0,
        StatusCode::OK
    );
    assert!(!server.model_ready("m", None));
}

/// A config edit that only changes the instance count resizes the loaded model in place: the
/// versions (queues, sessions, statistics) stay the same objects and the config follows. Any
/// other edit reloads.
#[tokio::test]
async fn an_instance_count_edit_resizes_without_reloading() {
    let repo = Repo::new();
    let cfg = memory_config("m", 4, 8, &[]);
    repo.model("m", &cfg);
    let server = repo.server(vec![]);
    let before = server.repository.get("m").unwrap();
    let count = |server: &InferenceServer| {
        let m = server.repository.get("m").unwrap();
        let n = match &m.versions.values().next().unwrap().runner {
            infera_core::repository::Runner::Scheduler(s) => s.instances(),
            infera_core::repository::Runner::Ensemble(_) => 0,
        };
        (n, m.config.instance_group[0].count)
    };
    assert_eq!(count(&server), (1, 1));
    repo.model(
        "m",
        &format!("{cfg}instance_group [ {{ count: 3 kind: KIND_CPU }} ]\n"),
    );
    server.repository.load("m", None).unwrap();
    let after = server.repository.get("m").unwrap();
    assert!(
        Arc::ptr_eq(&before.versions[&1], &after.versions[&1]),
        "resized in place"
    );
    assert_eq!(count(&server), (3, 3));
    // Back down, then a real change (max_batch_size) reloads.
    repo.model("m", &cfg);
    server.repository.load("m", None).unwrap();
    assert_eq!(count(&server), (1, 1));
    assert!(Arc::ptr_eq(
        &before.versions[&1],
        &server.repository.get("m").unwrap().versions[&1]
    ));
    repo.model("m", &cfg.replace("max_batch_size: 8", "max_batch_size: 4"));
    server.repository.load("m", None).unwrap();
    let reloaded = server.repository.get("m").unwrap();
    assert!(!Arc::ptr_eq(&before.versions[&1], &reloaded.versions[&1]));
    assert_eq!(reloaded.config.max_batch_size, 4);
}
