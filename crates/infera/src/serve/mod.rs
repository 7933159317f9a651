//! `infera serve`: load the repository, then run the HTTP, gRPC and metrics endpoints
//! until SIGTERM or Ctrl-C, draining in-flight requests (up to `--exit-timeout-secs`)
//! before exiting.

mod listen;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use infera_core::InferenceServer;
use infera_core::backend::Backend;
use infera_core::metrics::Metrics;
use infera_core::repository::{Backends, ModelRepository, RepositoryOptions};
use tracing::{info, warn};

use listen::ConnLimits;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Triton-style model repository: <model>/config.pbtxt and <model>/<version>/model.onnx.
    /// Without it, the example repository built into infera is served.
    #[arg(long, env = "INFERA_MODEL_REPOSITORY", value_name = "DIR")]
    model_repository: Option<PathBuf>,

    /// Address to listen on. Use 0.0.0.0 to accept connections from other machines.
    #[arg(long, env = "INFERA_HOST", default_value = "127.0.0.1")]
    host: String,

    /// KServe v2 HTTP/REST port (Triton's default). 0 turns HTTP off.
    #[arg(long, env = "INFERA_HTTP_PORT", default_value_t = 8000)]
    http_port: u16,

    /// KServe v2 gRPC port (Triton's default). 0 turns gRPC off.
    #[arg(long, env = "INFERA_GRPC_PORT", default_value_t = 8001)]
    grpc_port: u16,

    /// Prometheus metrics port, serving /metrics (Triton's default). 0 turns metrics off.
    #[arg(long, env = "INFERA_METRICS_PORT", default_value_t = 8002)]
    metrics_port: u16,

    /// Path to libonnxruntime (file or directory). Default: ORT_DYLIB_PATH, else the
    /// `onnxruntime` Python wheel if installed. Without it, infera falls back to tract.
    #[arg(long, env = "INFERA_ONNXRUNTIME_LIB", value_name = "PATH")]
    onnxruntime_lib: Option<PathBuf>,

    /// Largest request body accepted, in bytes, after decompression (HTTP and gRPC).
    #[arg(long, env = "INFERA_MAX_BODY_SIZE", default_value_t = 64 << 20)]
    max_body_size: usize,

    /// Requests that may wait per model version; more are refused with HTTP 429 / gRPC UNAVAILABLE.
    #[arg(long, env = "INFERA_MAX_QUEUE_SIZE", default_value_t = 1024)]
    max_queue_size: usize,

    /// max_batch_size given to models without config.pbtxt whose inputs have a free batch dimension
    /// (Triton's default-max-batch-size). 0 disables batching for them.
    #[arg(long, env = "INFERA_DEFAULT_MAX_BATCH_SIZE", default_value_t = 4)]
    default_max_batch_size: i32,

    /// Model used by /predict and /predict/batch when the request names none (`?model=NAME`).
    /// It must take one image (BYTES) input, like the fashion_mnist_image ensemble.
    #[arg(
        long,
        env = "INFERA_DEFAULT_MODEL",
        default_value = "fashion_mnist_image"
    )]
    default_model: String,

    /// Worker threads for the network front-ends (model execution has its own threads).
    #[arg(long, env = "INFERA_IO_THREADS", default_value_t = 2)]
    io_threads: usize,

    /// Turns batch jobs on (/api/inference/batch): their database (jobs.db), outputs and
    /// checkpoints live here, and jobs interrupted by a crash or stop resume from it.
    /// One server per directory.
    #[arg(long, env = "INFERA_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// A folder whose files batch jobs may read (repeat for more). Paths are checked after
    /// resolving symlinks; nothing outside these folders is read.
    #[arg(
        long = "batch-input-root",
        env = "INFERA_BATCH_INPUT_ROOTS",
        value_name = "DIR",
        value_delimiter = ','
    )]
    batch_input_roots: Vec<PathBuf>,

    /// A URL prefix batch jobs may download from, e.g. https://images.example.com/catalog/
    /// (repeat for more). Redirects must stay on the list too.
    #[arg(
        long = "batch-allow-url",
        env = "INFERA_BATCH_ALLOW_URLS",
        value_name = "PREFIX",
        value_delimiter = ','
    )]
    batch_allow_urls: Vec<String>,

    /// Batch jobs running at once; others wait, high priority first.
    #[arg(long, env = "INFERA_MAX_RUNNING_JOBS", default_value_t = 1)]
    max_running_jobs: usize,

    /// Images per checkpoint of a batch job (a crash repeats at most this many per worker).
    #[arg(long, env = "INFERA_JOB_BATCH_SIZE", default_value_t = 32)]
    job_batch_size: usize,

    /// Chunks of a batch job in flight at once.
    #[arg(long, env = "INFERA_JOB_WORKERS", default_value_t = 2)]
    job_workers: usize,

    /// Inputs one batch job may have, as given and after its folders are listed.
    #[arg(long, env = "INFERA_JOB_MAX_INPUTS", default_value_t = 100_000)]
    job_max_inputs: usize,

    /// Bytes one batch job may download in all; past it its remaining URLs become error rows.
    #[arg(long, env = "INFERA_JOB_MAX_DOWNLOAD_BYTES", default_value_t = 1 << 30)]
    job_max_download_bytes: u64,

    /// Batch jobs waiting to run; more are refused with 429.
    #[arg(long, env = "INFERA_MAX_QUEUED_JOBS", default_value_t = 1000)]
    max_queued_jobs: usize,

    /// Bytes the jobs' files may take under --data-dir; past it new jobs are refused with 429.
    #[arg(long, env = "INFERA_JOBS_MAX_DISK_BYTES", default_value_t = 10 << 30)]
    jobs_max_disk_bytes: u64,

    /// How long ended jobs (their results and rows) are kept, e.g. 7d, 12h, 30m; 0 keeps them.
    #[arg(long, env = "INFERA_JOB_RETENTION", default_value = "7d", value_parser = parse_retention)]
    job_retention: Duration,

    /// Sessions one model may open (instance_group count × versions served); a config asking
    /// for more is refused, so one load cannot take the machine's memory.
    #[arg(long, env = "INFERA_MAX_MODEL_SESSIONS", default_value_t = 16)]
    max_model_sessions: usize,

    /// Seconds to let in-flight requests finish after SIGTERM / Ctrl-C (Triton's default).
    /// New inference requests get 503 meanwhile; when it passes the process exits anyway.
    #[arg(long, env = "INFERA_EXIT_TIMEOUT_SECS", default_value_t = 30)]
    exit_timeout_secs: u64,

    /// Open connections per port; past it HTTP answers 503 and gRPC closes new connections.
    #[arg(long, env = "INFERA_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,

    /// Seconds an HTTP/1 client has to send a request's headers (slow clients are cut off).
    #[arg(long, env = "INFERA_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    header_timeout_secs: u64,

    /// Seconds a connection may stay silent in both directions before it is closed.
    #[arg(long, env = "INFERA_IDLE_TIMEOUT_SECS", default_value_t = 120)]
    idle_timeout_secs: u64,

    /// Concurrent HTTP/2 streams (gRPC calls) per connection.
    #[arg(long, env = "INFERA_MAX_STREAMS", default_value_t = 256)]
    max_streams: u32,

    /// API keys (`infera keys create --file FILE ...`): callers must present one
    /// (`Authorization: Bearer KEY`, `X-API-Key`, gRPC `authorization` metadata) and get what
    /// its role and models allow. Reloaded when the file changes.
    #[arg(long, env = "INFERA_AUTH_KEYS", value_name = "FILE")]
    auth_keys: Option<PathBuf>,

    /// Accept JWT bearer tokens (OAuth2 access tokens) signed by the keys of this JWKS: a
    /// file (re-read when it changes) or an http(s) URL (fetched every --jwt-refresh-secs and
    /// when a token names an unknown key id). RS*, PS*, ES256/384 and EdDSA.
    #[arg(
        long,
        env = "INFERA_JWT_JWKS",
        value_name = "FILE_OR_URL",
        conflicts_with = "jwt_secret_file"
    )]
    jwt_jwks: Option<String>,

    /// Accept HS256 JWT bearer tokens signed with the secret in FILE (at least 32 bytes).
    #[arg(long, env = "INFERA_JWT_SECRET_FILE", value_name = "FILE")]
    jwt_secret_file: Option<PathBuf>,

    /// The issuer (`iss`) tokens must carry.
    #[arg(long, env = "INFERA_JWT_ISSUER", value_name = "ISS")]
    jwt_issuer: Option<String>,

    /// The audience (`aud`) tokens must be for; without it the audience is not checked.
    #[arg(long, env = "INFERA_JWT_AUDIENCE", value_name = "AUD")]
    jwt_audience: Option<String>,

    /// The claim holding the caller's role(s) (reader, infer, operator, admin; the highest
    /// wins). A dotted path reaches nested claims, e.g. Keycloak's `realm_access.roles`.
    #[arg(long, env = "INFERA_JWT_ROLES_CLAIM", default_value = "roles")]
    jwt_roles_claim: String,

    /// The claim listing the models the caller may use; without it, every model.
    #[arg(long, env = "INFERA_JWT_MODELS_CLAIM", value_name = "CLAIM")]
    jwt_models_claim: Option<String>,

    /// Seconds of clock skew allowed on a token's `exp` and `nbf`.
    #[arg(long, env = "INFERA_JWT_LEEWAY_SECS", default_value_t = 30)]
    jwt_leeway_secs: u64,

    /// How often a JWKS URL is fetched again.
    #[arg(long, env = "INFERA_JWT_REFRESH_SECS", default_value_t = 300)]
    jwt_refresh_secs: u64,

    /// TLS certificate chain (PEM) for every port (HTTPS, gRPC over TLS, metrics); with
    /// --tls-key. Re-read when the file changes, so rotation needs no restart.
    #[arg(
        long,
        env = "INFERA_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM).
    #[arg(
        long,
        env = "INFERA_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates must chain to (mTLS). A verified
    /// certificate's name can stand for an API key (`infera keys create --certificate NAME`).
    #[arg(
        long,
        env = "INFERA_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,

    /// With --tls-client-ca: "required" refuses connections without a valid client
    /// certificate; "optional" lets them in (they still need an API key).
    #[arg(long, env = "INFERA_TLS_CLIENT_AUTH", default_value = "required", value_parser = ["required", "optional"])]
    tls_client_auth: String,

    /// Serve without authentication on a non-loopback address (refused otherwise).
    #[arg(long, env = "INFERA_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,

    /// Encrypt batch-job results, errors and input lists at rest (AES-256-GCM), and open
    /// encrypted model files (`model.onnx.enc`, from `infera encrypt`) in memory at load.
    /// The file: 32 random bytes, 64 hex digits, or lines `ID HEX` for rotation.
    #[arg(long, env = "INFERA_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    encryption_key_file: Option<PathBuf>,

    /// APIs open without a credential when authentication is on, comma-separated, or
    /// "none": health, page, metrics, metadata, model-config, statistics, inference, ...
    /// (Triton's API names, plus page, metrics, jobs and admin).
    #[arg(long, env = "INFERA_PUBLIC_ENDPOINTS", default_value = "health,page", value_parser = infera_auth::ApiSet::parse)]
    public_endpoints: infera_auth::ApiSet,

    /// Triton's restricted HTTP APIs, `API[,API...]:HEADER=VALUE` (repeatable): requests to
    /// those APIs must carry the header with that value (else 403), on top of keys or tokens.
    /// APIs: health, metadata, inference, shared-memory, model-config, model-repository,
    /// statistics, trace, logging.
    #[arg(long, value_name = "APIS:KEY=VALUE")]
    http_restricted_api: Vec<String>,

    /// Triton's restricted gRPC protocols, `PROTOCOL[,...]:KEY=VALUE` (repeatable): calls
    /// must carry the metadata with that value (else PERMISSION_DENIED).
    #[arg(long, value_name = "PROTOCOLS:KEY=VALUE")]
    grpc_restricted_protocol: Vec<String>,

    /// Append one JSON line per management action and per refused request to FILE.
    #[arg(long, env = "INFERA_AUDIT_LOG", value_name = "FILE")]
    audit_log: Option<PathBuf>,

    /// One log line per request (target `infera::access`: method, path or RPC, status,
    /// milliseconds, bytes, identity), each with the request's id (X-Request-Id).
    #[arg(long, env = "INFERA_ACCESS_LOG")]
    access_log: bool,

    /// Log format: "text" for people, "json" for log pipelines. Levels come from RUST_LOG.
    #[arg(long, env = "INFERA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
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

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The runtimes: ONNX Runtime when found, the native image and postprocessing kinds, and
/// tract when built in.
pub(crate) fn backends(onnxruntime_lib: Option<&std::path::Path>) -> Backends {
    let mut b = Backends::default();
    match infera_backend_ort::find_library(onnxruntime_lib) {
        Some(lib) => match infera_backend_ort::OrtBackend::new(&lib) {
            Ok(ort) => {
                info!(library = %lib.display(), "ONNX Runtime loaded");
                b.onnxruntime = Some(Arc::new(ort) as Arc<dyn Backend>);
            }
            Err(e) => {
                warn!(error = %e, "ONNX Runtime could not be loaded; falling back to tract where built in")
            }
        },
        None => warn!(
            "ONNX Runtime not found (no --onnxruntime-lib, ORT_DYLIB_PATH or `onnxruntime` wheel); falling back to tract where built in"
        ),
    }
    b.others
        .push(Arc::new(infera_backend_image::ImageBackend) as Arc<dyn Backend>);
    b.others
        .push(Arc::new(infera_backend_postprocess::ClassifyBackend) as Arc<dyn Backend>);
    #[cfg(feature = "tract")]
    {
        b.tract = Some(Arc::new(infera_backend_tract::TractBackend) as Arc<dyn Backend>);
    }
    if b.onnxruntime.is_none() && b.tract.is_none() {
        warn!(
            "no runtime available: this build has no tract backend and ONNX Runtime was not found"
        );
    }
    b
}

