//! The calibration for infera's HTTP CPU per request (bench/lean_bench.sh): the leanest axum
//! server that answers a KServe v2 infer call, with the same runtime and stack as infera but
//! no parsing, no model and no middleware. What it spends per request on a machine is what
//! the kernel, hyper and tokio cost there; infera's figure is compared against it.
//!
//!     cargo run --release -p infera-http --example lean_http -- 8000

use axum::Router;
use axum::routing::post;

/// What infera answers for one iris row (the bytes differ, the size is close).
const ANSWER: &str = r#"{"model_name":"iris","model_version":"1","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[0]},{"name":"probabilities","datatype":"FP32","shape":[1,3],"data":[1.0,0.0,0.0]}]}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8000);
    let app = Router::new().route(
        "/v2/models/{model}/infer",
        post(|_body: axum::body::Bytes| async { ([("content-type", "application/json")], ANSWER) }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await
}
