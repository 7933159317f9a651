//! `infera doctor`: checks what `infera serve` with the same flags needs (ONNX Runtime, the
//! model repository, free ports, TLS files, keys, the data directory) and says what to fix,
//! without serving anything.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use infera_core::repository::{ModelRepository, RepositoryOptions};

use super::ServeArgs;

struct Report {
    problems: usize,
}

impl Report {
    fn ok(&self, what: impl std::fmt::Display) {
        println!("  ok    {what}");
    }

    fn fail(&mut self, what: impl std::fmt::Display, fix: impl std::fmt::Display) {
        self.problems += 1;
        println!("  FAIL  {what}\n        fix: {fix}");
    }

    fn note(&self, what: impl std::fmt::Display) {
        println!("  --    {what}");
    }
}

/// The version in a library's file name (libonnxruntime.so.1.31.1 → 1.31.1).
fn version_of(lib: &Path) -> Option<String> {
    let real = std::fs::canonicalize(lib).unwrap_or_else(|_| lib.to_path_buf());
    let name = real.file_name()?.to_str()?;
    let v = name.split_once(".so.").map(|(_, v)| v).or_else(|| {
        name.strip_prefix("libonnxruntime.")
            .and_then(|r| r.strip_suffix(".dylib"))
    })?;
    v.chars()
        .all(|c| c.is_ascii_digit() || c == '.')
        .then(|| v.to_string())
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    super::init_logging_quiet();
    let mut r = Report { problems: 0 };
    println!("infera doctor: checking what `infera serve` needs with these flags");

    // ONNX Runtime, found and loaded as serve does (its warning says why when it fails).
    let backends = super::backends(args.onnxruntime_lib.as_deref());
    match infera_backend_ort::find_library(args.onnxruntime_lib.as_deref()) {
        Some(lib) if backends.onnxruntime.is_some() => r.ok(format!(
            "ONNX Runtime {} loads from {}",
            version_of(&lib).unwrap_or_else(|| "(version unknown)".into()),
            lib.display()
        )),
        Some(lib) => r.fail(
            format!("ONNX Runtime at {} does not load", lib.display()),
            "install onnxruntime==1.31.1 (pip) and pass its libonnxruntime.so with --onnxruntime-lib or ORT_DYLIB_PATH",
        ),
        None => r.fail(
            "ONNX Runtime not found",
            "pip install onnxruntime==1.31.1, or pass --onnxruntime-lib /path/to/libonnxruntime.so (ORT_DYLIB_PATH)",
        ),
    }

    // The model repository, loaded as serve loads it.
    let keyring = match args.encryption_key_file.as_deref() {
        Some(f) => match crate::encrypt::keyring(f) {
            Ok(k) => {
                r.ok(format!("encryption key file {} reads", f.display()));
                Some(k)
            }
            Err(e) => {
                r.fail(
                    format!("encryption key file {}: {e:#}", f.display()),
                    "give the file made for `infera encrypt` (32 bytes, 64 hex characters or `ID HEX` lines)",
                );
                None
            }
        },
        None => None,
    };
    match super::repository_dir(args.model_repository.as_deref()) {
        Ok(dir) => {
            let repo = Arc::new(ModelRepository::new(
                &dir,
                backends,
                RepositoryOptions {
                    default_max_batch_size: args.default_max_batch_size,
                    max_queue: args.max_queue_size.max(1),
                    max_sessions: args.max_model_sessions.max(1),
                    keyring,
                    ..Default::default()
                },
                infera_core::metrics::Metrics::new(),
            ));
            match repo.load_all() {
                Err(e) => r.fail(
                    format!("model repository {}: {e}", dir.display()),
                    "point --model-repository at a folder of model folders (Triton's layout)",
                ),
                Ok(_) => {
                    let index = repo.index(false);
                    if index.is_empty() {
                        r.fail(
                            format!("model repository {} has no models", dir.display()),
                            "add model folders (NAME/config.pbtxt and NAME/1/model.onnx)",
                        );
                    }
                    for e in index {
                        if e.state == "READY" {
                            r.ok(format!("model {} version {} loads", e.name, e.version));
                        } else {
                            r.fail(
                                format!("model {} is {}: {}", e.name, e.state, e.reason),
                                "fix its config.pbtxt or files (the reason says which); the other models serve meanwhile",
                            );
                        }
                    }
                }
            }
        }
        Err(e) => r.fail(
            format!("{e:#}"),
            "give --model-repository an existing folder",
        ),
    }

    // Ports.
    for (name, port, flag) in [
        ("HTTP", args.http_port, "--http-port"),
        ("gRPC", args.grpc_port, "--grpc-port"),
        ("metrics", args.metrics_port, "--metrics-port"),
    ] {
        if port == 0 {
            r.note(format!("{name} is off ({flag} 0)"));
            continue;
        }
        match TcpListener::bind((args.host.as_str(), port)) {
            Ok(_) => r.ok(format!("{name} port {}:{port} is free", args.host)),
            Err(e) => r.fail(
                format!("{name} port {}:{port}: {e}", args.host),
                format!("stop what holds it, or choose another with {flag}"),
            ),
        }
    }

    // TLS and authentication, built as serve builds them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match super::tls::Tls::new(super::tls::TlsOptions {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
            client_auth_required: args.tls_client_auth == "required",
        }) {
            Ok(_) => r.ok(format!("TLS certificate {} and key read", cert.display())),
            Err(e) => r.fail(
                format!("TLS: {e:#}"),
                "give a PEM certificate chain and its PEM private key, readable by this user",
            ),
        },
        (None, None) => r.note("TLS is off (--tls-cert/--tls-key)"),
        _ => r.fail(
            "only one of --tls-cert and --tls-key is given",
            "give both, or neither",
        ),
    }
    match rt.block_on(super::auth(&args)) {
        Ok(a) if a.required() => r.ok("authentication is set up: callers need a key or token"),
        Ok(_) => r.note(format!(
            "no authentication: fine on loopback ({}), refused elsewhere unless --insecure-no-auth",
            args.host
        )),
        Err(e) => r.fail(
            format!("authentication: {e:#}"),
            "fix the keys file (`infera keys list --file FILE`) or the JWT flags",
        ),
    }

    // The data directory (batch jobs, quotas).
    if let Some(dir) = &args.data_dir {
        let probe = dir.join(".infera-doctor");
        match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&probe, b"ok")) {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                r.ok(format!("data directory {} is writable", dir.display()));
            }
            Err(e) => r.fail(
                format!("data directory {}: {e}", dir.display()),
                "create it and make it writable by the user infera runs as",
            ),
        }
    } else {
        r.note("batch jobs are off (no --data-dir)");
    }
    drop(rt);

    if r.problems == 0 {
        println!("all checks passed");
        Ok(())
    } else {
        anyhow::bail!(
            "{} problem{} found (see FAIL above)",
            r.problems,
            if r.problems == 1 { "" } else { "s" }
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn versions_come_from_library_names() {
        assert_eq!(
            super::version_of(Path::new("/x/libonnxruntime.so.1.31.1")).as_deref(),
            Some("1.31.1")
        );
        assert_eq!(
            super::version_of(Path::new("/nonexistent/libonnxruntime.so")),
            None
        );
    }
}
