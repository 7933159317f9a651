use super::*;

fn routes() -> Routes {
    Routes::new(Metrics::new())
}

fn spec(json: &str) -> RouteSpec {
    serde_json::from_str(json).unwrap()
}

const AB: &str = r#"{"variants":[{"name":"a","version":1,"weight":90},{"name":"b","model":"other","weight":10}]}"#;

#[test]
fn weights_split_traffic_and_keys_stick() {
    let r = routes().set("m", spec(AB)).unwrap();
    let n = 100_000;
    let b = (0..n).filter(|_| r.pick(None).variant == 1).count();
    let share = b as f64 / n as f64;
    assert!((share - 0.10).abs() < 0.01, "share of b: {share}");
    let c = r.pick(None);
    assert_eq!(c.model, ["m", "other"][c.variant]);
    for k in 0..1000 {
        let key = format!("user-{k}");
        let first = r.pick(Some(&key));
        for _ in 0..5 {
            assert_eq!(r.pick(Some(&key)), first);
        }
    }
    let keyed = (0..20_000)
        .filter(|k| r.pick(Some(&k.to_string())).variant == 1)
        .count();
    assert!((keyed as f64 / 20_000.0 - 0.10).abs() < 0.015, "{keyed}");
}

#[test]
fn raising_a_weight_only_moves_keys_towards_it() {
    let r = routes();
    let before = r.set("m", spec(AB)).unwrap();
    let on_b: Vec<bool> = (0..5000)
        .map(|k| before.pick(Some(&k.to_string())).variant == 1)
        .collect();
    let after = r
        .set(
            "m",
            spec(r#"{"variants":[{"name":"a","weight":70},{"name":"b","weight":30}]}"#),
        )
        .unwrap();
    for (k, was_b) in on_b.iter().enumerate() {
        if *was_b {
            assert_eq!(after.pick(Some(&k.to_string())).variant, 1, "key {k}");
        }
    }
}

const CANARY: &str = r#"{"variants":[{"name":"stable","version":1,"weight":0},{"name":"candidate","version":2,"weight":0}],
  "canary":{"candidate":"candidate","start_weight":10,"step_weight":30,"step_secs":5,"window_secs":100,"min_requests":10}}"#;

fn feed(r: &Route, variant: usize, n: usize, fail_every: usize) {
    for i in 0..n {
        r.record(
            variant,
            fail_every > 0 && i % fail_every == 0,
            Duration::from_micros(200),
        );
    }
}

#[test]
fn canary_steps_up_while_healthy_then_promotes() {
    let rs = routes();
    let r = rs.set("m", spec(CANARY)).unwrap();
    assert_eq!(r.weights(), vec![90, 10]);
    let t = Instant::now();
    feed(&r, 0, 50, 0);
    feed(&r, 1, 5, 0);
    r.tick(t + Duration::from_secs(6));
    assert_eq!(
        r.weights(),
        vec![90, 10],
        "too few candidate requests to judge"
    );
    feed(&r, 1, 20, 0);
    r.tick(t + Duration::from_secs(6));
    assert_eq!(r.weights(), vec![60, 40]);
    r.tick(t + Duration::from_secs(7));
    assert_eq!(r.weights(), vec![60, 40], "the next step is not due");
    for s in [12, 18, 24] {
        feed(&r, 1, 20, 0);
        feed(&r, 0, 20, 0);
        // Outcomes carry the real time; the 100 s window holds them all at these ticks.
        r.tick(t + Duration::from_secs(s));
    }
    assert_eq!(r.weights(), vec![0, 100]);
    assert_eq!(r.status()["canary"]["phase"], "promoted");
    assert!(r.rolled_back().is_none());
}

#[test]
fn a_failing_candidate_is_rolled_back_and_it_shows() {
    let rs = routes();
    let r = rs.set("m", spec(CANARY)).unwrap();
    feed(&r, 0, 100, 0);
    feed(&r, 1, 30, 3); // every third fails
    r.tick(Instant::now());
    assert_eq!(r.weights(), vec![100, 0]);
    let (model, version, reason) = r.rolled_back().unwrap();
    assert_eq!((model.as_str(), version), ("m", Some(2)));
    assert!(reason.starts_with("error ratio 0.333"), "{reason}");
    let status = r.status();
    assert_eq!(status["canary"]["phase"], "rolled_back");
    assert_eq!(status["variants"][1]["failure"], 10);
    let text = rs.metrics.render();
    assert!(
        text.contains("infera_route_rollbacks_total{route=\"m\"} 1"),
        "{text}"
    );
    assert!(text.contains("infera_route_weight{route=\"m\",variant=\"candidate\"} 0"));
    // Rolled back stays rolled back; by hand it can still be promoted.
    feed(&r, 1, 100, 0);
    r.tick(Instant::now() + Duration::from_secs(60));
    assert_eq!(r.weights(), vec![100, 0]);
    r.promote().unwrap();
    assert_eq!(r.weights(), vec![0, 100]);
    r.rollback().unwrap();
    assert_eq!(r.rolled_back().unwrap().2, "rolled back by hand");
}

#[test]
fn routes_are_bounded_and_forget_their_series() {
    let rs = routes();
    let r = rs.set("m", spec(AB)).unwrap();
    assert_eq!(r.rollback().unwrap_err().kind, ErrorKind::Conflict);
    r.record(0, false, Duration::ZERO);
    assert!(rs.metrics.render().contains("infera_route_requests_total"));
    rs.remove("m").unwrap();
    assert!(!rs.metrics.render().contains("route=\"m\""));
    assert_eq!(rs.remove("m").unwrap_err().kind, ErrorKind::NotFound);
    for i in 0..MAX_ROUTES {
        rs.set(&format!("r{i}"), spec(AB)).unwrap();
    }
    assert_eq!(
        rs.set("one_more", spec(AB)).err().unwrap().kind,
        ErrorKind::Conflict
    );
    rs.set("r0", spec(AB)).expect("replacing is not adding");
    let bad = rs.set("x", spec(r#"{"variants":[]}"#)).err().unwrap();
    assert_eq!(bad.kind, ErrorKind::InvalidArgument);
}

#[test]
fn shadow_sampling_follows_the_percentage() {
    let r = routes()
        .set(
            "m",
            spec(r#"{"variants":[{"name":"a","weight":1}],"shadow":{"version":2,"percent":25}}"#),
        )
        .unwrap();
    let n = 40_000;
    let sampled = (0..n).filter(|_| r.sample_shadow().is_some()).count();
    assert!((sampled as f64 / n as f64 - 0.25).abs() < 0.01, "{sampled}");
    assert_eq!(r.shadow_model(), Some(("m".into(), Some(2))));
    r.record_shadow("agree");
    r.record_shadow("disagree");
    r.record_shadow("agree");
    assert_eq!(r.status()["shadow"]["compared"], 3);
    assert!((r.status()["shadow"]["agreement"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
}
