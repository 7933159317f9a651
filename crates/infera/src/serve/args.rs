//! `infera serve`'s command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Triton-style model repository: <model>/config.pbtxt and <model>/<version>/model.onnx.
    /// Without it, the example repository built into infera is served.
    #[arg(long, env = "INFERA_MODEL_REPOSITORY", value_name = "DIR")]
    pub(super) model_repository: Option<PathBuf>,

    /// Address to listen on. Use 0.0.0.0 to accept connections from other machines.
    #[arg(long, env = "INFERA_HOST", default_value = "127.0.0.1")]
    pub(super) host: String,

    /// KServe v2 HTTP/REST port (Triton's default). 0 turns HTTP off.
    #[arg(long, env = "INFERA_HTTP_PORT", default_value_t = 8000)]
    pub(super) http_port: u16,

    /// KServe v2 gRPC port (Triton's default). 0 turns gRPC off.
    #[arg(long, env = "INFERA_GRPC_PORT", default_value_t = 8001)]
    pub(super) grpc_port: u16,

    /// Prometheus metrics port, serving /metrics (Triton's default). 0 turns metrics off.
    #[arg(long, env = "INFERA_METRICS_PORT", default_value_t = 8002)]
    pub(super) metrics_port: u16,

    /// TorchServe's management API (register, scale workers, describe, unregister,
    /// set-default) on this port; `--management-port` alone uses TorchServe's 8081. Off
    /// unless given. Registrations copy the model into the repository.
    #[arg(long, env = "INFERA_MANAGEMENT_PORT", num_args = 0..=1, default_missing_value = "8081", value_name = "PORT")]
    pub(super) management_port: Option<u16>,

    /// Folder that `POST /models?url=NAME` registers local models from (TorchServe's model
    /// store): a model folder, a .tar.gz of one, or an .onnx file. Paths may not leave it.
    #[arg(long, env = "INFERA_MODEL_STORE", value_name = "DIR")]
    pub(super) model_store: Option<PathBuf>,

    /// Regular expression a whole URL must match for `POST /models?url=https://...` to
    /// download it (repeatable). Default: none, so no URL is downloaded.
    #[arg(long = "allowed-urls", value_name = "REGEX")]
    pub(super) allowed_urls: Vec<String>,

    /// Bytes a registered model may have, downloaded or unpacked.
    #[arg(long, default_value_t = 2 << 30, value_name = "BYTES")]
    pub(super) max_model_bytes: u64,

    /// Path to libonnxruntime (file or directory). Default: ORT_DYLIB_PATH, else the
    /// `onnxruntime` Python wheel if installed. Without it, infera falls back to tract in builds with the `tract` feature.
    #[arg(long, env = "INFERA_ONNXRUNTIME_LIB", value_name = "PATH")]
    pub(super) onnxruntime_lib: Option<PathBuf>,

    /// Largest request body accepted, in bytes, after decompression (HTTP and gRPC).
    #[arg(long, env = "INFERA_MAX_BODY_SIZE", default_value_t = 64 << 20)]
    pub(super) max_body_size: usize,

    /// Requests that may wait per model version; more are refused with HTTP 429 / gRPC UNAVAILABLE.
    #[arg(long, env = "INFERA_MAX_QUEUE_SIZE", default_value_t = 1024)]
    pub(super) max_queue_size: usize,

    /// max_batch_size given to models without config.pbtxt whose inputs have a free batch dimension
    /// (Triton's default-max-batch-size). 0 disables batching for them.
    #[arg(long, env = "INFERA_DEFAULT_MAX_BATCH_SIZE", default_value_t = 4)]
    pub(super) default_max_batch_size: i32,

    /// Model used by /predict and /predict/batch when the request names none (`?model=NAME`).
    /// It must take one image (BYTES) input, like the fashion_mnist_image ensemble.
    #[arg(
        long,
        env = "INFERA_DEFAULT_MODEL",
        default_value = "fashion_mnist_image"
    )]
    pub(super) default_model: String,

    /// Worker threads for the network front-ends (model execution has its own threads).
    #[arg(long, env = "INFERA_IO_THREADS", default_value_t = 2)]
    pub(super) io_threads: usize,

    /// Turns batch jobs on (/api/inference/batch): their database (jobs.db), outputs and
    /// checkpoints live here, and jobs interrupted by a crash or stop resume from it.
    /// One server per directory.
    #[arg(long, env = "INFERA_DATA_DIR", value_name = "DIR")]
    pub(super) data_dir: Option<PathBuf>,

    /// A folder whose files batch jobs may read (repeat for more). Paths are checked after
    /// resolving symlinks; nothing outside these folders is read.
    #[arg(
        long = "batch-input-root",
        env = "INFERA_BATCH_INPUT_ROOTS",
        value_name = "DIR",
        value_delimiter = ','
    )]
    pub(super) batch_input_roots: Vec<PathBuf>,

    /// A URL prefix batch jobs may download from, e.g. https://images.example.com/catalog/
    /// (repeat for more). Redirects must stay on the list too.
    #[arg(
        long = "batch-allow-url",
        env = "INFERA_BATCH_ALLOW_URLS",
        value_name = "PREFIX",
        value_delimiter = ','
    )]
    pub(super) batch_allow_urls: Vec<String>,

    /// Batch jobs running at once; others wait, high priority first.
    #[arg(long, env = "INFERA_MAX_RUNNING_JOBS", default_value_t = 1)]
    pub(super) max_running_jobs: usize,

    /// Images per checkpoint of a batch job (a crash repeats at most this many per worker).
    #[arg(long, env = "INFERA_JOB_BATCH_SIZE", default_value_t = 32)]
    pub(super) job_batch_size: usize,

    /// Chunks of a batch job in flight at once.
    #[arg(long, env = "INFERA_JOB_WORKERS", default_value_t = 2)]
    pub(super) job_workers: usize,

    /// Inputs one batch job may have, as given and after its folders are listed.
    #[arg(long, env = "INFERA_JOB_MAX_INPUTS", default_value_t = 100_000)]
    pub(super) job_max_inputs: usize,

    /// Bytes one batch job may download in all; past it its remaining URLs become error rows.
    #[arg(long, env = "INFERA_JOB_MAX_DOWNLOAD_BYTES", default_value_t = 1 << 30)]
    pub(super) job_max_download_bytes: u64,

    /// Batch jobs waiting to run; more are refused with 429.
    #[arg(long, env = "INFERA_MAX_QUEUED_JOBS", default_value_t = 1000)]
    pub(super) max_queued_jobs: usize,

    /// Bytes the jobs' files may take under --data-dir; past it new jobs are refused with 429.
    #[arg(long, env = "INFERA_JOBS_MAX_DISK_BYTES", default_value_t = 10 << 30)]
    pub(super) jobs_max_disk_bytes: u64,

    /// How long ended jobs (their results and rows) are kept, e.g. 7d, 12h, 30m; 0 keeps them.
    #[arg(long, env = "INFERA_JOB_RETENTION", default_value = "7d", value_parser = parse_retention)]
    pub(super) job_retention: Duration,

    /// Sessions one model may open (instance_group count × versions served); a config asking
    /// for more is refused, so one load cannot take the machine's memory.
    #[arg(long, env = "INFERA_MAX_MODEL_SESSIONS", default_value_t = 16)]
    pub(super) max_model_sessions: usize,

    /// Seconds to let in-flight requests finish after SIGTERM / Ctrl-C (Triton's default).
    /// New inference requests get 503 meanwhile; when it passes the process exits anyway.
    #[arg(long, env = "INFERA_EXIT_TIMEOUT_SECS", default_value_t = 30)]
    pub(super) exit_timeout_secs: u64,

    /// Open connections per port; past it HTTP answers 503 and gRPC closes new connections.
    #[arg(long, env = "INFERA_MAX_CONNECTIONS", default_value_t = 1024)]
    pub(super) max_connections: usize,

    /// Seconds an HTTP/1 client has to send a request's headers (slow clients are cut off).
    #[arg(long, env = "INFERA_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub(super) header_timeout_secs: u64,

    /// Seconds a connection may stay silent in both directions before it is closed.
    #[arg(long, env = "INFERA_IDLE_TIMEOUT_SECS", default_value_t = 120)]
    pub(super) idle_timeout_secs: u64,

    /// Compress gRPC inference responses (Triton's flag): none, low, medium or high. Off by
    /// default, as in Triton: compressing small tensors costs more CPU than it saves on a
    /// fast network. Any level but none sends gzip (or deflate) to clients that accept it, at
    /// the compressor's default level. Compressed requests are always accepted.
    #[arg(long, env = "INFERA_GRPC_RESPONSE_COMPRESSION", default_value = "none",
          value_parser = ["none", "low", "medium", "high"])]
    pub(super) grpc_infer_response_compression_level: String,

    /// Concurrent HTTP/2 streams (gRPC calls) per connection.
    #[arg(long, env = "INFERA_MAX_STREAMS", default_value_t = 256)]
    pub(super) max_streams: u32,

    /// API keys (`infera keys create --file FILE ...`): callers must present one
    /// (`Authorization: Bearer KEY`, `X-API-Key`, gRPC `authorization` metadata) and get what
    /// its role and models allow. Reloaded when the file changes.
    #[arg(long, env = "INFERA_AUTH_KEYS", value_name = "FILE")]
    pub(super) auth_keys: Option<PathBuf>,

    /// Accept JWT bearer tokens (OAuth2 access tokens) signed by the keys of this JWKS: a
    /// file (re-read when it changes) or an http(s) URL (fetched every --jwt-refresh-secs and
    /// when a token names an unknown key id). RS*, PS*, ES256/384 and EdDSA.
    #[arg(
        long,
        env = "INFERA_JWT_JWKS",
        value_name = "FILE_OR_URL",
        conflicts_with = "jwt_secret_file"
    )]
    pub(super) jwt_jwks: Option<String>,

    /// Accept HS256 JWT bearer tokens signed with the secret in FILE (at least 32 bytes).
    #[arg(long, env = "INFERA_JWT_SECRET_FILE", value_name = "FILE")]
    pub(super) jwt_secret_file: Option<PathBuf>,

    /// The issuer (`iss`) tokens must carry.
    #[arg(long, env = "INFERA_JWT_ISSUER", value_name = "ISS")]
    pub(super) jwt_issuer: Option<String>,

    /// The audience (`aud`) tokens must be for; without it the audience is not checked.
    #[arg(long, env = "INFERA_JWT_AUDIENCE", value_name = "AUD")]
    pub(super) jwt_audience: Option<String>,

    /// The claim holding the caller's role(s) (reader, infer, operator, admin; the highest
    /// wins). A dotted path reaches nested claims, e.g. Keycloak's `realm_access.roles`.
    #[arg(long, env = "INFERA_JWT_ROLES_CLAIM", default_value = "roles")]
    pub(super) jwt_roles_claim: String,

    /// The claim listing the models the caller may use; without it, every model.
    #[arg(long, env = "INFERA_JWT_MODELS_CLAIM", value_name = "CLAIM")]
    pub(super) jwt_models_claim: Option<String>,

    /// Seconds of clock skew allowed on a token's `exp` and `nbf`.
    #[arg(long, env = "INFERA_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub(super) jwt_leeway_secs: u64,

    /// How often a JWKS URL is fetched again.
    #[arg(long, env = "INFERA_JWT_REFRESH_SECS", default_value_t = 300)]
    pub(super) jwt_refresh_secs: u64,

    /// TLS certificate chain (PEM) for every port (HTTPS, gRPC over TLS, metrics); with
    /// --tls-key. Re-read when the file changes, so rotation needs no restart.
    #[arg(
        long,
        env = "INFERA_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub(super) tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM).
    #[arg(
        long,
        env = "INFERA_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub(super) tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates must chain to (mTLS). A verified
    /// certificate's name can stand for an API key (`infera keys create --certificate NAME`).
    #[arg(
        long,
        env = "INFERA_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub(super) tls_client_ca: Option<PathBuf>,

    /// With --tls-client-ca: "required" refuses connections without a valid client
    /// certificate; "optional" lets them in (they still need an API key).
    #[arg(long, env = "INFERA_TLS_CLIENT_AUTH", default_value = "required", value_parser = ["required", "optional"])]
    pub(super) tls_client_auth: String,

    /// Serve without authentication on a non-loopback address (refused otherwise).
    #[arg(long, env = "INFERA_INSECURE_NO_AUTH")]
    pub(super) insecure_no_auth: bool,

    /// Encrypt batch-job results, errors and input lists at rest (AES-256-GCM), and open
    /// encrypted model files (`model.onnx.enc`, from `infera encrypt`) in memory at load.
    /// The file: 32 random bytes, 64 hex digits, or lines `ID HEX` for rotation.
    #[arg(long, env = "INFERA_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub(super) encryption_key_file: Option<PathBuf>,

    /// APIs open without a credential when authentication is on, comma-separated, or
    /// "none": health, page, metrics, metadata, model-config, statistics, inference, ...
    /// (Triton's API names, plus page, metrics, jobs and admin).
    #[arg(long, env = "INFERA_PUBLIC_ENDPOINTS", default_value = "health,page", value_parser = infera_auth::ApiSet::parse)]
    pub(super) public_endpoints: infera_auth::ApiSet,

    /// Triton's restricted HTTP APIs, `API[,API...]:HEADER=VALUE` (repeatable): requests to
    /// those APIs must carry the header with that value (else 403), on top of keys or tokens.
    /// APIs: health, metadata, inference, shared-memory, model-config, model-repository,
    /// statistics, trace, logging.
    #[arg(long, value_name = "APIS:KEY=VALUE")]
    pub(super) http_restricted_api: Vec<String>,

    /// Triton's restricted gRPC protocols, `PROTOCOL[,...]:KEY=VALUE` (repeatable): calls
    /// must carry the metadata with that value (else PERMISSION_DENIED).
    #[arg(long, value_name = "PROTOCOLS:KEY=VALUE")]
    pub(super) grpc_restricted_protocol: Vec<String>,

    /// Append one JSON line per management action and per refused request to FILE.
    #[arg(long, env = "INFERA_AUDIT_LOG", value_name = "FILE")]
    pub(super) audit_log: Option<PathBuf>,

    /// One log line per request (target `infera::access`: method, path or RPC, status,
    /// milliseconds, bytes, identity), each with the request's id (X-Request-Id).
    #[arg(long, env = "INFERA_ACCESS_LOG")]
    pub(super) access_log: bool,

    /// Who changes the loaded models (Triton's flag). none: every model loads at start and
    /// the repository API refuses load/unload. poll: every model loads at start, then the
    /// server follows the repository every --repository-poll-secs (new, changed and removed
    /// models and versions; the old version serves until the new one is ready). explicit:
    /// the --load-model models load at start (none without it), then load/unload through
    /// the API (`infera models`).
    #[arg(long, env = "INFERA_MODEL_CONTROL_MODE", default_value = "none",
          value_parser = ["none", "poll", "explicit"])]
    pub(super) model_control_mode: String,

    /// Seconds between looks at the repository in poll mode.
    #[arg(long, env = "INFERA_REPOSITORY_POLL_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(super) repository_poll_secs: u64,

    /// A model to load at start in explicit mode (repeatable); `*` loads them all.
    #[arg(long = "load-model", value_name = "NAME")]
    pub(super) load_model: Vec<String>,

    /// Triton's response cache: `local,size=BYTES` keeps up to BYTES of answers in memory for
    /// models with `response_cache { enable: true }` in their config.pbtxt; a repeated request
    /// (same model, version, inputs and outputs asked) is answered without running the model.
    #[arg(long, env = "INFERA_CACHE_CONFIG", value_name = "local,size=BYTES")]
    pub(super) cache_config: Option<String>,

    /// Traffic routes to start with (A/B splits, canaries, shadows; TOML, a table per routed
    /// name). Default: `routes.toml` in the model repository when there is one. Change them
    /// at run time with `/v2/routes` or `infera models route`.
    #[arg(long, env = "INFERA_ROUTES", value_name = "FILE")]
    pub(super) routes: Option<PathBuf>,

    /// Export traces over OTLP/HTTP (JSON) to this collector, e.g. http://127.0.0.1:4318 (an
    /// OpenTelemetry Collector, Jaeger, Tempo): a span per request, its queue wait, each
    /// ensemble step and each model run. A client's W3C `traceparent` is continued, and
    /// responses carry the server's.
    #[arg(long, env = "INFERA_OTLP_ENDPOINT", value_name = "URL")]
    pub(super) otlp_endpoint: Option<String>,

    /// Log format: "text" for people, "json" for log pipelines. Levels come from RUST_LOG.
    #[arg(long, env = "INFERA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub(super) log_format: String,
}

/// A retention such as 7d, 12h or 30m; 0 (kept forever) is `Duration::ZERO`.
fn parse_retention(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("'{s}' is not a duration such as 7d, 12h or 30m ({e}); 0 keeps jobs forever")
    })
}
