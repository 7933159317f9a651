//! TorchServe's management API over the router: TorchServe's status codes and JSON shapes,
//! sources confined to the model store and the URL allow-list, and a scale-down under load
//! that fails nothing.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use infera_app::management::{SourcePolicy, allowed_urls, router};
use infera_core::repository::Runner;
use infera_core::request::InferRequest;
use infera_core::{InferenceServer, Tensor};
use infera_testkit::{Repo, memory_config};
use serde_json::Value;
use tower::ServiceExt;

struct World {
    repo: Repo,
    server: Arc<InferenceServer>,
    app: axum::Router,
    store: std::path::PathBuf,
}

fn world() -> World {
    let repo = Repo::new();
    repo.model(
        "served",
        &(memory_config("served", 4, 8, &[("run_ms", "5")]) + "version_policy: { all { } }\n"),
    );
    std::fs::create_dir_all(repo.path().join("served/1")).unwrap();
    std::fs::create_dir_all(repo.path().join("served/2")).unwrap();
    let store = repo.outside().join("store");
    // A model folder and a .tar.gz of one in the model store.
    let folder = store.join("doubler");
    std::fs::create_dir_all(folder.join("1")).unwrap();
    std::fs::write(
        folder.join("config.pbtxt"),
        memory_config("doubler", 4, 8, &[("scale", "2")]),
    )
    .unwrap();
    let tgz = std::fs::File::create(store.join("tripler.tar.gz")).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        tgz,
        flate2::Compression::fast(),
    ));
    let cfg = memory_config("tripler", 4, 8, &[("scale", "3")]);
    let mut h = tar::Header::new_gnu();
    h.set_size(cfg.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "tripler/config.pbtxt", cfg.as_bytes())
        .unwrap();
    let mut d = tar::Header::new_gnu();
    d.set_entry_type(tar::EntryType::Directory);
    d.set_size(0);
    d.set_mode(0o755);
    d.set_cksum();
    tar.append_data(&mut d, "tripler/1/", std::io::empty())
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    // An archive that climbs out of where it is unpacked.
    let evil = std::fs::File::create(store.join("evil.tar.gz")).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        evil,
        flate2::Compression::fast(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    let name = b"../../escaped.txt";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    tar.append(&h, &b"hi"[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    std::fs::write(repo.outside().join("secret.onnx"), b"not for you").unwrap();

    let server = repo.server(vec![]);
    let app = router(
        server.clone(),
        SourcePolicy {
            model_store: Some(std::fs::canonicalize(&store).unwrap()),
            allowed_urls: allowed_urls(&["https://models\\.example\\.com/.*".into()]).unwrap(),
            max_bytes: 1 << 20,
        },
    );
    World {
        repo,
        server,
        app,
        store,
    }
}

async fn call(app: &axum::Router, method: Method, uri: &str) -> (StatusCode, Value) {
    let r = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn infer(server: &InferenceServer, model: &str, x: f32) -> Result<(String, f32), String> {
    let t = Tensor::from_slice(vec![1, 4], &[x; 4]).unwrap();
    let req = InferRequest::single(model, None, "INPUT", t, "OUTPUT", 0);
    let r = server.infer(req).await.map_err(|e| e.message)?;
    let y = r.outputs[0].tensor.to_vec::<f32>().unwrap()[0];
    Ok((r.model_version, y))
}

fn instances(server: &InferenceServer, model: &str) -> Vec<usize> {
    let m = server.repository.get(model).unwrap();
    m.versions
        .values()
        .map(|v| match &v.runner {
            Runner::Scheduler(s) => s.instances(),
            Runner::Ensemble(_) => 0,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_describe_list_and_unregister_as_torchserve_does() {
    let w = world();
    let (s, b) = call(
        &w.app,
        Method::POST,
        "/models?url=doubler&synchronous=true&initial_workers=2",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["status"],
        "Model \"doubler\" Version: 1 registered with 2 initial workers"
    );
    assert_eq!(
        infer(&w.server, "doubler", 1.0).await.unwrap(),
        ("1".into(), 2.0)
    );
    assert!(w.repo.path().join("doubler/config.pbtxt").is_file());

    // A .tar.gz with a top folder, registered in the background: 202, then ready.
    let (s, b) = call(
        &w.app,
        Method::POST,
        "/models?url=tripler.tar.gz&model_name=tripler3",
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["status"], "Processing worker updates...");
    for _ in 0..200 {
        if w.server.model_ready("tripler3", None) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(infer(&w.server, "tripler3", 1.0).await.unwrap().1, 3.0);

    // The same name again: 409.
    let (s, b) = call(&w.app, Method::POST, "/models?url=doubler&synchronous=true").await;
    assert_eq!(
        (s, b["code"].as_u64(), b["type"].as_str()),
        (
            StatusCode::CONFLICT,
            Some(409),
            Some("ConflictStatusException")
        )
    );

    // List, paginated as TorchServe's.
    let (s, b) = call(&w.app, Method::GET, "/models?limit=2").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["models"].as_array().unwrap().len(), 2);
    assert_eq!(b["models"][0]["modelName"], "doubler");
    assert_eq!(b["nextPageToken"], "2");
    let (_, b) = call(&w.app, Method::GET, "/models?limit=2&next_page_token=2").await;
    let rest: Vec<&str> = b["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["modelName"].as_str().unwrap())
        .collect();
    assert_eq!(rest, ["tripler3"]);
    assert!(b.get("nextPageToken").is_none());

    // Describe: a list, one entry per version; workers per instance.
    let (s, b) = call(&w.app, Method::GET, "/models/doubler").await;
    assert_eq!(s, StatusCode::OK);
    let d = &b[0];
    assert_eq!(
        (d["modelName"].as_str(), d["modelVersion"].as_str()),
        (Some("doubler"), Some("1"))
    );
    assert_eq!(
        (d["minWorkers"].as_u64(), d["batchSize"].as_u64()),
        (Some(2), Some(8))
    );
    assert_eq!(d["workers"].as_array().unwrap().len(), 2);
    assert_eq!(d["workers"][0]["status"], "READY");
    let (_, all) = call(&w.app, Method::GET, "/models/served/all").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, one) = call(&w.app, Method::GET, "/models/served/1.0").await;
    assert_eq!(one[0]["modelVersion"], "1");

    // Unknown models and versions: 404 ModelNotFoundException.
    for (m, uri) in [
        (Method::GET, "/models/nope"),
        (Method::GET, "/models/served/9"),
        (Method::DELETE, "/models/nope"),
        (Method::PUT, "/models/nope?min_worker=2"),
    ] {
        let (s, b) = call(&w.app, m, uri).await;
        assert_eq!(
            (s, b["type"].as_str()),
            (StatusCode::NOT_FOUND, Some("ModelNotFoundException")),
            "{uri}"
        );
    }

    // Unregister: the model is gone, its registered folder too.
    let (s, b) = call(&w.app, Method::DELETE, "/models/doubler").await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::OK, Some("Model \"doubler\" unregistered"))
    );
    assert!(!w.server.model_ready("doubler", None));
    assert!(!w.repo.path().join("doubler").exists());
    assert_eq!(
        call(&w.app, Method::GET, "/models/doubler").await.0,
        StatusCode::NOT_FOUND
    );
    // ... and can be registered again.
    assert_eq!(
        call(&w.app, Method::POST, "/models?url=doubler&synchronous=true")
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_stay_in_the_model_store_and_on_the_allow_list() {
    let w = world();
    let refused = [
        ("/models", StatusCode::BAD_REQUEST),
        (
            "/models?url=../secret.onnx&synchronous=true",
            StatusCode::FORBIDDEN,
        ),
        (
            "/models?url=%2Fetc&model_name=etc&synchronous=true",
            StatusCode::FORBIDDEN,
        ),
        (
            "/models?url=https://evil.example.com/m.tar.gz&synchronous=true",
            StatusCode::FORBIDDEN,
        ),
        (
            "/models?url=https://models.example.com.evil.net/m.tar.gz&synchronous=true",
            StatusCode::FORBIDDEN,
        ),
        (
            "/models?url=file:///etc/passwd&synchronous=true",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/models?url=evil.tar.gz&synchronous=true",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/models?url=missing&synchronous=true",
            StatusCode::NOT_FOUND,
        ),
        (
            "/models?url=doubler&model_name=..&synchronous=true",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/models?url=doubler&initial_workers=many",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (uri, want) in refused {
        let (s, b) = call(&w.app, Method::POST, uri).await;
        assert_eq!(s, want, "{uri}: {b}");
        assert_eq!(
            b["code"].as_u64(),
            Some(u64::from(want.as_u16())),
            "{uri}: {b}"
        );
        assert!(
            b["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{uri}: {b}"
        );
    }
    assert!(!w.repo.outside().join("escaped.txt").exists());
    assert!(!w.store.parent().unwrap().join("escaped.txt").exists());
    // Nothing was left in the repository: only the model that was there, no staging folders.
    let left: BTreeSet<String> = std::fs::read_dir(w.repo.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, BTreeSet::from(["served".to_string()]));
    assert!(w.server.model_ready("served", None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_down_under_load_fails_nothing_and_set_default_routes_the_name() {
    let w = world();
    let (s, b) = call(
        &w.app,
        Method::PUT,
        "/models/served?min_worker=4&synchronous=true",
    )
    .await;
    assert_eq!(
        (s, b["status"].as_str()),
        (
            StatusCode::OK,
            Some("Workers scaled to 4 for model: served")
        )
    );
    assert_eq!(instances(&w.server, "served"), [4, 4]);
    let (_, cfg) = call(&w.app, Method::GET, "/models/served").await;
    assert_eq!(cfg[0]["workers"].as_array().unwrap().len(), 4);
    assert_eq!(
        w.server
            .repository
            .get("served")
            .unwrap()
            .config
            .instance_group[0]
            .count,
        4
    );

    // 400 requests in flight while the workers go from 4 to 1.
    let server = w.server.clone();
    let load = tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..400 {
            let s = server.clone();
            set.spawn(async move { infer(&s, "served", i as f32).await });
        }
        let mut failed = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Err(e) = r.unwrap() {
                failed.push(e);
            }
        }
        failed
    });
    let (s, b) = call(&w.app, Method::PUT, "/models/served?min_worker=1").await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::ACCEPTED, Some("Processing worker updates..."))
    );
    assert_eq!(load.await.unwrap(), Vec::<String>::new());
    for _ in 0..200 {
        if instances(&w.server, "served") == [1, 1] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(instances(&w.server, "served"), [1, 1]);
    assert_eq!(
        call(&w.app, Method::PUT, "/models/served?min_worker=0")
            .await
            .0,
        StatusCode::BAD_REQUEST
    );

    // The newest version serves by default; set-default pins version 1.
    assert_eq!(infer(&w.server, "served", 1.0).await.unwrap().0, "2");
    let (s, b) = call(&w.app, Method::PUT, "/models/served/1/set-default").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(infer(&w.server, "served", 1.0).await.unwrap().0, "1");
    let (_, d) = call(&w.app, Method::GET, "/models/served").await;
    assert_eq!(
        (d[0]["modelVersion"].as_str(), d[0]["isDefault"].as_bool()),
        (Some("1"), Some(true))
    );
    assert_eq!(
        call(&w.app, Method::PUT, "/models/served/7/set-default")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // The default version cannot be unregistered; another can, and the model keeps serving.
    assert_eq!(
        call(&w.app, Method::DELETE, "/models/served/1").await.0,
        StatusCode::CONFLICT
    );
    let (s, b) = call(&w.app, Method::DELETE, "/models/served/2").await;
    assert_eq!(
        (s, b["status"].as_str()),
        (
            StatusCode::OK,
            Some("Model \"served\" Version: 2 unregistered")
        )
    );
    let m = w.server.repository.get("served").unwrap();
    assert_eq!(m.versions.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(infer(&w.server, "served", 1.0).await.unwrap().0, "1");
}
