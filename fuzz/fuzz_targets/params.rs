//! Parameter merging: `SNAPSTAGE_DEFAULTS` (the text before the first newline) and
//! `UserParameters` (the rest) → each function's typed parameters, then each function's own
//! validation. Invariant: never panics; every error names a field and maps to a failure type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapstage::job::params::{DEFAULTS_ENV, Layer, env_defaults, merge, user_parameters};
use snapstage::storage::steps::{RestoreParams, SnapshotParams};
use snapstage::{Error, Execution, Result};

fn check<T>(r: Result<T>) {
    if let Err(e) = r {
        let _ = e.failure_kind();
        assert!(!e.to_string().is_empty());
        if let Error::Parameter { field, .. } = &e {
            assert!(!field.is_empty(), "{e}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (defaults, user) = text.split_once('\n').unwrap_or(("", text));
    let Ok(d) = env_defaults(|k| (k == DEFAULTS_ENV).then(|| defaults.to_string())) else {
        return;
    };
    let u = match user_parameters(Some(user)) {
        Ok(u) => u,
        Err(e) => return check::<()>(Err(e)),
    };
    // A direct request: the same object under the name errors use for it.
    let request = Layer {
        source: "request",
        values: u.values.clone(),
    };
    let execution = Execution {
        key: "shop/0f1e2d3c-1111-4222-8333-444455556666/Snapshot".into(),
        origin: "codepipeline".into(),
        pipeline: Some("shop".into()),
        commit: None,
    };
    let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap_or_default();
    for layers in [vec![d.clone(), u.clone()], vec![d.clone(), request]] {
        check(merge::<SnapshotParams>(&layers).and_then(|p| p.validate()));
        check(merge::<RestoreParams>(&layers).and_then(|p| p.validate()));
        check(merge::<snapstage::replicate::Params>(&layers).and_then(|p| p.validate().map(|_| ())));
        check(
            merge::<snapstage::staging::Params>(&layers)
                .and_then(|p| snapstage::staging::check_request(p, &execution, now)),
        );
    }
});