/// The given repository, or the example repository built into the binary.
pub(crate) fn repository_dir(given: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(d) => {
            anyhow::ensure!(
                d.is_dir(),
                "model repository {} is not a directory",
                d.display()
            );
            Ok(d.to_path_buf())
        }
        None => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir)
                .join("infera");
            let dir = crate::embedded::extract(&base)?;
            info!(path = %dir.display(), "no --model-repository given: using the built-in example repository");
            Ok(dir)
        }
    }
}

/// For commands with a progress bar: only warnings and errors, on stderr.
pub(crate) fn init_logging_quiet() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    init_logging(&args.log_format);
    let repo_dir = repository_dir(args.model_repository.as_deref())?;
    let metrics = Metrics::new();
    let keyring = args
        .encryption_key_file
        .as_deref()
        .map(crate::encrypt::keyring)
        .transpose()?;
    let options = RepositoryOptions {
        default_max_batch_size: args.default_max_batch_size,
        max_queue: args.max_queue_size.max(1),
        max_sessions: args.max_model_sessions.max(1),
        keyring: keyring.clone(),
        ..Default::default()
    };
    let repository = Arc::new(ModelRepository::new(
        &repo_dir,
        backends(args.onnxruntime_lib.as_deref()),
        options,
        metrics.clone(),
    ));
    repository
        .load_all()
        .with_context(|| format!("cannot read model repository {}", repo_dir.display()))?;
    let server = Arc::new(InferenceServer::new(repository, metrics.clone()));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.io_threads.max(1))
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(args, server, metrics, keyring, started));
    // Tasks a hung client still holds (or a model load in progress) must not keep the
    // process alive past the exit deadline.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn bind(a: SocketAddr, what: &str, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(a).await.with_context(|| {
        format!(
            "cannot listen for {what} on {a} (is another server using it? pick a port with {flag})"
        )
    })
}

