//! The gRPC service over a loopback connection and the in-memory backend: status mapping,
//! loads that keep models serving, decompression limits and stream back-pressure.

use std::sync::Arc;
use std::time::Duration;

use infera_core::InferenceServer;
use infera_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use infera_proto::inference::model_infer_request::InferInputTensor;
use infera_proto::inference::*;
use infera_testkit::{Repo, chain_config, memory_config};
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

const MAX_MESSAGE: usize = 4 << 20;

async fn start(server: Arc<InferenceServer>) -> GrpcInferenceServiceClient<Channel> {
    start_with(server, false).await
}

async fn start_with(
    server: Arc<InferenceServer>,
    compress_responses: bool,
) -> GrpcInferenceServiceClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = infera_grpc::service_with(server, MAX_MESSAGE, compress_responses);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let client = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client.max_decoding_message_size(64 << 20)
}

fn request(model: &str, values: &[f32]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "INPUT".into(),
            datatype: "FP32".into(),
            shape: vec![1, values.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        ],
        ..Default::default()
    }
}

fn repo() -> Repo {
    let repo = Repo::new();
    repo.model("m", &memory_config("m", 4, 8, &[]))
        .model("big", &memory_config("big", 65536, 1, &[]))
        .model("pipe", &chain_config("pipe", 4, 8, &["m"]));
    repo
}

fn load_request(model: &str, config: &str) -> RepositoryModelLoadRequest {
    RepositoryModelLoadRequest {
        model_name: model.into(),
        parameters: [(
            "config".to_string(),
            ModelRepositoryParameter {
                parameter_choice: Some(model_repository_parameter::ParameterChoice::StringParam(
                    config.into(),
                )),
            },
        )]
        .into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn statuses_map_and_failed_loads_keep_serving() {
    let repo = repo();
    let s = repo.server(vec![]);
    let mut c = start(s.clone()).await;
    c.model_infer(request("pipe", &[1.0; 4])).await.unwrap();
    let code =
        |r: Result<tonic::Response<ModelInferResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(c.model_infer(request("nope", &[1.0; 4])).await),
        Code::NotFound
    );
    assert_eq!(
        code(c.model_infer(request("m", &[1.0; 3])).await),
        Code::InvalidArgument
    );

    let bad = r#"{"name":"m","backend":"memory","max_batch_size":8,"dynamic_batching":{"priority_levels":"99999999999","default_priority_level":"1"}}"#;
    let e = c
        .repository_model_load(load_request("m", bad))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("priority_levels"), "{}", e.message());
    c.model_infer(request("m", &[1.0; 4])).await.unwrap();
    c.model_infer(request("pipe", &[1.0; 4])).await.unwrap();

    let unload = |dependents: Option<bool>| RepositoryModelUnloadRequest {
        model_name: "m".into(),
        parameters: dependents
            .map(|d| {
                (
                    "unload_dependents".to_string(),
                    ModelRepositoryParameter {
                        parameter_choice: Some(
                            model_repository_parameter::ParameterChoice::BoolParam(d),
                        ),
                    },
                )
            })
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let e = c.repository_model_unload(unload(None)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("pipe"));
    c.repository_model_unload(unload(Some(true))).await.unwrap();
    assert_eq!(
        code(c.model_infer(request("pipe", &[1.0; 4])).await),
        Code::NotFound
    );
}

#[tokio::test]
async fn responses_are_compressed_only_when_asked() {
    let repo = repo();
    for compress in [false, true] {
        let c = start_with(repo.server(vec![]), compress).await;
        // Every gRPC client offers gzip; whether the server uses it is the server's choice.
        let mut c = c.accept_compressed(CompressionEncoding::Gzip);
        let r = c.model_infer(request("m", &[1.0; 4])).await.unwrap();
        let encoding = r
            .metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap());
        assert_eq!(encoding, compress.then_some("gzip"), "compress={compress}");
        assert_eq!(r.into_inner().raw_output_contents.len(), 1);
    }
}

#[tokio::test]
async fn a_compressed_message_is_limited_while_it_is_decompressed() {
    let repo = repo();
    let s = repo.server(vec![]);
    let c = start(s).await;
    let mut c = c.send_compressed(CompressionEncoding::Gzip);
    // 16 MiB of zeros, a few KB compressed, against a 4 MiB limit.
    let mut r = request("big", &[0.0; 4]);
    r.raw_input_contents = vec![vec![0u8; 16 << 20].into()];
    let e = c.model_infer(r).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
}

#[tokio::test]
async fn messages_that_would_decode_to_far_more_than_their_size_are_refused() {
    let repo = repo();
    let s = repo.server(vec![]);
    let mut c = start(s).await;
    // ~2 MB on the wire, ~1 GB as decoded structs: refused before prost decodes it.
    let mut r = request("m", &[1.0; 4]);
    r.inputs
        .extend(std::iter::repeat_n(InferInputTensor::default(), 1_000_000));
    let e = c.model_infer(r).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().contains("too many small elements"),
        "{}",
        e.message()
    );
    c.model_infer(request("m", &[1.0; 4])).await.unwrap();
}

#[tokio::test]
async fn a_stream_whose_responses_are_not_read_stops_being_read() {
    let repo = repo();
    let s = repo.server(vec![]);
    let mut c = start(s.clone()).await;
    const SENT: usize = 600;
    // 256 KiB per request and per response: the transport's buffers hold only a few.
    let requests = tokio_stream::iter((0..SENT).map(|i| request("big", &vec![i as f32; 65536])));
    let mut responses = c.model_stream_infer(requests).await.unwrap().into_inner();
    let done = || s.statistics("big", None).unwrap()[0].stats.inference_count as usize;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let while_not_reading = done();
    assert!(
        while_not_reading < 300,
        "{while_not_reading} of {SENT} requests were run while nobody read the responses"
    );
    // Reading resumes the stream and every request is answered.
    let mut got = 0;
    while let Some(r) = responses.message().await.unwrap() {
        assert!(r.error_message.is_empty(), "{}", r.error_message);
        got += 1;
        if got == SENT {
            break;
        }
    }
    assert_eq!(got, SENT);
}

/// The compressed-flag byte of the first message frame of a unary `ModelInfer` call, framed by
/// hand and sent through the service itself (no transport), with `grpc-accept-encoding: gzip`.
async fn response_frame_flag(server: Arc<InferenceServer>, req: ModelInferRequest) -> u8 {
    use http_body_util::BodyExt;
    use prost::Message;
    use tower::ServiceExt;
    let msg = req.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let http_req = http::Request::post("/inference.GRPCInferenceService/ModelInfer")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-accept-encoding", "gzip")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(frame),
        )))
        .unwrap();
    let svc = infera_grpc::service_with(server, MAX_MESSAGE, true);
    let resp = svc.oneshot(http_req).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.len() > 5, "no message in the response: {body:?}");
    body[0]
}

#[tokio::test]
async fn with_compression_on_only_responses_over_a_kilobyte_are_compressed() {
    let repo = repo();
    let s = repo.server(vec![]);
    // 16 bytes of output: sent as it is (flag 0).
    assert_eq!(
        response_frame_flag(s.clone(), request("m", &[1.0; 4])).await,
        0
    );
    // 256 KiB of output: compressed (flag 1).
    assert_eq!(
        response_frame_flag(s, request("big", &vec![0.5; 65536])).await,
        1
    );
}
