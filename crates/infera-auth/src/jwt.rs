//! JWT bearer tokens (OAuth2 access tokens from an identity provider) as identities.
//!
//! Keys come from a JWKS (a file or an `https://` URL, RS/PS/ES/EdDSA) or from a shared secret
//! file (HS256). Which algorithms a token may use follows from the key, never from the
//! token alone: a token signed with HS256 cannot be checked against an RSA public key used as
//! an HMAC secret (the classic confusion), `alg: none` does not parse, and a JWKS may not hold
//! symmetric keys. The role comes from a claim (`roles` by default; a dotted path such as
//! `realm_access.roles` reaches into nested claims) and the models, optionally, from another.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{AuthError, Denied, Identity, Role};

/// A JWKS document larger than this is refused (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 1 << 20;
/// A token longer than this is refused before it is parsed.
const MAX_TOKEN_BYTES: usize = 16 << 10;
/// Verified tokens remembered, so a client reusing its token costs a hash, not a signature check.
const CACHE_ENTRIES: usize = 4096;
/// An unknown key id asks for a fresh key set at most this often.
const MIN_REFRESH: Duration = Duration::from_secs(5);

/// Where the verification keys come from.
#[derive(Debug, Clone)]
pub enum JwtKeys {
    /// A JWKS file, re-read when it changes.
    JwksFile(PathBuf),
    /// A JWKS URL, fetched at start, every refresh period, and when a token names an unknown key.
    JwksUrl(String),
    /// A file holding the HS256 shared secret (its bytes, surrounding whitespace trimmed).
    Secret(PathBuf),
}

#[derive(Debug, Clone)]
pub struct JwtOptions {
    pub keys: JwtKeys,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Claim holding the role(s): a string, a list, or a space-separated string; dotted path.
    pub roles_claim: String,
    /// Claim holding the models the caller may use (absent: every model); dotted path.
    pub models_claim: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// How often a JWKS URL is fetched again.
    pub refresh: Duration,
}

struct VerifyKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// The keys in use and a cache of tokens they verified.
#[derive(Default)]
struct KeySet {
    keys: Vec<VerifyKey>,
}

pub struct Jwt {
    options: JwtOptions,
    keys: RwLock<Arc<KeySet>>,
    cache: Mutex<HashMap<[u8; 32], (Identity, u64)>>,
    wanted: AtomicBool,
    wake: Notify,
    last_fetch: Mutex<Option<Instant>>,
}

/// A credential shaped like a JWT (three base64url parts), as opposed to an API key.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.bytes().filter(|&b| b == b'.').count() == 2
}

fn config(msg: impl Into<String>) -> AuthError {
    AuthError::Config(msg.into())
}

fn parse_jwks(bytes: &[u8], from: &str) -> Result<KeySet, AuthError> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(config(format!("the JWKS at {from} is over 1 MiB")));
    }
    let set: JwkSet = serde_json::from_slice(bytes)
        .map_err(|e| config(format!("the JWKS at {from} is not a JSON Web Key Set: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let name = kid.as_deref().unwrap_or("(no kid)");
        let mut algorithms = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => {
                    warn!(kid = name, "JWKS key on an unsupported curve skipped");
                    continue;
                }
            },
            AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
            AlgorithmParameters::OctetKey(_) => {
                warn!(
                    kid = name,
                    "symmetric (oct) key in a JWKS skipped: use --jwt-secret-file for HS256"
                );
                continue;
            }
        };
        if let Some(alg) = jwk.common.key_algorithm {
            // KeyAlgorithm's names are the JOSE names Algorithm parses (RSA-OAEP etc. are not).
            let Ok(alg) = format!("{alg:?}").parse::<Algorithm>() else {
                warn!(kid = name, "JWKS key with an unsupported alg skipped");
                continue;
            };
            if !algorithms.contains(&alg) {
                warn!(
                    kid = name,
                    "JWKS key whose alg does not fit its key type skipped"
                );
                continue;
            }
            algorithms = vec![alg];
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(VerifyKey {
                kid,
                algorithms,
                key,
            }),
            Err(e) => warn!(kid = name, error = %e, "unusable JWKS key skipped"),
        }
    }
    if keys.is_empty() {
        return Err(config(format!("the JWKS at {from} holds no usable key")));
    }
    Ok(KeySet { keys })
}

