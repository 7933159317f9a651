//! The v2 HTTP router driven in-process (`tower::ServiceExt::oneshot`) over the in-memory
//! backend: error mapping, limits, and loads that must never take a serving model down.

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use infera_core::InferenceServer;
use infera_testkit::{Repo, chain_config, memory_config};
use serde_json::{Value, json};
use tower::ServiceExt;

const MAX_BODY: usize = 1 << 20;

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

async fn call(server: &Arc<InferenceServer>, req: Request<Body>) -> Answer {
    let r = infera_http::router(server.clone(), MAX_BODY)
        .oneshot(req)
        .await
        .expect("the router answers");
    let status = r.status();
    let headers = r.headers().clone();
    let body = r
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path).body(body.into()).unwrap()
}

fn infer_body(values: &[f32]) -> Value {
    json!({"inputs": [{"name": "INPUT", "shape": [1, values.len()], "datatype": "FP32", "data": values}]})
}

async fn infer(server: &Arc<InferenceServer>, model: &str, values: &[f32]) -> Answer {
    call(
        server,
        post(
            &format!("/v2/models/{model}/infer"),
            infer_body(values).to_string(),
        ),
    )
    .await
}

fn repo_with_pipeline() -> Repo {
    let repo = Repo::new();
    repo.model("m", &memory_config("m", 4, 8, &[]))
        .model("double", &memory_config("double", 4, 8, &[("scale", "2")]))
        .model("pipe", &chain_config("pipe", 4, 8, &["m", "double"]));
    repo
}

