//! The gRPC service behind API keys: methods by group, keys limited to models (calls and
//! stream messages), rate limits.

use infera_auth::Role;
use infera_auth::keys::{KeyEntry, KeyFile};
use infera_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use infera_proto::inference::model_infer_request::InferInputTensor;
use infera_proto::inference::*;
use infera_testkit::{Repo, memory_config};
use tonic::Code;
use tonic::transport::Channel;

fn entry(id: &str, role: Role, models: Option<&[&str]>, rate: Option<&str>) -> KeyEntry {
    KeyEntry {
        id: id.into(),
        sha256: String::new(),
        role,
        models: models.map(|m| m.iter().map(|s| s.to_string()).collect()),
        rate: rate.map(String::from),
        burst: rate.map(|_| 1),
        quota: None,
        concurrency: None,
        certificate: None,
        created: String::new(),
    }
}

fn request(model: &str, key: Option<&str>) -> tonic::Request<ModelInferRequest> {
    let mut r = tonic::Request::new(ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "INPUT".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            ..Default::default()
        }],
        raw_input_contents: vec![vec![0u8; 16].into()],
        ..Default::default()
    });
    if let Some(k) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    r
}

async fn start() -> (
    GrpcInferenceServiceClient<Channel>,
    Vec<String>,
    tempfile::TempDir,
    Repo,
) {
    let repo = Repo::new();
    repo.model("m", &memory_config("m", 4, 8, &[]))
        .model("other", &memory_config("other", 4, 8, &[]));
    let server = repo.server(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    let mut f = KeyFile::default();
    let keys = [
        entry("reader", Role::Reader, None, None),
        entry("shop", Role::Infer, Some(&["m"]), None),
        entry("ops", Role::Operator, None, None),
        entry("slow", Role::Infer, None, Some("1/m")),
    ]
    .into_iter()
    .map(|e| f.create(e).unwrap())
    .collect();
    f.save(&path).unwrap();
    let auth = infera_auth::Auth::with_keys(&path, None, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = infera_grpc::service(server, 1 << 20);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(infera_grpc::auth::AuthLayer::new(auth))
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let c = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (c, keys, dir, repo)
}

#[tokio::test]
async fn methods_answer_by_role_and_model() {
    let (mut c, keys, _dir, _repo) = start().await;
    let (reader, shop, ops, slow) = (&keys[0], &keys[1], &keys[2], &keys[3]);
    // Public: no key needed.
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    let code = |r: Result<tonic::Response<ModelInferResponse>, tonic::Status>| {
        r.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
    };
    assert_eq!(
        code(c.model_infer(request("m", None)).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(c.model_infer(request("m", Some("inf_nope"))).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(c.model_infer(request("m", Some(reader))).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(c.model_infer(request("m", Some(shop))).await),
        Code::Ok
    );
    assert_eq!(
        code(c.model_infer(request("other", Some(shop))).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(c.model_infer(request("other", Some(ops))).await),
        Code::Ok
    );
    // The rate limit: one, then RESOURCE_EXHAUSTED with retry-after.
    assert_eq!(
        code(c.model_infer(request("m", Some(slow))).await),
        Code::Ok
    );
    let e = c.model_infer(request("m", Some(slow))).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.metadata().get("retry-after").is_some());
    // Metadata by model; repository calls need the operator role.
    let mut meta = tonic::Request::new(ModelMetadataRequest {
        name: "other".into(),
        version: String::new(),
    });
    meta.metadata_mut()
        .insert("x-api-key", shop.parse().unwrap());
    assert_eq!(
        c.model_metadata(meta).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let load = |key: &str| {
        let mut r = tonic::Request::new(RepositoryModelLoadRequest {
            model_name: "other".into(),
            ..Default::default()
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    assert_eq!(
        c.repository_model_load(load(shop))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    c.repository_model_load(load(ops)).await.unwrap();
}

#[tokio::test]
async fn stream_messages_are_checked_one_by_one() {
    let (mut c, keys, _dir, _repo) = start().await;
    let shop = &keys[1];
    let msgs = vec![
        request("m", None).into_inner(),
        request("other", None).into_inner(),
    ];
    let mut r = tonic::Request::new(tokio_stream::iter(msgs));
    r.metadata_mut()
        .insert("authorization", format!("Bearer {shop}").parse().unwrap());
    let mut stream = c.model_stream_infer(r).await.unwrap().into_inner();
    let mut errors = Vec::new();
    for _ in 0..2 {
        let m = stream.message().await.unwrap().unwrap();
        errors.push(m.error_message);
    }
    errors.sort();
    assert_eq!(errors[0], "");
    assert!(
        errors[1].contains("may not use model 'other'"),
        "{errors:?}"
    );
}
