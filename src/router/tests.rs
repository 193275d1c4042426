use std::collections::HashMap;

use http::HeaderName;

use super::*;
use crate::config::{BackendConfig, BackendKind, MockSettings, RetryConfig, TargetConfig, Timeouts};

fn backend(name: &str) -> Arc<BackendRuntime> {
    let config = BackendConfig {
        name: name.into(),
        kind: BackendKind::Mock,
        base_url: String::new(),
        api_key: None,
        api_version: None,
        responses_native: false,
        max_inflight: None,
        timeouts: Timeouts::default(),
        headers: Vec::new(),
        ca_file: None,
        mock: MockSettings::default(),
    };
    Arc::new(BackendRuntime::build(config, None).unwrap())
}

/// `(backend, variant, weight)` targets of model `m`.
fn route(targets: &[(&str, &str, u32)], sticky: Sticky) -> ModelRoute {
    let configs: Vec<TargetConfig> = targets
        .iter()
        .map(|(b, v, w)| TargetConfig {
            backend: (*b).into(),
            model: format!("up-{b}"),
            weight: *w,
            variant: (*v).into(),
            params: serde_json::Map::new(),
        })
        .collect();
    let live = configs
        .iter()
        .map(|t| Target {
            backend: backend(&t.backend),
            model: t.model.clone(),
            variant: t.variant.clone(),
            weight: t.weight,
            params: serde_json::Map::new(),
            health: Arc::new(TargetHealth::new(&t.backend, &t.model)),
        })
        .collect();
    let config = ModelConfig {
        name: "m".into(),
        targets: configs,
        experiment: None,
        sticky,
        fallbacks: Vec::new(),
        retry: RetryConfig::default(),
        cache_ttl: None,
        price: None,
    };
    ModelRoute::new(config, live, Vec::new(), None)
}

fn chosen(route: &ModelRoute, pick: Pick) -> Option<&Target> {
    route.choose(pick, Instant::now()).map(|(_, i)| &route.targets[i])
}

fn eject(target: &Target) {
    let mut hold = target.health.admit(Instant::now()).unwrap();
    hold.verdict(Verdict::RateLimited(std::time::Duration::from_secs(60)));
}

#[test]
fn targets_are_grouped_by_variant_in_config_order() {
    let r = route(&[("a", "x", 1), ("b", "y", 1), ("c", "x", 1)], Sticky::None);
    let order: Vec<&str> = r.targets.iter().map(|t| t.backend.name()).collect();
    assert_eq!(order, ["a", "c", "b"]);
    assert_eq!(r.variants.len(), 2);
    assert_eq!((r.variants[0].weight, r.variants[0].targets.clone()), (2, 0..2));
}

#[test]
fn a_pin_names_a_variant_and_an_unknown_one_is_refused() {
    let r = route(&[("a", "control", 9), ("b", "candidate", 1)], Sticky::None);
    let pinned = r.pinned(Some(&HeaderValue::from_static("candidate"))).unwrap();
    for _ in 0..50 {
        assert_eq!(chosen(&r, Pick { pinned, sticky: None }).unwrap().variant, "candidate");
    }
    assert_eq!(r.pinned(None), Ok(None));
    assert_eq!(r.pinned(Some(&HeaderValue::from_static(""))), Ok(None));
    let err = r.pinned(Some(&HeaderValue::from_static("nope"))).unwrap_err();
    assert!(err.to_string().contains("control, candidate"), "{err}");
}

#[test]
fn sticky_values_come_from_the_configured_place() {
    let mut headers = HeaderMap::new();
    headers.insert("x-session", HeaderValue::from_static("s-1"));
    let two = [("a", "x", 1), ("b", "y", 1)];
    let by = |sticky| route(&two, sticky).sticky_hash("team", Some("alice"), &headers);
    assert_eq!(by(Sticky::None), None);
    assert_eq!(by(Sticky::Key), Some(stable_hash(&[b"team"])));
    assert_eq!(by(Sticky::User), Some(stable_hash(&[b"alice"])));
    assert_eq!(by(Sticky::Header(HeaderName::from_static("x-session"))), Some(stable_hash(&[b"s-1"])));
    let r = route(&two, Sticky::User);
    assert_eq!(r.sticky_hash("team", None, &headers), None, "no user: random placement");
    let single = route(&[("a", "x", 1)], Sticky::User);
    assert_eq!(single.sticky_hash("team", Some("alice"), &headers), None, "nothing to choose");
}

#[test]
fn the_same_sticky_value_always_gets_the_same_variant() {
    let r = route(&[("a", "x", 1), ("b", "y", 1), ("c", "z", 1)], Sticky::User);
    let mut seen = HashMap::new();
    for user in 0..300 {
        let key = stable_hash(&[format!("u{user}").as_bytes()]);
        let first = chosen(&r, Pick { pinned: None, sticky: Some(key) }).unwrap().variant.clone();
        for _ in 0..3 {
            assert_eq!(chosen(&r, Pick { pinned: None, sticky: Some(key) }).unwrap().variant, first);
        }
        *seen.entry(first).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3);
}

#[test]
fn ejected_variants_drop_out_and_users_elsewhere_stay_put() {
    let r = route(&[("a", "x", 1), ("b", "y", 1), ("c", "z", 1)], Sticky::User);
    let keys: Vec<u64> = (0..300).map(|u| stable_hash(&[format!("u{u}").as_bytes()])).collect();
    let before: Vec<String> =
        keys.iter().map(|&k| chosen(&r, Pick { pinned: None, sticky: Some(k) }).unwrap().variant.clone()).collect();
    eject(&r.targets[1]);
    for (k, was) in keys.iter().zip(&before) {
        let now = &chosen(&r, Pick { pinned: None, sticky: Some(*k) }).unwrap().variant;
        assert_ne!(now, "y");
        if was != "y" {
            assert_eq!(now, was);
        }
    }
    eject(&r.targets[0]);
    eject(&r.targets[2]);
    assert!(chosen(&r, Pick::default()).is_none(), "all out: nothing to choose");
}

#[test]
fn a_pinned_variant_that_is_out_yields_nothing() {
    let r = route(&[("a", "x", 1), ("b", "y", 1)], Sticky::None);
    eject(&r.targets[1]);
    assert!(chosen(&r, Pick { pinned: Some(1), sticky: None }).is_none());
}

#[test]
fn the_less_loaded_target_of_a_variant_is_preferred() {
    let r = route(&[("a", "pool", 1), ("b", "pool", 1)], Sticky::None);
    let _busy: Vec<InFlight> = (0..5).map(|_| r.targets[0].health.admit(Instant::now()).unwrap()).collect();
    // Two draws land on different targets about half the time; then the idle one wins.
    let idle = (0..1000).filter(|_| chosen(&r, Pick::default()).unwrap().backend.name() == "b").count();
    assert!(idle > 650, "idle target chosen {idle} times of 1000");
    eject(&r.targets[1]);
    assert!((0..50).all(|_| chosen(&r, Pick::default()).unwrap().backend.name() == "a"));
}
