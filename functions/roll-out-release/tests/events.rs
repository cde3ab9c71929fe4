//! Every roll-out-release sample in events/ parses as what it is (a CodePipeline job event or a
//! direct request) and carries parameters the function accepts, checked the way the step checks
//! them before any AWS call. (The other functions' samples: shared/tests/events.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::Path;

use roll_out_release::RolloutParams;
use roll_out_release::params::ToVersion;
use snapstage::job::codecommit::TriggerFilter;
use snapstage::job::invocation::{Invocation, classify};
use snapstage::job::params::{Layer, merge, user_parameters};

fn samples(sub: &str) -> Vec<(String, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../events")
        .join(sub);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name.starts_with("roll-out-release") {
            let v = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            out.push((name, v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn params(layer: Layer) -> RolloutParams {
    let p: RolloutParams = merge(&[layer]).unwrap();
    p.validate().unwrap();
    p
}

#[test]
fn the_job_sample_carries_a_release() {
    let all = samples("codepipeline");
    assert_eq!(all.len(), 1);
    for (name, raw) in all {
        let Invocation::Job(ev) = classify(&raw, &TriggerFilter::default()).unwrap() else {
            panic!("{name}: not a job event")
        };
        let conf = &ev.job.data.action_configuration.configuration;
        assert_eq!(conf.function_name.as_deref(), Some("roll-out-release"));
        let p = params(user_parameters(conf.user_parameters.as_deref()).unwrap());
        assert_eq!(p.image_id.as_deref(), Some("ami-0123456789abcdef0"));
        assert_eq!(p.alarms, ["shop-web-5xx"]);
        assert!(ev.job.data.artifact_credentials.is_some());
    }
}

#[test]
fn the_direct_samples_are_a_release_a_plan_and_rollback_requests() {
    let all = samples("direct");
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "roll-out-release",
            "roll-out-release-dry-run",
            "roll-out-release-rollback",
            "roll-out-release-rollback-to-version"
        ]
    );
    for (name, raw) in all {
        let Invocation::Direct(d) = classify(&raw, &TriggerFilter::default()).unwrap() else {
            panic!("{name}: not a direct request")
        };
        let p = params(Layer {
            source: "request",
            values: d.params,
        });
        match name.as_str() {
            "roll-out-release" => assert!(p.image_id.is_some() && !p.dry_run),
            "roll-out-release-dry-run" => assert!(p.dry_run),
            "roll-out-release-rollback" => {
                assert_eq!(p.rollback.unwrap().to_version, ToVersion::Previous)
            }
            _ => assert_eq!(p.rollback.unwrap().to_version, ToVersion::Number(7)),
        }
    }
}
