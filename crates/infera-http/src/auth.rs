//! Authentication, roles and limits for everything on the HTTP port (v2, the app API, batch
//! jobs, admin), as one axum middleware in front of the routes. It finds the credential, the
//! endpoint group and the model a request names, asks [`infera_auth::Auth::check`], and answers
//! 401 / 403 / 429 itself; admitted requests carry their [`Identity`] to the handlers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use infera_auth::{Api, Auth, Denied, Group, Identity, Peer, Restrictions};

use crate::json_error;

#[derive(Clone)]
pub struct AuthState {
    pub auth: Arc<Auth>,
    /// Triton's `--http-restricted-api` rules.
    pub restrictions: Arc<Restrictions>,
    /// The model `/predict` uses when the request names none.
    pub default_model: Arc<str>,
}

/// What a request is: its endpoint group, the model it names, whether it counts against
/// the caller's rate and quota, and whether it is a management action for the audit log.
#[derive(Debug, PartialEq)]
pub struct Endpoint {
    pub group: Group,
    /// The API as Triton names it (for `--public-endpoints` and restricted APIs).
    pub api: Api,
    pub model: Option<String>,
    pub counts: bool,
    pub audited: bool,
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// The part after /v2/models/NAME[/versions/V].
fn model_tail<'a>(rest: &[&'a str]) -> Option<&'a str> {
    match rest {
        ["versions", _, tail @ ..] => tail.first().copied(),
        _ => rest.first().copied(),
    }
}

/// The endpoint group of a request, from its method and path (as the router will see them).
pub fn classify(method: &Method, path: &str, query: Option<&str>, default_model: &str) -> Endpoint {
    // Segments on the stack: classifying a request allocates nothing but the model name.
    let mut segments = [""; 8];
    let mut n = 0;
    for seg in path.trim_matches('/').split('/').take(segments.len()) {
        segments[n] = seg;
        n += 1;
    }
    let parts = &segments[..n];
    let e = |group, api, model: Option<&str>, counts, audited| Endpoint {
        group,
        api,
        model: model.map(decode),
        counts,
        audited,
    };
    let query_model = || {
        query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("model="))
            .map(decode)
    };
    match parts {
        [""] | ["index.html"] => e(Group::Public, Api::Page, None, false, false),
        ["health"] | ["ping"] | ["v2", "health", ..] => {
            e(Group::Public, Api::Health, None, false, false)
        }
        ["metrics"] => e(Group::Read, Api::Metrics, None, false, false),
        ["v2"] => e(Group::Read, Api::Metadata, None, false, false),
        ["v2", "models", "stats"] => e(Group::Read, Api::Statistics, None, false, false),
        ["v2", "models", m, rest @ ..] => match model_tail(rest) {
            Some("infer") | Some("generate") | Some("generate_stream") => {
                e(Group::Infer, Api::Inference, Some(m), true, false)
            }
            Some("ready") => e(Group::Read, Api::Health, Some(m), false, false),
            Some("config") => e(Group::Read, Api::ModelConfig, Some(m), false, false),
            Some("stats") => e(Group::Read, Api::Statistics, Some(m), false, false),
            _ => e(Group::Read, Api::Metadata, Some(m), false, false),
        },
        ["v2", "repository", "models", m, _] => {
            e(Group::Operate, Api::ModelRepository, Some(m), false, true)
        }
        ["v2", "repository", ..] => e(Group::Operate, Api::ModelRepository, None, false, false),
        ["v2", "routes", ..] if *method == Method::GET => {
            e(Group::Read, Api::ModelRepository, None, false, false)
        }
        ["v2", "routes", ..] => e(Group::Operate, Api::ModelRepository, None, false, true),
        ["v2", "trace", ..] => e(Group::Read, Api::Trace, None, false, false),
        ["v2", "logging", ..] => e(Group::Read, Api::Logging, None, false, false),
        ["v2", "systemsharedmemory" | "cudasharedmemory", ..] => {
            e(Group::Read, Api::SharedMemory, None, false, false)
        }
        ["v2", "admin", ..] => e(Group::Admin, Api::Admin, None, false, false),
        ["predict"] | ["predict", "batch"] => Endpoint {
            group: Group::Infer,
            api: Api::Inference,
            model: Some(query_model().unwrap_or_else(|| default_model.to_string())),
            counts: true,
            audited: false,
        },
        ["predictions", m, ..] => e(Group::Infer, Api::Inference, Some(m), true, false),
        // Jobs: the model (in the body) and ownership are checked by the handlers.
        ["api", "inference", ..] => e(
            Group::Infer,
            Api::Jobs,
            None,
            *method == Method::POST,
            *method != Method::GET,
        ),
        ["stats"] => e(Group::Read, Api::Statistics, None, false, false),
        // TorchServe's management API (its own port).
        ["models", rest @ ..] if *method == Method::GET => e(
            Group::Read,
            Api::ModelRepository,
            rest.first().copied(),
            false,
            false,
        ),
        ["models", rest @ ..] => e(
            Group::Operate,
            Api::ModelRepository,
            rest.first().copied(),
            false,
            true,
        ),
        _ => e(Group::Read, Api::Metadata, None, false, false),
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The refusal as HTTP: 401 with `WWW-Authenticate`, 403, or 429 with `Retry-After` and
/// the `RateLimit-*` fields.
pub fn denied(d: &Denied) -> Response {
    match d {
        Denied::Unauthenticated(m) => {
            let mut r = json_error(StatusCode::UNAUTHORIZED, m);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"infera\""),
            );
            r
        }
        Denied::Forbidden(m) => json_error(StatusCode::FORBIDDEN, m),
        Denied::Limited(l) => {
            let mut r = json_error(StatusCode::TOO_MANY_REQUESTS, &l.message);
            let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
            let h = r.headers_mut();
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(secs(l.retry_after).max(1)),
            );
            h.insert("ratelimit-limit", HeaderValue::from(l.limit));
            h.insert("ratelimit-remaining", HeaderValue::from(0));
            h.insert("ratelimit-reset", HeaderValue::from(secs(l.reset).max(1)));
            r
        }
    }
}

