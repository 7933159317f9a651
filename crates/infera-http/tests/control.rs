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
