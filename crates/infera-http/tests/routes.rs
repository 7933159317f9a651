//! Traffic routes through the HTTP front-end, on in-memory models: a routed name answers
//! from its variants (sticky per routing key), a failing canary candidate is rolled back and
//! the index says why, a shadow's agreement is counted, and the API refuses mistakes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use infera_auth::Group;
use infera_core::InferenceServer;
use infera_testkit::{Repo, memory_config};
use serde_json::{Value, json};
use tower::ServiceExt;

fn server() -> (Repo, Arc<InferenceServer>) {
    let repo = Repo::new();
    repo.model("stable", &memory_config("stable", 4, 8, &[]))
        .model(
            "candidate",
            &memory_config("candidate", 4, 8, &[("scale", "2"), ("fail_value", "7")]),
        )
        .model("shadow", &memory_config("shadow", 4, 8, &[("scale", "-1")]));
    let s = repo.server(vec![]);
    (repo, s)
}

async fn call(app: &axum::Router, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn infer_body(x: [f32; 4], key: Option<&str>) -> Value {
    let mut b =
        json!({"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": x}]});
    if let Some(k) = key {
        b["parameters"] = json!({"routing_key": k});
    }
    b
}

#[tokio::test]
async fn a_routed_name_answers_from_its_variants_and_keys_stick() {
    let (_repo, s) = server();
    let app = infera_http::router(s.clone(), 1 << 20);
    let route = json!({"variants": [
        {"name": "a", "model": "stable", "weight": 50},
        {"name": "b", "model": "candidate", "weight": 50}]});
    let (code, body) = call(&app, Method::PUT, "/v2/routes/shop", route).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let mut by_model = std::collections::HashMap::new();
    for i in 0..200 {
        let key = format!("k{}", i % 20);
        let (code, r) = call(
            &app,
            Method::POST,
            "/v2/models/shop/infer",
            infer_body([1.0; 4], Some(&key)),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{r}");
        let model = r["model_name"].as_str().unwrap().to_string();
        let y = r["outputs"][0]["data"][0].as_f64().unwrap();
        assert_eq!(y, if model == "candidate" { 2.0 } else { 1.0 });
        assert_eq!(by_model.entry(key).or_insert_with(|| model.clone()), &model);
    }
    let models: std::collections::HashSet<_> = by_model.values().collect();
    assert_eq!(
        models.len(),
        2,
        "20 keys over a 50/50 split reach both variants"
    );
    let (_, status) = call(&app, Method::GET, "/v2/routes/shop", Value::Null).await;
    let served: u64 = status["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["success"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 200);
}

#[tokio::test]
async fn a_failing_candidate_is_rolled_back_and_the_index_says_why() {
    let (_repo, s) = server();
    let app = infera_http::router(s.clone(), 1 << 20);
    let route = json!({
        "variants": [{"name": "stable", "model": "stable", "weight": 0},
                     {"name": "cand", "model": "candidate", "weight": 0}],
        "canary": {"candidate": "cand", "start_weight": 50, "min_requests": 10, "window_secs": 60}});
    assert_eq!(
        call(&app, Method::PUT, "/v2/routes/shop", route).await.0,
        StatusCode::OK
    );
    let mut failed = 0;
    for i in 0..100 {
        let x = if i % 3 == 0 { [7.0; 4] } else { [1.0; 4] };
        let (code, _) = call(
            &app,
            Method::POST,
            "/v2/models/shop/infer",
            infer_body(x, None),
        )
        .await;
        if code != StatusCode::OK {
            assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
            failed += 1;
        }
    }
    assert!(failed > 0);
    s.routes.tick(Instant::now());
    let (_, status) = call(&app, Method::GET, "/v2/routes/shop", Value::Null).await;
    assert_eq!(status["canary"]["phase"], "rolled_back", "{status}");
    assert_eq!(status["variants"][1]["failure"], failed);
    let (_, index) = call(&app, Method::POST, "/v2/repository/index", json!({})).await;
    let cand = index
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "candidate")
        .unwrap();
    assert!(
        cand["reason"]
            .as_str()
            .unwrap()
            .starts_with("canary of route 'shop' rolled back: error ratio"),
        "{cand}"
    );
    for _ in 0..50 {
        let (code, r) = call(
            &app,
            Method::POST,
            "/v2/models/shop/infer",
            infer_body([7.0; 4], None),
        )
        .await;
        assert_eq!(
            (code, r["model_name"].as_str()),
            (StatusCode::OK, Some("stable"))
        );
    }
    let (code, r) = call(&app, Method::POST, "/v2/routes/shop/promote", json!({})).await;
    assert_eq!(
        (code, r["canary"]["phase"].as_str()),
        (StatusCode::OK, Some("promoted"))
    );
}

#[tokio::test]
async fn a_shadow_counts_agreement_without_touching_the_answer() {
    let (_repo, s) = server();
    s.start_routing();
    let app = infera_http::router(s.clone(), 1 << 20);
    let route = json!({"variants": [{"name": "only", "model": "stable", "weight": 1}],
                       "shadow": {"model": "shadow"}});
    assert_eq!(
        call(&app, Method::PUT, "/v2/routes/shop", route).await.0,
        StatusCode::OK
    );
    // Equal scores: both pick class 0. Rising scores: stable picks 3, the negated shadow 0.
    for x in [
        [5.0; 4],
        [1.0, 2.0, 3.0, 4.0],
        [5.0; 4],
        [1.0, 2.0, 3.0, 4.0],
        [1.0, 2.0, 3.0, 4.0],
    ] {
        let (code, r) = call(
            &app,
            Method::POST,
            "/v2/models/shop/infer",
            infer_body(x, None),
        )
        .await;
        assert_eq!(
            (code, r["model_name"].as_str()),
            (StatusCode::OK, Some("stable"))
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let shadow = loop {
        let (_, status) = call(&app, Method::GET, "/v2/routes/shop", Value::Null).await;
        if status["shadow"]["compared"] == 5 || Instant::now() > deadline {
            break status["shadow"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (shadow["agreed"].as_u64(), shadow["disagreed"].as_u64()),
        (Some(2), Some(3)),
        "{shadow}"
    );
    assert!(
        s.metrics
            .render()
            .contains("infera_shadow_requests_total{result=\"disagree\",route=\"shop\"} 3")
    );
}

#[tokio::test]
async fn the_routes_api_refuses_mistakes_and_keeps_the_route_in_force() {
    let (_repo, s) = server();
    let app = infera_http::router(s.clone(), 1 << 20);
    let good = json!({"variants": [{"name": "a", "model": "stable", "weight": 1}]});
    assert_eq!(
        call(&app, Method::PUT, "/v2/routes/shop", good).await.0,
        StatusCode::OK
    );
    let cases = [
        (
            json!({"variants": [{"name": "a", "model": "missing", "weight": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"variants": [{"name": "a", "model": "stable", "version": 3, "weight": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"variants": "all"}), StatusCode::BAD_REQUEST),
        (json!([1, 2]), StatusCode::BAD_REQUEST),
    ];
    for (body, want) in cases {
        let (code, err) = call(&app, Method::PUT, "/v2/routes/shop", body.clone()).await;
        assert_eq!(code, want, "{body}: {err}");
        assert!(err["error"].is_string());
    }
    let (_, r) = call(&app, Method::GET, "/v2/routes/shop", Value::Null).await;
    assert_eq!(r["variants"][0]["model"], "stable");
    assert_eq!(
        call(&app, Method::GET, "/v2/routes/none", Value::Null)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, Method::POST, "/v2/routes/shop/rollback", json!({}))
            .await
            .0,
        StatusCode::CONFLICT
    );
    // A routing key is an id, not a payload.
    let long = "k".repeat(300);
    let (code, _) = call(
        &app,
        Method::POST,
        "/v2/models/shop/infer",
        infer_body([1.0; 4], Some(&long)),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        call(&app, Method::DELETE, "/v2/routes/shop", Value::Null)
            .await
            .0,
        StatusCode::OK
    );
    // Reading routes is a reader's business; changing them an operator's.
    let g = |m: Method| infera_http::auth::classify(&m, "/v2/routes/shop", None, "x").group;
    assert_eq!(
        (g(Method::GET), g(Method::PUT), g(Method::DELETE)),
        (Group::Read, Group::Operate, Group::Operate)
    );
}