#[tokio::test]
async fn errors_map_to_status_codes_and_say_what_is_wrong() {
    let repo = repo_with_pipeline();
    let s = repo.server(vec![]);
    let ok = infer(&s, "pipe", &[1.0, 2.0, 3.0, 4.0]).await;
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&ok.body)
    );
    assert_eq!(ok.json()["outputs"][0]["data"], json!([2.0, 4.0, 6.0, 8.0]));

    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post("/v2/models/nope/infer", infer_body(&[1.0; 4]).to_string()),
            StatusCode::NOT_FOUND,
            "unknown model",
        ),
        (
            post("/v2/models/m/versions/x/infer", "{}"),
            StatusCode::BAD_REQUEST,
            "not a number",
        ),
        (
            post("/v2/models/m/infer", "{not json"),
            StatusCode::BAD_REQUEST,
            "failed to parse",
        ),
        (
            post("/v2/models/m/infer", infer_body(&[1.0; 3]).to_string()),
            StatusCode::BAD_REQUEST,
            "unexpected shape",
        ),
        (
            post(
                "/v2/models/m/infer",
                r#"{"inputs":[{"name":"INPUT","shape":[1,4],"datatype":"FP32","data":[1,2,3]}]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "expected 4 values",
        ),
        (
            post(
                "/v2/models/m/infer",
                r#"{"inputs":[{"name":"INPUT","shape":[1,4],"datatype":"FP32","data":[1,2,3,4,5]}]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "more than the 4 values",
        ),
        (
            post(
                "/v2/models/m/infer",
                r#"{"inputs":[{"name":"INPUT","shape":[1,4],"datatype":"INT32","data":[1,2,3,4]}]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "data-type is 'INT32'",
        ),
        (
            post(
                "/v2/models/m/infer",
                r#"{"inputs":[{"name":"INPUT","shape":[1,4],"datatype":"FP32","data":[1,2,"x",4]}]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "not a valid FP32",
        ),
        (
            post("/v2/nothing", ""),
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
    ];
    for (req, status, needle) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let a = call(&s, req).await;
        assert_eq!(
            a.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(
            a.headers[header::CONTENT_TYPE],
            "application/json",
            "{what}"
        );
        assert!(a.error().contains(needle), "{what}: {}", a.error());
    }
}

#[tokio::test]
async fn a_wrong_shape_is_refused_before_its_data_is_parsed() {
    let repo = repo_with_pipeline();
    let s = repo.server(vec![]);
    // 900 KB of values for a model that takes 4 per row: refused on the shape alone.
    let values = vec![0.0f32; 150_000];
    let body = json!({"inputs": [{"name": "INPUT", "shape": [1, values.len()], "datatype": "FP32", "data": values}]});
    let a = call(&s, post("/v2/models/m/infer", body.to_string())).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("unexpected shape"), "{}", a.error());
    // Too many inputs or dimensions in one request stop the parse early.
    let many: Vec<Value> = (0..2000)
        .map(|i| json!({"name": format!("x{i}"), "shape": [1], "datatype": "FP32", "data": [0]}))
        .collect();
    let a = call(
        &s,
        post("/v2/models/m/infer", json!({"inputs": many}).to_string()),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("more than 1024"), "{}", a.error());
    let deep = json!({"inputs": [{"name": "INPUT", "shape": vec![1; 100], "datatype": "FP32", "data": [0]}]});
    let a = call(&s, post("/v2/models/m/infer", deep.to_string())).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn errors_are_never_compressed_and_successes_are_when_asked() {
    let repo = repo_with_pipeline();
    let s = repo.server(vec![]);
    let gz = |req: Request<Body>| {
        let (mut parts, body) = req.into_parts();
        parts
            .headers
            .insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        Request::from_parts(parts, body)
    };
    let err = call(
        &s,
        gz(post(
            "/v2/models/nope/infer",
            infer_body(&[1.0; 4]).to_string(),
        )),
    )
    .await;
    assert_eq!(err.status, StatusCode::NOT_FOUND);
    assert!(err.headers.get(header::CONTENT_ENCODING).is_none());
    assert!(err.error().contains("unknown model"));
    let bad = call(&s, gz(post("/v2/models/m/infer", "{"))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.headers.get(header::CONTENT_ENCODING).is_none());
    // A small answer fits one TCP segment anyway: not worth a compressor's set-up.
    let small = call(
        &s,
        gz(post(
            "/v2/models/m/infer",
            infer_body(&[1.0; 4]).to_string(),
        )),
    )
    .await;
    assert_eq!(small.status, StatusCode::OK);
    assert!(small.headers.get(header::CONTENT_ENCODING).is_none());
    let repo = Repo::new();
    repo.model("wide", &memory_config("wide", 512, 8, &[]));
    let s = repo.server(vec![]);
    let big = |values: &[f32]| json!({"inputs": [{"name": "INPUT", "shape": [1, values.len()], "datatype": "FP32", "data": values}]});
    let ok = call(
        &s,
        gz(post("/v2/models/wide/infer", big(&[1.5; 512]).to_string())),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.headers[header::CONTENT_ENCODING], "gzip");
}

#[tokio::test]
async fn a_compressed_body_is_limited_while_it_is_decompressed() {
    let repo = repo_with_pipeline();
    let s = repo.server(vec![]);
    // 64 MiB of zeros in ~64 KB of gzip.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b' '; 1 << 20];
    for _ in 0..64 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < MAX_BODY);
    let req = Request::post("/v2/models/m/infer")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(bomb))
        .unwrap();
    let a = call(&s, req).await;
    assert_eq!(
        a.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert!(a.error().contains("--max-body-size"));
}

#[tokio::test]
async fn state_changes_take_json_from_the_servers_own_origin_only() {
    let repo = repo_with_pipeline();
    let s = repo.server(vec![]);
    let req = |ct: Option<&str>, origin: Option<&str>| {
        let mut b =
            Request::post("/v2/repository/models/m/load").header(header::HOST, "127.0.0.1:8000");
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        b.body(Body::from("{}")).unwrap()
    };
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let a = call(&s, req(Some(ct), None)).await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        assert!(a.error().contains("application/json"), "{}", a.error());
    }
    let a = call(
        &s,
        req(Some("application/json"), Some("http://evil.example")),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    for (ct, origin) in [
        (None, None),
        (Some("application/json"), None),
        (
            Some("application/json; charset=utf-8"),
            Some("http://127.0.0.1:8000"),
        ),
        (Some("application/octet-stream"), None),
    ] {
        let a = call(&s, req(ct, origin)).await;
        assert_eq!(a.status, StatusCode::OK, "{ct:?} {origin:?}: {}", a.error());
    }
    let unload = Request::post("/v2/repository/models/m/unload")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(
        call(&s, unload).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert!(s.model_ready("m", None));
}

async fn load(server: &Arc<InferenceServer>, model: &str, config: Option<&str>) -> Answer {
    let body = match config {
        Some(c) => json!({"parameters": {"config": c}}),
        None => json!({}),
    };
    call(
        server,
        Request::post(format!("/v2/repository/models/{model}/load"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
    )
    .await
}

async fn index(server: &Arc<InferenceServer>) -> Vec<Value> {
    let a = call(server, post("/v2/repository/index", "")).await;
    a.json().as_array().cloned().unwrap()
}

fn config_json(extra: Value) -> String {
    let mut base = json!({
        "name": "m", "backend": "memory", "max_batch_size": 8,
        "input": [{"name": "INPUT", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": [4]}],
        "parameters": {"dims": {"string_value": "4"}},
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base.to_string()
}

#[tokio::test]
async fn a_failed_reload_leaves_the_model_and_its_ensembles_serving() {
    let repo = repo_with_pipeline();
    std::fs::write(repo.outside().join("secret.txt"), "root:x:0:0\n").unwrap();
    let s = repo.server(vec![]);
    let secret = repo.outside().join("secret.txt").display().to_string();
    let missing = repo.outside().join("missing.txt").display().to_string();
    let broken: Vec<(String, &str)> = vec![
        ("{\"name\": ".into(), "config"),
        (config_json(json!({"name": "other"})), "does not match"),
        (
            config_json(json!({"max_batch_size": 100000000})),
            "max_batch_size",
        ),
        (
            config_json(
                json!({"dynamic_batching": {"priority_levels": "4294967296", "default_priority_level": "1"}}),
            ),
            "priority_levels",
        ),
        (
            config_json(json!({"instance_group": [{"count": 1000000, "kind": "KIND_CPU"}]})),
            "instance_group",
        ),
        (
            config_json(
                json!({"dynamic_batching": {"max_queue_delay_microseconds": "18446744073709551615"}}),
            ),
            "max_queue_delay",
        ),
        (
            config_json(
                json!({"parameters": {"dims": {"string_value": "4"}, "fail_load": {"string_value": "true"}}}),
            ),
            "fail_load",
        ),
        (
            config_json(
                json!({"output": [{"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": [4], "label_filename": "../secret.txt"}]}),
            ),
            "inside the model's folder",
        ),
        (
            config_json(
                json!({"output": [{"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": [4], "label_filename": secret}]}),
            ),
            "inside the model's folder",
        ),
        (
            config_json(
                json!({"output": [{"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": [4], "label_filename": missing}]}),
            ),
            "inside the model's folder",
        ),
        (
            config_json(
                json!({"output": [{"name": "RENAMED", "data_type": "TYPE_FP32", "dims": [4]}], "parameters": {"dims": {"string_value": "4"}, "output_name": {"string_value": "RENAMED"}}}),
            ),
            "break a loaded ensemble",
        ),
        (
            config_json(json!({"model_operations": {"op_library_filename": ["/tmp/x.so"]}})),
            "op_library",
        ),
    ];
    let mut outside_answers = Vec::new();
    for (config, needle) in &broken {
        let a = load(&s, "m", Some(config)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{config}: {}", a.error());
        assert!(a.error().contains(needle), "{config}: {}", a.error());
        assert!(
            !a.error().contains("root:x"),
            "the outside file's content leaked"
        );
        if *needle == "inside the model's folder" {
            // The same words whether or not the outside file exists.
            outside_answers.push(a.error().replace(&secret, "X").replace(&missing, "X"));
        }
        // Still serving, directly and through the ensemble.
        assert_eq!(infer(&s, "m", &[1.0; 4]).await.status, StatusCode::OK);
        let p = infer(&s, "pipe", &[1.0; 4]).await;
        assert_eq!(p.status, StatusCode::OK, "{}", p.error());
        let idx = index(&s).await;
        let m = idx.iter().find(|e| e["name"] == "m").unwrap();
        assert_eq!(m["state"], "READY");
        assert!(
            m["reason"]
                .as_str()
                .unwrap()
                .contains("previous config keeps serving"),
            "{m}"
        );
    }
    assert_eq!(outside_answers[1], outside_answers[2]);
    // A good reload replaces it and clears the reason.
    let a = load(
        &s,
        "m",
        Some(&config_json(
            json!({"parameters": {"dims": {"string_value": "4"}, "scale": {"string_value": "3"}}}),
        )),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.error());
    assert_eq!(
        infer(&s, "m", &[1.0; 4]).await.json()["outputs"][0]["data"],
        json!([3.0, 3.0, 3.0, 3.0])
    );
    let idx = index(&s).await;
    assert_eq!(idx.iter().find(|e| e["name"] == "m").unwrap()["reason"], "");
}

#[tokio::test]
async fn ensembles_that_call_each_other_in_a_cycle_are_refused() {
    let repo = Repo::new();
    repo.model("m", &memory_config("m", 4, 8, &[]))
        .model("a", &chain_config("a", 4, 8, &["m", "b"]))
        .model("b", &chain_config("b", 4, 8, &["m"]));
    let s = repo.server(vec![]);
    assert!(s.model_ready("a", None) && s.model_ready("b", None));
    // b now calls a, which calls b: refused, and b keeps its old steps.
    repo.model("b", &chain_config("b", 4, 8, &["a"]));
    let a = load(&s, "b", None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("b → a → b"), "{}", a.error());
    assert_eq!(infer(&s, "a", &[1.0; 4]).await.status, StatusCode::OK);
    // Self-reference is caught by the config check itself.
    repo.model("c", &chain_config("c", 4, 8, &["c"]));
    assert_eq!(load(&s, "c", None).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unloading_a_model_an_ensemble_uses_needs_unload_dependents() {
    let repo = repo_with_pipeline();
    let s = repo.server(vec![]);
    let unload = |body: Value| {
        Request::post("/v2/repository/models/double/unload")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let a = call(&s, unload(json!({}))).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(
        a.error().contains("[\"pipe\"]") && a.error().contains("unload_dependents"),
        "{}",
        a.error()
    );
    assert!(s.model_ready("double", None) && s.model_ready("pipe", None));
    let a = call(
        &s,
        unload(json!({"parameters": {"unload_dependents": true}})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.error());
    assert!(!s.model_ready("double", None) && !s.model_ready("pipe", None));
    assert!(s.model_ready("m", None));
    assert_eq!(
        infer(&s, "pipe", &[1.0; 4]).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn repository_bodies_and_names_are_bounded() {
    let repo = repo_with_pipeline();
    let s = repo.server(vec![]);
    let big = format!("[{}0]", "0,".repeat(2 << 20));
    let a = call(&s, post("/v2/repository/index", big)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    for name in ["..", ".hidden", "a%2Fb", "%2e%2e"] {
        let a = load(&s, name, None).await;
        assert!(a.status.is_client_error(), "{name}: {}", a.status);
    }
    let a = call(
        &s,
        Request::post("/v2/repository/models/m/load")
            .body(Body::from(
                json!({"parameters": {"file:1/model.onnx": "AAAA"}}).to_string(),
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_IMPLEMENTED);
}

#[tokio::test]
async fn one_failing_request_does_not_fail_the_others_in_its_batch() {
    let repo = Repo::new();
    repo.model(
        "m",
        &memory_config(
            "m",
            1,
            8,
            &[
                ("fail_value", "13"),
                ("panic_value", "66"),
                ("run_ms", "20"),
            ],
        ),
    );
    let s = repo.server(vec![]);
    let mut tasks = Vec::new();
    for v in 0..24 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            (v, infer(&s, "m", &[v as f32]).await)
        }));
    }
    for t in tasks {
        let (v, a) = t.await.unwrap();
        match v {
            13 | 66 => assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{v}"),
            _ => {
                assert_eq!(a.status, StatusCode::OK, "{v}: {}", a.error());
                assert_eq!(a.json()["outputs"][0]["data"], json!([v as f32]));
            }
        }
    }
    // The panic did not take the worker down.
    assert_eq!(infer(&s, "m", &[1.0]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn shutting_down_refuses_new_inference_with_503() {
    let repo = repo_with_pipeline();
    let s = repo.server(vec![]);
    s.begin_shutdown();
    let a = infer(&s, "m", &[1.0; 4]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.error().contains("shutting down"));
    assert_eq!(
        call(
            &s,
            Request::get("/v2/health/ready")
                .body(Body::empty())
                .unwrap()
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
}
