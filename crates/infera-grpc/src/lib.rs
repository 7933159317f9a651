//! KServe v2 / Triton gRPC front-end (`inference.GRPCInferenceService`). It only translates.

pub mod auth;
mod convert;
pub mod observe;

use std::pin::Pin;
use std::sync::Arc;

use infera_core::{ErrorKind, InferenceServer, ServeError};
use infera_proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use infera_proto::inference::*;
use tokio_stream::{Stream, StreamExt};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

pub use convert::{from_proto_request, to_proto_response};

/// Requests of one `ModelStreamInfer` stream in flight or waiting for the client to read
/// their responses; past it the stream is not read.
pub const STREAM_IN_FLIGHT: usize = 64;

pub struct GrpcFrontend {
    server: Arc<InferenceServer>,
    compress_responses: bool,
}

impl GrpcFrontend {
    /// A unary inference response, marked to go out uncompressed when compression is on and
    /// the message is small (sized only then: with compression off there is nothing to skip).
    fn infer_reply(&self, msg: ModelInferResponse) -> Response<ModelInferResponse> {
        let small = self.compress_responses
            && prost::Message::encoded_len(&msg) <= usize::from(infera_core::MIN_COMPRESSED_BYTES);
        let mut resp = Response::new(msg);
        if small {
            resp.disable_compression();
        }
        resp
    }
}

/// The tonic service: accepts gzip/deflate compressed requests, answers uncompressed.
pub fn service(
    server: Arc<InferenceServer>,
    max_message_bytes: usize,
) -> GrpcInferenceServiceServer<GrpcFrontend> {
    service_with(server, max_message_bytes, false)
}

/// [`service`], optionally compressing responses for clients that accept gzip or deflate.
/// Off by default (as Triton's `--grpc-infer-response-compression-level none`): every
/// gRPC client advertises gzip, and deflating small tensors costs more server CPU than
/// the bytes it saves on a local network. When on, inference responses up to
/// [`infera_core::MIN_COMPRESSED_BYTES`] still go out as they are, as over HTTP.
pub fn service_with(
    server: Arc<InferenceServer>,
    max_message_bytes: usize,
    compress_responses: bool,
) -> GrpcInferenceServiceServer<GrpcFrontend> {
    let svc = GrpcInferenceServiceServer::new(GrpcFrontend {
        server,
        compress_responses,
    })
    .accept_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Deflate)
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(usize::MAX);
    if compress_responses {
        svc.send_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Deflate)
    } else {
        svc
    }
}

pub fn status(e: ServeError) -> Status {
    let mut s = match e.kind {
        ErrorKind::NotFound => Status::not_found(e.message),
        ErrorKind::InvalidArgument | ErrorKind::UnsupportedMediaType => {
            Status::invalid_argument(e.message)
        }
        ErrorKind::Forbidden => Status::permission_denied(e.message),
        ErrorKind::Unavailable | ErrorKind::QueueFull => Status::unavailable(e.message),
        ErrorKind::TooLarge => Status::resource_exhausted(e.message),
        ErrorKind::Conflict => Status::failed_precondition(e.message),
        ErrorKind::Unsupported => Status::unimplemented(e.message),
        ErrorKind::Internal => Status::internal(e.message),
    };
    if e.kind == ErrorKind::QueueFull {
        s.metadata_mut().insert(
            "retry-after",
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    s
}

fn version(v: &str) -> Result<Option<i64>, Status> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| Status::invalid_argument(format!("version '{v}' is not a number")))
}

