//! `infera serve`: load the repository, then run the HTTP, gRPC and metrics endpoints
//! until SIGTERM or Ctrl-C, draining in-flight requests (up to `--exit-timeout-secs`)
//! before exiting.

mod args;
pub mod doctor;
mod listen;
mod poll;
mod routes;
mod telemetry;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use infera_core::InferenceServer;
use infera_core::backend::Backend;
use infera_core::metrics::Metrics;
use infera_core::repository::{Backends, ModelRepository, RepositoryOptions};
use infera_core::server::ControlMode;
use tracing::{info, warn};

pub use args::ServeArgs;
use listen::ConnLimits;

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
                warn!(error = %e, "ONNX Runtime could not be loaded; falling back to tract if this build has it (--features tract)")
            }
        },
        None => warn!(
            "ONNX Runtime not found (no --onnxruntime-lib, ORT_DYLIB_PATH or `onnxruntime` wheel); falling back to tract if this build has it (--features tract)"
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
            "no runtime for ONNX models: ONNX Runtime was not found (`pip install onnxruntime`, ORT_DYLIB_PATH or --onnxruntime-lib) and this build has no tract fallback (build with --features infera/tract)"
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        // A process embedding infera may have set up logging already: keep it.
        .try_init();
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    run_until(args, shutdown_signal())
}

/// Serves until `stop` resolves, then drains as on a stop signal.
pub fn run_until(
    args: ServeArgs,
    stop: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let telemetry = telemetry::init(&args.log_format, args.otlp_endpoint.as_deref())?;
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
    let mode: ControlMode = args
        .model_control_mode
        .parse()
        .map_err(|e| anyhow::anyhow!("--model-control-mode {e}"))?;
    anyhow::ensure!(
        args.load_model.is_empty() || mode == ControlMode::Explicit,
        "--load-model needs --model-control-mode explicit (the other modes load every model)"
    );
    let read = |e: std::io::Error| {
        anyhow::anyhow!("cannot read model repository {}: {e}", repo_dir.display())
    };
    if mode != ControlMode::Explicit || args.load_model.iter().any(|m| m == "*") {
        repository.load_all().map_err(read)?;
    } else {
        repository.model_names().map_err(read)?;
        repository.load_each(args.load_model.clone());
    }
    let mut server = InferenceServer::new(repository, metrics.clone()).with_control_mode(mode);
    if let Some(spec) = &args.cache_config {
        let cache = infera_core::cache::ResponseCache::from_config(spec)
            .map_err(|e| anyhow::anyhow!("--cache-config {e}"))?;
        info!(
            bytes = cache.capacity(),
            "response cache on for models with response_cache enabled"
        );
        server = server.with_response_cache(Arc::new(cache));
    }
    let routes = routes::file(args.routes.as_deref(), &repo_dir)
        .map(|p| routes::read(&p))
        .transpose()?;
    if let Some(r) = routes {
        routes::apply(&server, r);
    }
    let server = Arc::new(server);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.io_threads.max(1))
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(args, server, metrics, keyring, started, stop));
    // Tasks a hung client still holds (or a model load in progress) must not keep the
    // process alive past the exit deadline.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(telemetry);
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
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    server.start_routing();
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
            if let Err(e) = metrics.register(Box::new(m.collector())) {
                warn!(error = %e, "batch job metrics are not available");
            }
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
        let app = infera_http::observe::observe_with(
            app,
            infera_http::observe::Observe {
                access_log: args.access_log,
                metrics: Some((metrics.api.clone(), server.clone())),
                default_model: args.default_model.as_str().into(),
                traces: args.otlp_endpoint.is_some(),
            },
        );
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
        let svc = infera_grpc::service_with(
            server.clone(),
            args.max_body_size,
            args.grpc_infer_response_compression_level != "none",
        );
        let grpc_auth = infera_grpc::auth::AuthLayer::new(auth.clone()).restricted(
            infera_auth::Restrictions::parse(&args.grpc_restricted_protocol)
                .map_err(|e| anyhow::anyhow!("--grpc-restricted-protocol {e}"))?,
        );
        let grpc_tls = tls.as_ref().map(|t| t.grpc.clone());
        let access_log = args.access_log;
        let grpc_metrics = metrics.api.clone();
        let traces = args.otlp_endpoint.is_some();
        let mut stop = stop_tx.subscribe();
        tasks.spawn(async move {
            let served = tonic::transport::Server::builder()
                .layer(
                    infera_grpc::observe::ObserveLayer::new(access_log)
                        .with_metrics(grpc_metrics)
                        .with_traces(traces),
                )
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
    // The metrics and management ports: auth, access log and TLS as on the main HTTP port.
    let mut serve_side = |router: axum::Router, listener, what: &'static str| {
        let app = infera_http::auth::protect(router, auth.clone(), &args.default_model);
        let app = infera_http::observe::observe(app, args.access_log);
        tasks.spawn(listen::serve_http(
            listener,
            app,
            limits,
            tls.as_ref().map(|t| t.http.clone()),
            stop_tx.subscribe(),
            exit_timeout,
            what,
        ));
    };
    if args.metrics_port != 0 {
        let a = addr(args.metrics_port)?;
        let listener = bind(a, "metrics", "--metrics-port").await?;
        serve_side(
            infera_http::metrics_router(metrics.clone()),
            listener,
            "metrics",
        );
        endpoints.push(format!("metrics {scheme}://{a}/metrics"));
    }
    if let Some(port) = args.management_port {
        let a = addr(port)?;
        let listener = bind(a, "management", "--management-port").await?;
        let model_store = match &args.model_store {
            Some(d) => Some(
                std::fs::canonicalize(d)
                    .map_err(|e| anyhow::anyhow!("--model-store {}: {e}", d.display()))?,
            ),
            None => None,
        };
        let sources = infera_app::management::SourcePolicy {
            model_store,
            allowed_urls: infera_app::management::allowed_urls(&args.allowed_urls)
                .map_err(|e| anyhow::anyhow!(e))?,
            max_bytes: args.max_model_bytes,
        };
        serve_side(
            infera_app::management::router(server.clone(), sources),
            listener,
            "management",
        );
        endpoints.push(format!("management {scheme}://{a}/models"));
    }
    if server.control_mode() == ControlMode::Poll {
        tokio::spawn(poll::follow(
            server.clone(),
            Duration::from_secs(args.repository_poll_secs),
        ));
    }
    metrics.startup_seconds.set(started.elapsed().as_secs_f64());
    info!(
        startup_ms = started.elapsed().as_millis() as u64,
        "infera ready: {}",
        endpoints.join(", ")
    );
    stop.await;
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
