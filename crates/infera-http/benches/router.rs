//! Where a small request's CPU goes inside the process, without sockets or the kernel: the
//! same 4-value FP32 request through
//! - a bare axum router whose handler parses the JSON body and answers a fixed JSON (the
//!   floor of any axum JSON endpoint: routing, body collection, serde),
//! - infera's core alone (`InferenceServer::infer`: routing to the model, scheduler, the
//!   in-memory backend on its worker thread, the response), and
//! - infera's whole v2 router (`tower::ServiceExt::oneshot`), which adds the front-end's
//!   layers, JSON decoding and encoding, and error mapping, then behind the auth and observe
//!   middleware as `infera serve` runs it.
//!
//! The parts (the tower layers on the bare endpoint, the codec, the decoder's guard) are
//! measured on their own too.
//!
//! cargo bench -p infera-http --bench router

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, header};
use axum::routing::post;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use infera_core::Tensor;
use infera_core::request::InferRequest;
use infera_testkit::{Repo, memory_config};
use tower::ServiceExt;

const BODY: &str =
    r#"{"inputs":[{"name":"INPUT","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;

fn request(path: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(BODY))
        .expect("a valid request")
}

async fn drain(router: &Router, path: &str) -> Bytes {
    let r = router
        .clone()
        .oneshot(request(path))
        .await
        .expect("the router answers");
    assert!(r.status().is_success(), "{}", r.status());
    r.into_body().collect().await.expect("a body").to_bytes()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let repo = Repo::new();
    repo.model("m", &memory_config("m", 4, 8, &[]));
    let server = repo.server(vec![]);

    let bare = Router::new().route(
        "/v2/models/m/infer",
        post(|body: Bytes| async move {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            axum::Json(serde_json::json!({
                "model_name": "m",
                "outputs": [{"name": "OUTPUT", "datatype": "FP32", "shape": [1, 4],
                             "data": v["inputs"][0]["data"]}]
            }))
        }),
    );
    c.bench_function("baseline: bare axum JSON endpoint", |b| {
        b.iter(|| rt.block_on(drain(&bare, "/v2/models/m/infer")))
    });
    // The same endpoint behind the layers infera's router puts around every route.
    let layered = bare
        .clone()
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        .layer(tower_http::catch_panic::CatchPanicLayer::new());
    c.bench_function("bare axum JSON endpoint + infera's tower layers", |b| {
        b.iter(|| rt.block_on(drain(&layered, "/v2/models/m/infer")))
    });
    c.bench_function("infera core: check_input (the decoder's guard)", |b| {
        b.iter(|| {
            server
                .check_input("m", None, "INPUT", infera_core::DataType::F32, &[1, 4])
                .expect("valid")
        })
    });

    let input = Tensor::from_slice(vec![1, 4], &[5.1f32, 3.5, 1.4, 0.2]).expect("valid");
    c.bench_function("infera core: InferenceServer::infer", |b| {
        b.iter(|| {
            let req = InferRequest::single("m", None, "INPUT", input.clone(), "OUTPUT", 0);
            rt.block_on(server.infer(req)).expect("served")
        })
    });

    c.bench_function("infera codec: decode_request (JSON body)", |b| {
        let guard = |_: &str, _, _: &[usize]| Ok(());
        b.iter(|| {
            infera_http::decode_request(
                "m",
                None,
                None,
                Bytes::from_static(BODY.as_bytes()),
                || unreachable!("not a raw request"),
                &guard,
            )
            .expect("valid")
        })
    });
    let req = InferRequest::single("m", None, "INPUT", input.clone(), "OUTPUT", 0);
    let response = rt.block_on(server.infer(req)).expect("served");
    c.bench_function("infera codec: encode_response (JSON)", |b| {
        b.iter(|| infera_http::encode_response(&response, &[], false))
    });

    let router = infera_http::router(server.clone(), 1 << 20);
    c.bench_function("infera v2 router: POST /v2/models/m/infer", |b| {
        b.iter(|| rt.block_on(drain(&router, "/v2/models/m/infer")))
    });
    // As `infera serve` wraps it: the auth middleware (no keys configured) and the observe
    // middleware with API metrics (no access log, no subscriber installed here).
    let served = infera_http::observe::observe_with(
        infera_http::auth::protect(router, infera_auth::Auth::open(None), "m"),
        infera_http::observe::Observe {
            access_log: false,
            metrics: Some((infera_core::metrics::Metrics::new().api, server.clone())),
            default_model: "m".into(),
            traces: false,
        },
    );
    c.bench_function("infera v2 router + auth + observe (as served)", |b| {
        b.iter(|| rt.block_on(drain(&served, "/v2/models/m/infer")))
    });
}

criterion_group!(router, benches);
criterion_main!(router);