fn secret_keys(path: &std::path::Path) -> Result<KeySet, AuthError> {
    let bytes = std::fs::read(path).map_err(|e| {
        config(format!(
            "cannot read --jwt-secret-file {}: {e}",
            path.display()
        ))
    })?;
    let secret = bytes.trim_ascii();
    if secret.len() < 32 {
        return Err(config(format!(
            "the JWT secret in {} is {} bytes; HS256 needs at least 32 (e.g. `openssl rand -hex 32`)",
            path.display(),
            secret.len()
        )));
    }
    Ok(KeySet {
        keys: vec![VerifyKey {
            kid: None,
            algorithms: vec![Algorithm::HS256],
            key: DecodingKey::from_secret(secret),
        }],
    })
}

/// A claim by dotted path (`realm_access.roles`).
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

/// The strings of a claim: a list, or one string of space- or comma-separated words.
fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => s.split([' ', ',']).filter(|w| !w.is_empty()).collect(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

impl Jwt {
    /// Loads the keys once (a JWKS URL is fetched here) so a bad setting stops the start.
    pub async fn new(options: JwtOptions) -> Result<Arc<Jwt>, AuthError> {
        let jwt = Arc::new(Jwt {
            options,
            keys: RwLock::new(Arc::default()),
            cache: Mutex::new(HashMap::new()),
            wanted: AtomicBool::new(false),
            wake: Notify::new(),
            last_fetch: Mutex::new(None),
        });
        let set = jwt.load().await?;
        jwt.install(set);
        Ok(jwt)
    }

    /// Builds from keys already in hand (tests, and callers that load keys themselves).
    pub fn with_jwks(options: JwtOptions, jwks: &[u8]) -> Result<Arc<Jwt>, AuthError> {
        let set = parse_jwks(jwks, "the given bytes")?;
        let jwt = Arc::new(Jwt {
            options,
            keys: RwLock::new(Arc::new(set)),
            cache: Mutex::new(HashMap::new()),
            wanted: AtomicBool::new(false),
            wake: Notify::new(),
            last_fetch: Mutex::new(None),
        });
        Ok(jwt)
    }

    fn install(&self, set: KeySet) {
        *self.keys.write() = Arc::new(set);
        // Tokens verified by keys that may be gone must be checked again.
        self.cache.lock().clear();
    }

    async fn load(&self) -> Result<KeySet, AuthError> {
        *self.last_fetch.lock() = Some(Instant::now());
        match &self.options.keys {
            JwtKeys::Secret(path) => secret_keys(path),
            JwtKeys::JwksFile(path) => {
                let bytes = tokio::fs::read(path).await.map_err(|e| {
                    config(format!("cannot read --jwt-jwks {}: {e}", path.display()))
                })?;
                parse_jwks(&bytes, &path.display().to_string())
            }
            JwtKeys::JwksUrl(url) => {
                let bytes = fetch(url).await?;
                parse_jwks(&bytes, url)
            }
        }
    }

    /// Keeps the keys fresh: a JWKS file is polled for changes, a JWKS URL fetched every
    /// refresh period and soon after a token names a key id it does not know (rotation).
    pub async fn watch(self: Arc<Self>) {
        let (every, url) = match &self.options.keys {
            JwtKeys::Secret(_) => return,
            JwtKeys::JwksFile(_) => (Duration::from_secs(2), false),
            JwtKeys::JwksUrl(_) => (self.options.refresh, true),
        };
        let mut stamp = match &self.options.keys {
            JwtKeys::JwksFile(p) => crate::stamp(p),
            _ => None,
        };
        let mut next = Instant::now() + every;
        loop {
            let wake = self.wake.notified();
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = wake => {}
            }
            let asked = self.wanted.swap(false, Ordering::Relaxed);
            if Instant::now() < next && !asked {
                continue;
            }
            if asked {
                // Rate-limit fetches that clients can trigger with made-up key ids.
                let since = self.last_fetch.lock().map(|t| t.elapsed());
                if let Some(since) = since
                    && since < MIN_REFRESH
                {
                    tokio::time::sleep(MIN_REFRESH - since).await;
                }
            }
            next = Instant::now() + every;
            if let JwtKeys::JwksFile(p) = &self.options.keys {
                let now = crate::stamp(p);
                if now == stamp && !asked {
                    continue;
                }
                stamp = now;
            }
            match self.load().await {
                Ok(set) => {
                    let n = set.keys.len();
                    self.install(set);
                    info!(keys = n, url, "JWT verification keys refreshed");
                }
                Err(e) => {
                    warn!(error = %e, "cannot refresh the JWT keys; the keys loaded before stay")
                }
            }
        }
    }

    /// The identity a valid token stands for.
    pub fn verify(&self, token: &str) -> Result<Identity, Denied> {
        let bad =
            |why: &str| Denied::Unauthenticated(format!("the bearer token is not valid: {why}"));
        if token.len() > MAX_TOKEN_BYTES {
            return Err(bad("it is over 16 KiB"));
        }
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| bad("digest"))?;
        let now = jsonwebtoken::get_current_timestamp();
        if let Some((who, exp)) = self.cache.lock().get(&digest)
            && now <= exp + self.options.leeway_secs
        {
            return Ok(who.clone());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(_) | ErrorKind::InvalidAlgorithmName => {
                bad("its algorithm is not accepted (alg: none never is)")
            }
            _ => bad("it is not a well-formed JWT"),
        })?;
        let set = self.keys.read().clone();
        let candidates: Vec<&VerifyKey> = set
            .keys
            .iter()
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            self.wanted.store(true, Ordering::Relaxed);
            self.wake.notify_one();
            return Err(bad(
                "it names a key id the server does not know (keys are refreshed; retry shortly if they were just rotated)",
            ));
        }
        let mut last = bad("its signature does not verify");
        for k in candidates {
            if !k.algorithms.contains(&header.alg) {
                last = bad(&format!(
                    "its algorithm {:?} does not fit the server's key",
                    header.alg
                ));
                continue;
            }
            let mut v = Validation::new(header.alg);
            v.algorithms = vec![header.alg];
            v.leeway = self.options.leeway_secs;
            v.validate_nbf = true;
            let mut required = vec!["exp", "sub"];
            if let Some(iss) = &self.options.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            match &self.options.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    required.push("aud");
                }
                None => v.validate_aud = false,
            }
            v.set_required_spec_claims(&required);
            match jsonwebtoken::decode::<Value>(token, &k.key, &v) {
                Ok(data) => {
                    let who = self.identity(&data.claims)?;
                    let exp = data.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
                    let mut cache = self.cache.lock();
                    if cache.len() >= CACHE_ENTRIES {
                        cache.clear();
                    }
                    cache.insert(digest, (who.clone(), exp));
                    return Ok(who);
                }
                Err(e) => {
                    last = bad(match e.kind() {
                        ErrorKind::ExpiredSignature => "it has expired",
                        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)",
                        ErrorKind::InvalidAudience => "it is for another audience",
                        ErrorKind::InvalidIssuer => "it is from another issuer",
                        ErrorKind::MissingRequiredClaim(_) => {
                            "it lacks a required claim (exp, sub, and iss / aud when configured)"
                        }
                        ErrorKind::InvalidAlgorithm => {
                            "its algorithm does not fit the server's key"
                        }
                        _ => "its signature does not verify",
                    });
                }
            }
        }
        Err(last)
    }

    fn identity(&self, claims: &Value) -> Result<Identity, Denied> {
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        let role = claim(claims, &self.options.roles_claim)
            .map(strings)
            .unwrap_or_default()
            .into_iter()
            .filter_map(Role::parse)
            .max()
            .ok_or_else(|| {
                Denied::Forbidden(format!(
                    "the token of '{sub}' carries no known role (reader, infer, operator, admin) in the claim '{}'",
                    self.options.roles_claim
                ))
            })?;
        let models = self.options.models_claim.as_ref().map(|c| {
            let set: HashSet<String> = claim(claims, c)
                .map(strings)
                .unwrap_or_default()
                .into_iter()
                .map(str::to_string)
                .collect();
            Arc::new(set)
        });
        Ok(Identity::token(sub, role, models))
    }
}

/// Fetches a JWKS over HTTP(S), bounded in time and size.
async fn fetch(url: &str) -> Result<Vec<u8>, AuthError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| config(format!("cannot make an HTTP client: {e}")))?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| config(format!("cannot fetch the JWKS at {url}: {e}")))?;
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| config(format!("cannot fetch the JWKS at {url}: {e}")))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(config(format!("the JWKS at {url} is over 1 MiB")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