type StreamOut = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for GrpcFrontend {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse {
            live: self.server.live(),
        }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.server.ready(),
        }))
    }

    async fn model_ready(
        &self,
        r: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        auth::allowed(r.extensions(), &r.get_ref().name)?;
        let r = r.into_inner();
        let v = version(&r.version)?;
        Ok(Response::new(ModelReadyResponse {
            ready: self.server.model_ready(&r.name, v),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: self.server.name().into(),
            version: self.server.version().into(),
            extensions: infera_core::server::EXTENSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        auth::allowed(r.extensions(), &r.get_ref().name)?;
        let r = r.into_inner();
        let m = self
            .server
            .model_metadata(&r.name, version(&r.version)?)
            .map_err(status)?;
        let t =
            |t: &infera_core::request::TensorMetadata| model_metadata_response::TensorMetadata {
                name: t.name.clone(),
                datatype: t.datatype.clone(),
                shape: t.shape.clone(),
            };
        Ok(Response::new(ModelMetadataResponse {
            name: m.name.clone(),
            versions: m.versions.clone(),
            platform: m.platform.clone(),
            inputs: m.inputs.iter().map(t).collect(),
            outputs: m.outputs.iter().map(t).collect(),
        }))
    }

    async fn model_infer(
        &self,
        r: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        auth::allowed(r.extensions(), &r.get_ref().model_name)?;
        let _admission = auth::admit(r.extensions())?;
        let key = convert::routing_key_metadata(r.metadata());
        let mut req = from_proto_request(r.into_inner()).map_err(status)?;
        if req.routing_key.is_none() {
            req.routing_key = key;
        }
        let resp = self.server.infer(req).await.map_err(status)?;
        let label = infera_core::metrics::ModelLabel(resp.model_name.clone());
        let mut resp = self.infer_reply(to_proto_response(resp));
        resp.extensions_mut().insert(label);
        Ok(resp)
    }

    type ModelStreamInferStream = StreamOut;

    async fn model_stream_infer(
        &self,
        r: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Result<Response<StreamOut>, Status> {
        let ext = r.extensions().clone();
        let mut incoming = r.into_inner();
        let server = self.server.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ModelStreamInferResponse, Status>>(
            STREAM_IN_FLIGHT,
        );
        // Each request holds a permit from before it is read until its response is queued
        // for the client: a client that writes without reading stops being read once
        // STREAM_IN_FLIGHT requests are waiting (HTTP/2 flow control then holds it back).
        let permits = Arc::new(tokio::sync::Semaphore::new(STREAM_IN_FLIGHT));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let req = tokio::select! {
                    msg = incoming.next() => match msg {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            let _ = tx.send(Err(e)).await;
                            break;
                        }
                        None => break,
                    },
                    // The client went away: stop reading for it.
                    () = tx.closed() => break,
                };
                let server = server.clone();
                let tx = tx.clone();
                // Each message is checked and counted like a call of its own.
                let checked = auth::allowed(&ext, &req.model_name).and_then(|()| auth::admit(&ext));
                // Requests of one stream run concurrently, so they can batch with each other.
                tokio::spawn(async move {
                    let id = req.id.clone();
                    let out = match (checked, from_proto_request(req)) {
                        (Err(s), _) => Err(ServeError::new(ErrorKind::Forbidden, s.message())),
                        (Ok(_admission), Ok(req)) => server.infer(req).await,
                        (Ok(_), Err(e)) => Err(e),
                    };
                    let msg = match out {
                        Ok(resp) => ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(to_proto_response(resp)),
                        },
                        Err(e) => ModelStreamInferResponse {
                            error_message: e.message,
                            infer_response: Some(ModelInferResponse {
                                id,
                                ..Default::default()
                            }),
                        },
                    };
                    let _ = tx.send(Ok(msg)).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn model_config(
        &self,
        r: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        auth::allowed(r.extensions(), &r.get_ref().name)?;
        let r = r.into_inner();
        let (m, v) = self
            .server
            .serving_model(&r.name, version(&r.version)?)
            .map_err(status)?;
        m.version(v).map_err(status)?;
        Ok(Response::new(ModelConfigResponse {
            config: Some(m.config.clone()),
        }))
    }

    async fn model_statistics(
        &self,
        r: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        if !r.get_ref().name.is_empty() {
            auth::allowed(r.extensions(), &r.get_ref().name)?;
        }
        let ext = r.extensions().clone();
        let r = r.into_inner();
        let mut list = self
            .server
            .statistics(&r.name, version(&r.version)?)
            .map_err(status)?;
        // A key limited to some models sees only theirs.
        list.retain(|v| auth::allowed(&ext, &v.name).is_ok());
        let d = |d: &infera_core::stats::Duration64| {
            Some(StatisticDuration {
                count: d.count,
                ns: d.ns,
            })
        };
        let model_stats = list
            .iter()
            .map(|v| {
                let s = &v.stats;
                let i = &s.inference;
                ModelStatistics {
                    name: v.name.clone(),
                    version: v.version.clone(),
                    last_inference: s.last_inference,
                    inference_count: s.inference_count,
                    execution_count: s.execution_count,
                    inference_stats: Some(InferStatistics {
                        success: d(&i.success),
                        fail: d(&i.fail),
                        queue: d(&i.queue),
                        compute_input: d(&i.compute_input),
                        compute_infer: d(&i.compute_infer),
                        compute_output: d(&i.compute_output),
                        cache_hit: d(&i.cache_hit),
                        cache_miss: d(&i.cache_miss),
                    }),
                    batch_stats: s
                        .batches
                        .iter()
                        .map(|(size, b)| InferBatchStatistics {
                            batch_size: *size as u64,
                            compute_input: d(&b.compute_input),
                            compute_infer: d(&b.compute_infer),
                            compute_output: d(&b.compute_output),
                        })
                        .collect(),
                    memory_usage: vec![],
                }
            })
            .collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        r: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let r = r.into_inner();
        let models = self
            .server
            .index(r.ready)
            .into_iter()
            .map(|e| repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state,
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        r: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        auth::allowed(r.extensions(), &r.get_ref().model_name)?;
        let r = r.into_inner();
        if let Some(k) = r.parameters.keys().find(|k| k.starts_with("file:")) {
            return Err(Status::unimplemented(format!(
                "'{k}': loading model files through the API is not supported; put them in the repository"
            )));
        }
        let config = match r
            .parameters
            .get("config")
            .and_then(|p| p.parameter_choice.as_ref())
        {
            None => None,
            Some(model_repository_parameter::ParameterChoice::StringParam(s)) => Some(s.clone()),
            Some(_) => {
                return Err(Status::invalid_argument(
                    "parameter 'config' must be a string of JSON",
                ));
            }
        };
        self.server
            .load(&r.model_name, config)
            .await
            .map_err(status)?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        auth::allowed(r.extensions(), &r.get_ref().model_name)?;
        let r = r.into_inner();
        let dependents = match r
            .parameters
            .get("unload_dependents")
            .and_then(|p| p.parameter_choice.as_ref())
        {
            None => false,
            Some(model_repository_parameter::ParameterChoice::BoolParam(b)) => *b,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "parameter 'unload_dependents' must be a bool",
                ));
            }
        };
        self.server
            .unload(&r.model_name, dependents)
            .await
            .map_err(status)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<SystemSharedMemoryStatusResponse>, Status> {
        Err(Status::unimplemented("shared memory is not supported"))
    }
    async fn system_shared_memory_register(
        &self,
        _: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<SystemSharedMemoryRegisterResponse>, Status> {
        Err(Status::unimplemented("shared memory is not supported"))
    }
    async fn system_shared_memory_unregister(
        &self,
        _: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<SystemSharedMemoryUnregisterResponse>, Status> {
        Err(Status::unimplemented("shared memory is not supported"))
    }
    async fn cuda_shared_memory_status(
        &self,
        _: Request<CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<CudaSharedMemoryStatusResponse>, Status> {
        Err(Status::unimplemented("CUDA shared memory is not supported"))
    }
    async fn cuda_shared_memory_register(
        &self,
        _: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<CudaSharedMemoryRegisterResponse>, Status> {
        Err(Status::unimplemented("CUDA shared memory is not supported"))
    }
    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<CudaSharedMemoryUnregisterResponse>, Status> {
        Err(Status::unimplemented("CUDA shared memory is not supported"))
    }
    async fn trace_setting(
        &self,
        _: Request<TraceSettingRequest>,
    ) -> Result<Response<TraceSettingResponse>, Status> {
        Err(Status::unimplemented("tracing settings are not supported"))
    }
    async fn log_settings(
        &self,
        _: Request<LogSettingsRequest>,
    ) -> Result<Response<LogSettingsResponse>, Status> {
        Err(Status::unimplemented(
            "log settings are not supported; use RUST_LOG",
        ))
    }
}