/// JWT verification when --jwt-jwks or --jwt-secret-file is given.
async fn jwt(args: &ServeArgs) -> anyhow::Result<Option<Arc<infera_auth::jwt::Jwt>>> {
    use infera_auth::jwt::{Jwt, JwtKeys, JwtOptions};
    let keys = match (&args.jwt_jwks, &args.jwt_secret_file) {
        (Some(s), _) if s.starts_with("http://") || s.starts_with("https://") => {
            JwtKeys::JwksUrl(s.clone())
        }
        (Some(s), _) => JwtKeys::JwksFile(PathBuf::from(s)),
        (None, Some(f)) => JwtKeys::Secret(f.clone()),
        (None, None) => return Ok(None),
    };
    let jwt = Jwt::new(JwtOptions {
        keys,
        issuer: args.jwt_issuer.clone(),
        audience: args.jwt_audience.clone(),
        roles_claim: args.jwt_roles_claim.clone(),
        models_claim: args.jwt_models_claim.clone(),
        leeway_secs: args.jwt_leeway_secs,
        refresh: Duration::from_secs(args.jwt_refresh_secs.max(1)),
    })
    .await?;
    if args.jwt_audience.is_none() {
        warn!(
            "JWTs are accepted for any audience: give --jwt-audience to accept only tokens meant for infera"
        );
    }
    tokio::spawn(jwt.clone().watch());
    Ok(Some(jwt))
}

