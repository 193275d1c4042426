use super::*;

fn target() -> Arc<TargetHealth> {
    Arc::new(TargetHealth::new("b", "m"))
}

fn attempt(health: &Arc<TargetHealth>, verdict: Verdict) {
    let mut held = health.admit(Instant::now()).expect("target admits");
    held.verdict(verdict);
}

fn now() -> Instant {
    Instant::now()
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_then_one_probe_restores() {
    let t = target();
    for _ in 0..CONSECUTIVE_FAILURES - 1 {
        attempt(&t, Verdict::Failure);
    }
    assert_eq!(t.availability(now()), Availability::Ready);
    attempt(&t, Verdict::Failure);
    assert_eq!(t.availability(now()), Availability::Out);
    assert_eq!(t.rate_limited_for(now()), None, "out for failures, not a rate limit");
    assert!(t.admit(now()).is_none(), "ejected targets take nothing");

    tokio::time::advance(BASE_EJECTION - Duration::from_millis(1)).await;
    assert_eq!(t.availability(now()), Availability::Out);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(t.availability(now()), Availability::Probe);

    let mut probe = t.admit(now()).expect("the probe");
    assert!(probe.is_probe());
    assert!(t.admit(now()).is_none(), "one probe at a time");
    assert_eq!(t.availability(now()), Availability::Out);
    probe.verdict(Verdict::Success);
    assert_eq!(t.availability(now()), Availability::Ready);
    assert!(t.admit(now()).is_some_and(|a| !a.is_probe()));
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_ejects_for_twice_as_long() {
    let t = target();
    for _ in 0..CONSECUTIVE_FAILURES {
        attempt(&t, Verdict::Failure);
    }
    tokio::time::advance(BASE_EJECTION).await;
    attempt(&t, Verdict::Failure); // the probe
    tokio::time::advance(BASE_EJECTION * 2 - Duration::from_millis(1)).await;
    assert_eq!(t.availability(now()), Availability::Out);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(t.availability(now()), Availability::Probe);
}

#[tokio::test(start_paused = true)]
async fn ejections_grow_up_to_the_cap_and_are_forgiven_after_a_healthy_stretch() {
    let t = target();
    let mut expected = BASE_EJECTION;
    for _ in 0..CONSECUTIVE_FAILURES {
        attempt(&t, Verdict::Failure);
    }
    for _ in 0..8 {
        tokio::time::advance(expected).await;
        attempt(&t, Verdict::Failure);
        expected = (expected * 2).min(MAX_EJECTION);
    }
    assert_eq!(expected, MAX_EJECTION);
    tokio::time::advance(MAX_EJECTION).await;
    attempt(&t, Verdict::Success);
    tokio::time::advance(MAX_EJECTION).await;
    for _ in 0..CONSECUTIVE_FAILURES {
        attempt(&t, Verdict::Failure);
    }
    tokio::time::advance(BASE_EJECTION).await;
    assert_eq!(t.availability(now()), Availability::Probe, "back to the base interval");
}

#[tokio::test(start_paused = true)]
async fn successes_in_between_keep_a_target_in_but_a_high_ratio_ejects_it() {
    let t = target();
    for _ in 0..10 {
        attempt(&t, Verdict::Success);
        attempt(&t, Verdict::Failure);
    }
    assert_eq!(t.availability(now()), Availability::Out, "10 of 20 failed");

    let t = target();
    for _ in 0..30 {
        attempt(&t, Verdict::Failure);
        attempt(&t, Verdict::Success);
        attempt(&t, Verdict::Success);
    }
    assert_eq!(t.availability(now()), Availability::Ready, "a third failing stays in");
}

#[tokio::test(start_paused = true)]
async fn the_ratio_window_starts_over() {
    let t = target();
    for _ in 0..9 {
        attempt(&t, Verdict::Success);
        attempt(&t, Verdict::Failure);
    }
    tokio::time::advance(RATIO_WINDOW).await;
    // Without the new window this would be 10 failures in 20 attempts.
    attempt(&t, Verdict::Success);
    attempt(&t, Verdict::Failure);
    assert_eq!(t.availability(now()), Availability::Ready);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_hint_ejects_for_exactly_that_long() {
    let t = target();
    attempt(&t, Verdict::RateLimited(Duration::from_millis(1500)));
    assert_eq!(t.availability(now()), Availability::Out);
    assert_eq!(t.rate_limited_for(now()), Some(Duration::from_millis(1500)));
    tokio::time::advance(Duration::from_millis(1499)).await;
    assert_eq!(t.availability(now()), Availability::Out);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(t.availability(now()), Availability::Probe);
    attempt(&t, Verdict::Success);
    assert_eq!(t.availability(now()), Availability::Ready);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_ends_without_a_verdict_lets_the_next_request_probe() {
    let t = target();
    attempt(&t, Verdict::RateLimited(Duration::from_secs(1)));
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(t.admit(now()).expect("probe"));
    let mut again = t.admit(now()).expect("another probe");
    assert!(again.is_probe());
    again.verdict(Verdict::Neutral);
    assert!(t.admit(now()).expect("and another").is_probe());
}

#[tokio::test(start_paused = true)]
async fn in_flight_counts_until_the_hold_is_dropped() {
    let t = target();
    let a = t.admit(now()).unwrap();
    let mut b = t.admit(now()).unwrap();
    assert_eq!(t.inflight(), 2);
    b.verdict(Verdict::Success);
    assert_eq!(t.inflight(), 2, "a streaming answer still holds its place");
    drop(a);
    b.finish(false);
    assert_eq!(t.inflight(), 0);
}

#[tokio::test(start_paused = true)]
async fn health_survives_a_reload_for_upstreams_that_remain() {
    let mut first = Health::carry(None);
    let kept = first.record("a", "http://a", "m");
    let gone = first.record("b", "http://b", "m");
    assert!(Arc::ptr_eq(&kept, &first.record("a", "http://a", "m")), "shared within a snapshot");
    let first = first.build();
    let mut second = Health::carry(Some(&first));
    assert!(Arc::ptr_eq(&kept, &second.record("a", "http://a", "m")));
    assert!(!Arc::ptr_eq(&gone, &second.record("b", "http://other", "m")), "a new base URL is a new upstream");
}
