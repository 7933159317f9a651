//! Authentication and roles for the gRPC service, as a tower layer in front of it
//! (`Server::builder().layer(AuthLayer::new(auth))`): the credential is the `authorization`
//! (`Bearer KEY`) or `x-api-key` metadata, the group comes from the method. The model a call
//! names is in its message, so the handlers check it (and, for inference, count it against
//! the caller's limits) with [`allowed`] and [`admit`].

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use infera_auth::{Admission, Api, Auth, Denied, Group, Identity, Peer, Restrictions};
use tonic::Status;

/// The group of a method of `inference.GRPCInferenceService`.
pub fn group_of(method: &str) -> Group {
    match method {
        "ServerLive" | "ServerReady" => Group::Public,
        "ServerMetadata" | "ModelReady" | "ModelMetadata" | "ModelConfig" | "ModelStatistics" => {
            Group::Read
        }
        "ModelInfer" | "ModelStreamInfer" => Group::Infer,
        _ => Group::Operate,
    }
}

/// The API of a method, as Triton's `--grpc-restricted-protocol` names it.
pub fn api_of(method: &str) -> Api {
    match method {
        "ServerLive" | "ServerReady" | "ModelReady" => Api::Health,
        "ServerMetadata" | "ModelMetadata" => Api::Metadata,
        "ModelInfer" | "ModelStreamInfer" => Api::Inference,
        "ModelConfig" => Api::ModelConfig,
        "ModelStatistics" => Api::Statistics,
        "RepositoryIndex" | "RepositoryModelLoad" | "RepositoryModelUnload" => Api::ModelRepository,
        m if m.contains("SharedMemory") => Api::SharedMemory,
        "TraceSetting" => Api::Trace,
        "LogSettings" => Api::Logging,
        _ => Api::Admin,
    }
}

/// A refusal as a gRPC status: UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED.
pub fn status_of(d: &Denied) -> Status {
    match d {
        Denied::Unauthenticated(m) => Status::unauthenticated(m.clone()),
        Denied::Forbidden(m) => Status::permission_denied(m.clone()),
        Denied::Limited(l) => {
            let mut s = Status::resource_exhausted(l.message.clone());
            let secs = l.retry_after.as_secs() + u64::from(l.retry_after.subsec_nanos() > 0);
            if let Ok(v) = secs.max(1).to_string().parse() {
                s.metadata_mut().insert("retry-after", v);
            }
            s
        }
    }
}

/// Whether the caller of a call may use `model` (PERMISSION_DENIED if not).
pub fn allowed(ext: &tonic::Extensions, model: &str) -> Result<(), Status> {
    match ext.get::<Identity>() {
        Some(who) if !who.may_use(model) => Err(Status::permission_denied(format!(
            "the key '{}' may not use model '{model}'",
            who.id
        ))),
        _ => Ok(()),
    }
}

/// Counts one inference against the caller's rate, concurrency and quota.
pub fn admit(ext: &tonic::Extensions) -> Result<Admission, Status> {
    match (ext.get::<Identity>(), ext.get::<Arc<Auth>>()) {
        (Some(who), Some(auth)) => auth.admit(who, 1).map_err(|d| status_of(&d)),
        _ => Ok(Admission::default()),
    }
}

#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
    restrictions: Arc<Restrictions>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>) -> AuthLayer {
        AuthLayer {
            auth,
            restrictions: Arc::default(),
        }
    }

    /// With Triton's `--grpc-restricted-protocol` rules.
    pub fn restricted(mut self, restrictions: Restrictions) -> AuthLayer {
        self.restrictions = Arc::new(restrictions);
        self
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
            restrictions: self.restrictions.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
    restrictions: Arc<Restrictions>,
}

fn metadata<'a, B>(req: &'a http::Request<B>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let api = api_of(&method);
        let group = self.auth.group_of(api, group_of(&method));
        let cred =
            infera_auth::credential(metadata(&req, "authorization"), metadata(&req, "x-api-key"));
        // tonic puts the connection's info (the server's accept loop makes it a Peer) here.
        let peer = req.extensions().get::<Peer>().cloned().unwrap_or_default();
        let checked = self
            .restrictions
            .check(api, |h| metadata(&req, h))
            .and_then(|()| self.auth.check(cred, &peer, group, None, None));
        match checked {
            Err(d) => {
                self.auth
                    .audit_denial(cred, &peer, &d, &format!("gRPC {method}"), None);
                let resp = status_of(&d).into_http::<R>();
                Box::pin(async move { Ok(resp) })
            }
            Ok((who, _)) => {
                let audited = matches!(group, Group::Operate | Group::Admin);
                let id = who.id.clone();
                req.extensions_mut().insert(who);
                req.extensions_mut().insert(self.auth.clone());
                // The clone that was polled ready serves this call (tower's rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                if !audited {
                    return Box::pin(async move { inner.call(req).await });
                }
                let auth = self.auth.clone();
                let from = peer.addr.map(|a| a.ip().to_string()).unwrap_or_default();
                Box::pin(async move {
                    let resp = inner.call(req).await?;
                    // A handler's error comes back trailers-only, its status in the headers.
                    let outcome = match resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                    {
                        None | Some("0") => "OK".to_string(),
                        Some(code) => {
                            format!("{:?}", tonic::Code::from_i32(code.parse().unwrap_or(2)))
                        }
                    };
                    auth.audit(&id, &format!("gRPC {method}"), "", &outcome, &from);
                    Ok(resp)
                })
            }
        }
    }
}