/// Who may call: API keys (`--auth-keys`) and/or JWTs (`--jwt-*`); else an open server,
/// which only loopback addresses get without `--insecure-no-auth`.
async fn auth(args: &ServeArgs) -> anyhow::Result<Arc<infera_auth::Auth>> {
    let audit = args
        .audit_log
        .as_deref()
        .map(infera_auth::Audit::open)
        .transpose()?;
    let jwt = jwt(args).await?;
    let auth = match (&args.auth_keys, jwt) {
        (keys, jwt) if keys.is_some() || jwt.is_some() => {
            let a = infera_auth::Auth::new(infera_auth::AuthOptions {
                keys_file: keys.clone(),
                jwt,
                quota_dir: args.data_dir.clone(),
                audit,
                public: Some(args.public_endpoints),
            })?;
            if let Some(file) = keys {
                info!(file = %file.display(), "API keys accepted");
            }
            info!("callers must authenticate");
            tokio::spawn(a.clone().watch(Duration::from_secs(2)));
            a
        }
        _ => {
            if !is_loopback(&args.host) {
                anyhow::ensure!(
                    args.insecure_no_auth,
                    "--host {} accepts connections from other machines, and no authentication is set up: \
                     give --auth-keys FILE (make one with `infera keys create`) or --jwt-jwks, or --insecure-no-auth to serve openly anyway",
                    args.host
                );
                warn!(host = %args.host, "serving WITHOUT authentication on a non-loopback address (--insecure-no-auth)");
            }
            infera_auth::Auth::open(audit)
        }
    };
    Ok(auth)
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn serve(
    args: ServeArgs,
    server: Arc<InferenceServer>,
    metrics: Metrics,
    keyring: Option<Arc<infera_seal::Keyring>>,
    started: Instant,
) -> anyhow::Result<()> {
    let addr = |port: u16| -> anyhow::Result<SocketAddr> {
        format!("{}:{port}", args.host)
            .parse()
            .or_else(|_| {
                std::net::ToSocketAddrs::to_socket_addrs(&(args.host.as_str(), port))
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or(())
            })
            .map_err(|_| anyhow::anyhow!("cannot resolve --host {}", args.host))
    };
    let limits = ConnLimits {
        max_connections: args.max_connections.max(1),
        header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs.max(1)),
        max_streams: args.max_streams.max(1),
    };
    let exit_timeout = Duration::from_secs(args.exit_timeout_secs);
    let auth = auth(&args).await?;
    if auth.required()
        && let Err(e) = metrics.register(Box::new(infera_auth::metrics::UsageCollector::new(
            auth.clone(),
        )))
    {
        warn!(error = %e, "per-key usage metrics are not available");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let t = Arc::new(tls::Tls::new(tls::TlsOptions {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
                client_auth_required: args.tls_client_auth == "required",
            })?);
            tokio::spawn(t.clone().watch(Duration::from_secs(2)));
            info!(cert = %cert.display(), client_ca = ?args.tls_client_ca, "TLS on every port");
            Some(t)
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let jobs = match &args.data_dir {
        Some(dir) => {
            let cfg = infera_jobs::JobConfig {
                data_dir: dir.clone(),
                input_roots: args.batch_input_roots.clone(),
                allow_urls: args.batch_allow_urls.clone(),
                max_running: args.max_running_jobs.max(1),
                batch_size: args.job_batch_size.max(1),
                workers: args.job_workers.max(1),
                limits: infera_jobs::JobLimits {
                    max_inputs: args.job_max_inputs.max(1),
                    max_file_bytes: args.max_body_size as u64,
                    max_job_download_bytes: args.job_max_download_bytes,
                    max_queued: args.max_queued_jobs.max(1),
                    max_disk_bytes: args.jobs_max_disk_bytes,
                    retention: (!args.job_retention.is_zero()).then_some(args.job_retention),
                },
                seal: keyring,
            };
            let m = infera_jobs::JobManager::start(server.clone(), cfg)?;
            info!(data_dir = %dir.display(), roots = ?args.batch_input_roots, urls = ?args.batch_allow_urls, "batch jobs on");
            Some(m)
        }
        None => {
            if !args.batch_input_roots.is_empty() || !args.batch_allow_urls.is_empty() {
                anyhow::bail!(
                    "--batch-input-root and --batch-allow-url need --data-dir DIR (where jobs are kept)"
                );
            }
            None
        }
    };
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = tokio::task::JoinSet::new();
    let mut endpoints = Vec::new();

    if args.http_port != 0 {
        let a = addr(args.http_port)?;
        let listener = bind(a, "HTTP", "--http-port").await?;
        let app = infera_http::router(server.clone(), args.max_body_size)
            .merge(infera_app::router(
                server.clone(),
                args.default_model.clone(),
                args.max_body_size,
            ))
            .merge(infera_app::jobs::router(jobs.clone()))
            // Prometheus scrapers pointed at the app port (FastAPI and TorchServe habits).
            .merge(infera_http::metrics_router(metrics.clone()));
        let app = infera_http::auth::protect_with(
            app,
            auth.clone(),
            &args.default_model,
            infera_auth::Restrictions::parse(&args.http_restricted_api)
                .map_err(|e| anyhow::anyhow!("--http-restricted-api {e}"))?,
        );
        let app = infera_http::observe::observe(app, args.access_log);
        tasks.spawn(listen::serve_http(
            listener,
            app,
            limits,
            tls.as_ref().map(|t| t.http.clone()),
            stop_tx.subscribe(),
            exit_timeout,
            "HTTP",
        ));
        endpoints.push(format!("HTTP {scheme}://{a}"));
    }
    if args.grpc_port != 0 {
        let a = addr(args.grpc_port)?;
        let listener = bind(a, "gRPC", "--grpc-port").await?;
        let svc = infera_grpc::service(server.clone(), args.max_body_size);
        let grpc_auth = infera_grpc::auth::AuthLayer::new(auth.clone()).restricted(
            infera_auth::Restrictions::parse(&args.grpc_restricted_protocol)
                .map_err(|e| anyhow::anyhow!("--grpc-restricted-protocol {e}"))?,
        );
        let grpc_tls = tls.as_ref().map(|t| t.grpc.clone());
        let access_log = args.access_log;
        let mut stop = stop_tx.subscribe();
        tasks.spawn(async move {
            let served = tonic::transport::Server::builder()
                .layer(infera_grpc::observe::ObserveLayer::new(access_log))
                .layer(grpc_auth)
                .max_concurrent_streams(Some(limits.max_streams))
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .http2_max_header_list_size(Some(64 << 10))
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    listen::grpc_incoming(listener, limits, grpc_tls),
                    async move {
                        let _ = stop.recv().await;
                    },
                );
            // Draining ends at the exit deadline, counted from the stop signal.
            if let Err(e) = served.await {
                warn!(error = %e, "gRPC server stopped with an error");
            }
        });
        endpoints.push(format!(
            "gRPC {a}{}",
            if tls.is_some() { " (TLS)" } else { "" }
        ));
    }
    if args.metrics_port != 0 {
        let a = addr(args.metrics_port)?;
        let listener = bind(a, "metrics", "--metrics-port").await?;
        let app = infera_http::auth::protect(
            infera_http::metrics_router(metrics),
            auth.clone(),
            &args.default_model,
        );
        let app = infera_http::observe::observe(app, args.access_log);
        tasks.spawn(listen::serve_http(
            listener,
            app,
            limits,
            tls.as_ref().map(|t| t.http.clone()),
            stop_tx.subscribe(),
            exit_timeout,
            "metrics",
        ));
        endpoints.push(format!("metrics {scheme}://{a}/metrics"));
    }
    info!(
        startup_ms = started.elapsed().as_millis() as u64,
        "infera ready: {}",
        endpoints.join(", ")
    );
    shutdown_signal().await;
    info!(
        exit_timeout_secs = args.exit_timeout_secs,
        "shutdown requested: new inference gets 503, draining in-flight requests"
    );
    server.begin_shutdown();
    let quotas = auth.clone();
    let _ = tokio::task::spawn_blocking(move || quotas.flush()).await;
    let _ = stop_tx.send(());
    let drain = async {
        if let Some(j) = &jobs {
            // Running jobs stop after their current chunk and resume at the next start;
            // their event streams end.
            j.shutdown().await;
        }
        while tasks.join_next().await.is_some() {}
    };
    if tokio::time::timeout(exit_timeout, drain).await.is_err() {
        warn!("the exit deadline passed with requests still open; exiting anyway");
    }
    info!("infera stopped");
    Ok(())
}