/// The middleware: `axum::middleware::from_fn_with_state(state, auth::layer)`.
pub async fn layer(State(s): State<AuthState>, mut req: Request, next: Next) -> Response {
    let ep = classify(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        &s.default_model,
    );
    let headers = req.headers();
    let cred = infera_auth::credential(
        header_str(headers, "authorization"),
        header_str(headers, "x-api-key"),
    );
    // The connection's address and client certificate (set by the server's accept loop).
    let peer = req.extensions().get::<Peer>().cloned().unwrap_or_default();
    let group = s.auth.group_of(ep.api, ep.group);
    let checked = s
        .restrictions
        .check(ep.api, |h| header_str(headers, h))
        .and_then(|()| {
            s.auth.check(
                cred,
                &peer,
                group,
                ep.model.as_deref(),
                ep.counts.then_some(1),
            )
        });
    let (who, admission) = match checked {
        Ok(ok) => ok,
        Err(d) => {
            let what = format!("{} {}", req.method(), req.uri().path());
            s.auth
                .audit_denial(cred, &peer, &d, &what, ep.model.as_deref());
            // Read a small body first: an HTTP/2 response sent before the request's body
            // ends resets the stream, which some clients (curl) report as a transport error
            // instead of showing the 401/403/429.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                axum::body::to_bytes(req.into_body(), 64 << 10),
            )
            .await;
            return denied(&d);
        }
    };
    // Only management calls are audited: the string is made for them alone.
    let what = (ep.audited || group == Group::Admin)
        .then(|| format!("{} {}", req.method(), req.uri().path()));
    req.extensions_mut().insert(who.clone());
    req.extensions_mut().insert(s.auth.clone());
    let mut resp = next.run(req).await;
    if let Some(what) = what {
        let from = peer.addr.map(|a| a.ip().to_string()).unwrap_or_default();
        s.auth.audit(
            &who.id,
            &what,
            ep.model.as_deref().unwrap_or(""),
            resp.status().as_str(),
            &from,
        );
    }
    // For the access log, outside this layer.
    resp.extensions_mut().insert(who);
    if let (Some(limit), Some(remaining)) = (admission.limit, admission.remaining) {
        let h = resp.headers_mut();
        h.insert("ratelimit-limit", HeaderValue::from(limit));
        h.insert("ratelimit-remaining", HeaderValue::from(remaining));
    }
    drop(admission);
    resp
}

