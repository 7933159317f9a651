//! Request ids through the HTTP middleware: a client's sane id is echoed, anything else is
//! replaced by a fresh one, and every response carries one (errors and 401s too).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use infera_testkit::{Repo, memory_config};
use tower::ServiceExt;

fn app() -> (axum::Router, Repo) {
    let repo = Repo::new();
    repo.model("m", &memory_config("m", 4, 8, &[]));
    let router = infera_http::router(repo.server(vec![]), 1 << 20);
    (infera_http::observe::observe(router, true), repo)
}

async fn id_of(app: &axum::Router, path: &str, given: Option<&str>) -> (StatusCode, String) {
    let mut b = Request::builder().uri(path);
    if let Some(g) = given {
        b = b.header("x-request-id", g);
    }
    let r = app
        .clone()
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    (r.status(), id)
}

#[tokio::test]
async fn responses_carry_the_clients_id_or_a_new_one() {
    let (app, _repo) = app();
    assert_eq!(
        id_of(&app, "/v2/health/ready", Some("abc-42")).await.1,
        "abc-42"
    );
    let (status, id) = id_of(&app, "/v2/models/nope", Some("trace-1")).await;
    assert_eq!((status, id.as_str()), (StatusCode::NOT_FOUND, "trace-1"));
    let (_, a) = id_of(&app, "/v2/health/live", None).await;
    let (_, b) = id_of(&app, "/v2/health/live", None).await;
    assert!(a != b && a.len() == 20 && b.len() == 20, "{a} {b}");
    let long = "x".repeat(200);
    let (_, c) = id_of(&app, "/v2/health/live", Some(&long)).await;
    assert_eq!(c.len(), 20);
}

#[tokio::test]
async fn requests_are_counted_by_route_template_known_model_and_status() {
    let repo = Repo::new();
    repo.model("m", &memory_config("m", 4, 8, &[]));
    let server = repo.server(vec![]);
    let metrics = server.metrics.clone();
    let app = infera_http::observe::observe_with(
        infera_http::router(server.clone(), 1 << 20),
        infera_http::observe::Observe {
            access_log: false,
            metrics: Some((metrics.api.clone(), server)),
            default_model: "m".into(),
            traces: false,
        },
    );
    for path in [
        "/v2/models/m",
        "/v2/models/m",
        "/v2/models/ghost-1234",
        "/no/route",
    ] {
        id_of(&app, path, None).await;
    }
    let text = metrics.render();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with("infera_api_requests_total{") && l.contains(needle))
            .unwrap_or_else(|| panic!("no series with {needle} in\n{text}"))
            .to_string()
    };
    assert!(line(r#"model="m""#).contains(r#"endpoint="/v2/models/{model}""#));
    assert!(line(r#"model="m""#).ends_with(" 2"));
    // A name the repository does not know is not a label value.
    assert!(!text.contains("ghost-1234"));
    assert!(line(r#"code="404""#).contains(r#"model="""#));
    assert!(text.contains("infera_api_request_duration_seconds_bucket"));
    assert!(text.contains(r#"le="0.3""#));
}
