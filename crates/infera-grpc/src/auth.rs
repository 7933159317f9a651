//! Authentication and roles for the gRPC service, as a tower layer in front of it
//! (`Server::builder().layer(AuthLayer::new(auth))`): the credential is the `authorization`
//! (`Bearer KEY`) or `x-api-key` metadata, the group comes from the method. The model a call
//! names is in its message, so the handlers check it (and, for inference, count it against
//! the caller's limits) with [`allowed`] and [`admit`].

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use infera_auth::{Admission, Auth, Denied, Group, Identity, Peer};
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
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
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
        let group = group_of(&method);
        let cred =
            infera_auth::credential(metadata(&req, "authorization"), metadata(&req, "x-api-key"));
        // tonic puts the connection's info (the server's accept loop makes it a Peer) here.
        let peer = req.extensions().get::<Peer>().cloned().unwrap_or_default();
        match self.auth.check(cred, &peer, group, None, None) {
            Err(d) => {
                self.auth
                    .audit_denial(cred, &peer, &d, &format!("gRPC {method}"), None);
                let resp = status_of(&d).into_http::<R>();
                Box::pin(async move { Ok(resp) })
            }
            Ok((who, _)) => {
                if group == Group::Operate {
                    let from = peer.addr.map(|a| a.ip().to_string()).unwrap_or_default();
                    self.auth
                        .audit(&who.id, &format!("gRPC {method}"), "", "called", &from);
                }
                req.extensions_mut().insert(who);
                req.extensions_mut().insert(self.auth.clone());
                // The clone that was polled ready serves this call (tower's rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(req).await })
            }
        }
    }
}
