//! TLS on every port with rustls (TLS 1.2 and 1.3 only): the certificate and key are read
//! again when their files change, so rotation needs no restart; with `--tls-client-ca`,
//! client certificates are verified against it (mTLS) and their names (subject CN, SANs)
//! can stand for an API key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// With a client CA: refuse connections without a valid client certificate.
    pub client_auth_required: bool,
}

/// The certificate in use, swapped when the files change.
#[derive(Debug)]
struct Rotating {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Rotating {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

pub struct Tls {
    /// HTTP/1.1 and HTTP/2 (the HTTP and metrics ports).
    pub http: TlsAcceptor,
    /// HTTP/2 only (gRPC).
    pub grpc: TlsAcceptor,
    rotating: Arc<Rotating>,
    options: TlsOptions,
    provider: Arc<CryptoProvider>,
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a PEM private key from {}", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .with_context(|| format!("{} is not a usable private key", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().with_context(|| {
        format!(
            "the key {} does not belong to the certificate {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(certified)
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Tls {
    pub fn new(options: TlsOptions) -> anyhow::Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let rotating = Arc::new(Rotating {
            current: ArcSwap::from_pointee(load(&options.cert, &options.key, &provider)?),
        });
        let verifier = match &options.client_ca {
            None => None,
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("cannot read the client CA {}", ca.display()))?
                {
                    roots
                        .add(c.with_context(|| {
                            format!("{} is not a PEM certificate", ca.display())
                        })?)
                        .with_context(|| {
                            format!("{} is not a usable CA certificate", ca.display())
                        })?;
                }
                let b =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let b = if options.client_auth_required {
                    b
                } else {
                    b.allow_unauthenticated()
                };
                Some(b.build().context("cannot use the client CA")?)
            }
        };
        let config = |alpn: &[&[u8]]| -> anyhow::Result<TlsAcceptor> {
            let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
            let builder = match &verifier {
                Some(v) => builder.with_client_cert_verifier(v.clone()),
                None => builder.with_no_client_auth(),
            };
            let mut cfg = builder.with_cert_resolver(rotating.clone());
            cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(TlsAcceptor::from(Arc::new(cfg)))
        };
        Ok(Tls {
            http: config(&[b"h2", b"http/1.1"])?,
            grpc: config(&[b"h2"])?,
            rotating,
            options,
            provider,
        })
    }

    /// Polls the certificate and key files; when they change and load, new connections get
    /// the new certificate (existing ones keep theirs). A half-written pair is retried.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let files = |t: &Tls| (stamp(&t.options.cert), stamp(&t.options.key));
        let mut seen = files(&self);
        loop {
            tokio::time::sleep(every).await;
            let now = files(&self);
            if now == seen {
                continue;
            }
            match load(&self.options.cert, &self.options.key, &self.provider) {
                Ok(k) => {
                    self.rotating.current.store(Arc::new(k));
                    seen = now;
                    info!(cert = %self.options.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "the TLS files changed but cannot be used yet; keeping the current certificate")
                }
            }
        }
    }
}

/// The names a client certificate stands for: its subject CNs and its DNS, URI and e-mail SANs.
pub fn client_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(String::from))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                    names.push((*s).to_string())
                }
                _ => {}
            }
        }
    }
    names
}