/// `router` behind [`layer`].
pub fn protect(router: axum::Router, auth: Arc<Auth>, default_model: &str) -> axum::Router {
    protect_with(router, auth, default_model, Restrictions::default())
}

/// `router` behind [`layer`], with Triton's restricted APIs too.
pub fn protect_with(
    router: axum::Router,
    auth: Arc<Auth>,
    default_model: &str,
    restrictions: Restrictions,
) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(
        AuthState {
            auth,
            restrictions: Arc::new(restrictions),
            default_model: Arc::from(default_model),
        },
        layer,
    ))
}

/// Charges `extra` more units (images of a batch request beyond the one the middleware
/// counted) to the caller's rate and quota; a refusal is the 429 to answer.
pub fn charge(extensions: &axum::http::Extensions, extra: u32) -> Option<Response> {
    if extra == 0 {
        return None;
    }
    let (who, auth) = (
        extensions.get::<Identity>()?,
        extensions.get::<Arc<Auth>>()?,
    );
    let d = auth.admit(who, extra).err()?;
    let what = "images of a batch request";
    auth.audit(&who.id, what, "", &format!("429 {}", d.message()), "");
    Some(denied(&d))
}

/// The caller of a request that went through [`layer`] (anonymous on an open server).
pub fn identity(extensions: &axum::http::Extensions) -> Identity {
    extensions
        .get::<Identity>()
        .cloned()
        .unwrap_or_else(Identity::anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_fall_into_their_groups() {
        let c = |m: Method, p: &str, q: Option<&str>| classify(&m, p, q, "fashion_mnist_image");
        assert_eq!(
            c(Method::GET, "/v2/health/ready", None).group,
            Group::Public
        );
        assert_eq!(c(Method::GET, "/ping", None).group, Group::Public);
        assert_eq!(c(Method::GET, "/", None).group, Group::Public);
        let e = c(Method::POST, "/v2/models/iris/versions/1/infer", None);
        assert_eq!(
            (e.group, e.model.as_deref(), e.counts),
            (Group::Infer, Some("iris"), true)
        );
        let e = c(Method::GET, "/v2/models/ir%69s/config", None);
        assert_eq!((e.group, e.model.as_deref()), (Group::Read, Some("iris")));
        let e = c(Method::POST, "/v2/repository/models/iris/unload", None);
        assert_eq!(
            (e.group, e.model.as_deref(), e.audited),
            (Group::Operate, Some("iris"), true)
        );
        assert_eq!(
            c(Method::POST, "/v2/repository/index", None).group,
            Group::Operate
        );
        let e = c(Method::POST, "/predict", Some("model=iris&x=1"));
        assert_eq!((e.group, e.model.as_deref()), (Group::Infer, Some("iris")));
        let e = c(Method::POST, "/predict/batch", None);
        assert_eq!(e.model.as_deref(), Some("fashion_mnist_image"));
        assert_eq!(
            c(Method::POST, "/predictions/iris/2", None)
                .model
                .as_deref(),
            Some("iris")
        );
        assert_eq!(c(Method::GET, "/v2/admin/usage", None).group, Group::Admin);
        let e = c(Method::DELETE, "/api/inference/job/x", None);
        assert_eq!((e.group, e.audited), (Group::Infer, true));
        assert_eq!(c(Method::GET, "/nowhere", None).group, Group::Read);
    }
}
