//! The HTTP port behind API keys: every endpoint group for every role, keys limited to
//! models, rate limits with their headers, the admin usage view.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use infera_auth::Role;
use infera_auth::keys::{KeyEntry, KeyFile};
use infera_testkit::{Repo, chain_config, memory_config};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Rig {
    app: axum::Router,
    keys: std::collections::HashMap<&'static str, String>,
    _dir: tempfile::TempDir,
    _repo: Repo,
}

fn entry(id: &str, role: Role) -> KeyEntry {
    KeyEntry {
        id: id.into(),
        sha256: String::new(),
        role,
        models: None,
        rate: None,
        burst: None,
        quota: None,
        concurrency: None,
        certificate: None,
        created: String::new(),
    }
}

fn rig() -> Rig {
    let repo = Repo::new();
    repo.model("m", &memory_config("m", 4, 8, &[]))
        .model("other", &memory_config("other", 4, 8, &[]))
        .model("pipe", &chain_config("pipe", 4, 8, &["m"]));
    let server = repo.server(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    let mut file = KeyFile::default();
    let mut keys = std::collections::HashMap::new();
    let mut limited = entry("shop", Role::Infer);
    limited.models = Some(vec!["m".into()]);
    let mut slow = entry("slow", Role::Infer);
    slow.rate = Some("1/m".into());
    slow.burst = Some(2);
    for (name, e) in [
        ("reader", entry("reader", Role::Reader)),
        ("infer", entry("infer", Role::Infer)),
        ("shop", limited),
        ("slow", slow),
        ("ops", entry("ops", Role::Operator)),
        ("admin", entry("admin", Role::Admin)),
    ] {
        keys.insert(name, file.create(e).unwrap());
    }
    file.save(&path).unwrap();
    let auth = infera_auth::Auth::with_keys(&path, None, None).unwrap();
    let app = infera_http::auth::protect(infera_http::router(server, 1 << 20), auth, "pipe");
    Rig {
        app,
        keys,
        _dir: dir,
        _repo: repo,
    }
}

async fn call(rig: &Rig, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let r = rig.app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn req(method: &str, path: &str, key: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let body = if path.ends_with("/infer") {
        json!({"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).to_string()
    } else {
        String::new()
    };
    b.body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn every_group_answers_each_role_as_its_role_allows() {
    let rig = rig();
    let groups: &[(&str, &str, [StatusCode; 5])] = {
        use StatusCode as S;
        // (method, path, [no key, reader, infer, operator, admin])
        &[
            ("GET", "/v2/health/ready", [S::OK; 5]),
            (
                "GET",
                "/v2/models/m",
                [S::UNAUTHORIZED, S::OK, S::OK, S::OK, S::OK],
            ),
            (
                "GET",
                "/v2/models/m/config",
                [S::UNAUTHORIZED, S::OK, S::OK, S::OK, S::OK],
            ),
            (
                "GET",
                "/v2/models/stats",
                [S::UNAUTHORIZED, S::OK, S::OK, S::OK, S::OK],
            ),
            (
                "POST",
                "/v2/models/m/infer",
                [S::UNAUTHORIZED, S::FORBIDDEN, S::OK, S::OK, S::OK],
            ),
            (
                "POST",
                "/v2/models/pipe/infer",
                [S::UNAUTHORIZED, S::FORBIDDEN, S::OK, S::OK, S::OK],
            ),
            (
                "POST",
                "/v2/repository/index",
                [S::UNAUTHORIZED, S::FORBIDDEN, S::FORBIDDEN, S::OK, S::OK],
            ),
            (
                "POST",
                "/v2/repository/models/other/load",
                [S::UNAUTHORIZED, S::FORBIDDEN, S::FORBIDDEN, S::OK, S::OK],
            ),
            (
                "GET",
                "/v2/admin/usage",
                [
                    S::UNAUTHORIZED,
                    S::FORBIDDEN,
                    S::FORBIDDEN,
                    S::FORBIDDEN,
                    S::OK,
                ],
            ),
        ]
    };
    for (method, path, want) in groups {
        for (i, who) in [
            None,
            Some("reader"),
            Some("infer"),
            Some("ops"),
            Some("admin"),
        ]
        .iter()
        .enumerate()
        {
            let key = who.map(|w| rig.keys[w].as_str());
            let (status, headers, body) = call(&rig, req(method, path, key)).await;
            assert_eq!(status, want[i], "{method} {path} as {who:?}: {body}");
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer realm=\"infera\"");
                assert!(
                    body["error"].as_str().unwrap().contains("API key"),
                    "{body}"
                );
            }
            if status == StatusCode::FORBIDDEN {
                assert!(body["error"].as_str().unwrap().contains("role"), "{body}");
            }
        }
    }
}

#[tokio::test]
async fn keys_limited_to_models_and_other_ways_to_present_them() {
    let rig = rig();
    let shop = rig.keys["shop"].as_str();
    assert_eq!(
        call(&rig, req("POST", "/v2/models/m/infer", Some(shop)))
            .await
            .0,
        StatusCode::OK
    );
    let (status, _, body) = call(&rig, req("POST", "/v2/models/other/infer", Some(shop))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("may not use model 'other'")
    );
    assert_eq!(
        call(&rig, req("GET", "/v2/models/ot%68er", Some(shop)))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let via_header = Request::get("/v2/models/m")
        .header("x-api-key", shop)
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&rig, via_header).await.0, StatusCode::OK);
    for bad in ["inf_not_a_key", &shop[..shop.len() - 1], ""] {
        assert_eq!(
            call(&rig, req("GET", "/v2/models/m", Some(bad))).await.0,
            StatusCode::UNAUTHORIZED,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_rate_limited_key_gets_429_with_when_to_come_back() {
    let rig = rig();
    let slow = rig.keys["slow"].as_str();
    for _ in 0..2 {
        let (status, headers, _) = call(&rig, req("POST", "/v2/models/m/infer", Some(slow))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["ratelimit-limit"], "2");
    }
    let (status, headers, body) = call(&rig, req("POST", "/v2/models/m/infer", Some(slow))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let retry: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert!(body["error"].as_str().unwrap().contains("rate limit"));
    // Metadata does not count against the rate.
    assert_eq!(
        call(&rig, req("GET", "/v2/models/m", Some(slow))).await.0,
        StatusCode::OK
    );
    let admin = rig.keys["admin"].as_str();
    let (_, _, usage) = call(&rig, req("GET", "/v2/admin/usage", Some(admin))).await;
    let row = usage["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "slow")
        .unwrap()
        .clone();
    assert_eq!(
        (row["allowed"].as_u64(), row["refused"].as_u64()),
        (Some(2), Some(1)),
        "{usage}"
    );
    assert!(!usage.to_string().contains(slow), "usage never shows keys");
}

#[tokio::test]
async fn an_open_router_needs_nothing() {
    let repo = Repo::new();
    repo.model("m", &memory_config("m", 4, 8, &[]));
    let app = infera_http::auth::protect(
        infera_http::router(repo.server(vec![]), 1 << 20),
        infera_auth::Auth::open(None),
        "m",
    );
    let r = app
        .oneshot(req("POST", "/v2/models/m/infer", None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let _ = Arc::new(());
}

#[tokio::test]
async fn triton_restricted_apis_need_their_header_even_on_an_open_server() {
    let repo = Repo::new();
    repo.model("m", &memory_config("m", 4, 8, &[]));
    let restrictions =
        infera_auth::Restrictions::parse(&["model-repository,statistics:admin-key=s3cret".into()])
            .unwrap();
    let app = infera_http::auth::protect_with(
        infera_http::router(repo.server(vec![]), 1 << 20),
        infera_auth::Auth::open(None),
        "m",
        restrictions,
    );
    let send = |path: &'static str, method: &'static str, key: Option<&'static str>| {
        let app = app.clone();
        async move {
            let mut b = Request::builder()
                .method(method)
                .uri(path)
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(k) = key {
                b = b.header("admin-key", k);
            }
            let r = app
                .oneshot(b.body(Body::from("{}")).unwrap())
                .await
                .unwrap();
            let status = r.status();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (s, body) = send("/v2/repository/index", "POST", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        body.contains("This API is restricted, expecting header 'admin-key'"),
        "{body}"
    );
    assert_eq!(
        send("/v2/repository/index", "POST", Some("wrong")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send("/v2/repository/index", "POST", Some("s3cret")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send("/v2/models/m/stats", "GET", None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send("/v2/models/m/versions/1/stats", "GET", None).await.0,
        StatusCode::FORBIDDEN
    );
    // Unrestricted APIs are untouched.
    assert_eq!(
        send("/v2/models/m/config", "GET", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send("/v2/health/ready", "GET", None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn public_endpoints_can_be_closed_or_opened() {
    let repo = Repo::new();
    repo.model("m", &memory_config("m", 4, 8, &[]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    let mut file = KeyFile::default();
    let key = file.create(entry("reader", Role::Reader)).unwrap();
    file.save(&path).unwrap();
    let app = |public: &str| {
        let auth = infera_auth::Auth::new(infera_auth::AuthOptions {
            keys_file: Some(path.clone()),
            public: Some(infera_auth::ApiSet::parse(public).unwrap()),
            ..Default::default()
        })
        .unwrap();
        infera_http::auth::protect(infera_http::router(repo.server(vec![]), 1 << 20), auth, "m")
    };
    let status = |app: axum::Router, path: &'static str, key: Option<String>| async move {
        let mut b = Request::builder().uri(path);
        if let Some(k) = key {
            b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        app.oneshot(b.body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    };
    let closed = app("none");
    assert_eq!(
        status(closed.clone(), "/v2/health/ready", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(closed.clone(), "/v2/health/ready", Some(key.clone())).await,
        StatusCode::OK
    );
    let open = app("health,model-config");
    assert_eq!(
        status(open.clone(), "/v2/health/live", None).await,
        StatusCode::OK
    );
    assert_eq!(
        status(open.clone(), "/v2/models/m/config", None).await,
        StatusCode::OK
    );
    assert_eq!(
        status(open.clone(), "/v2/models/m", None).await,
        StatusCode::UNAUTHORIZED
    );
}
