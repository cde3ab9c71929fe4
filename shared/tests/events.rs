//! Every sample in events/ is exercised: job events parse and their UserParameters are valid for
//! the function they name; CodeCommit events trigger or are ignored as documented; direct requests
//! are valid for the function their file is named after. A sample nobody checks fails this test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::{Path, PathBuf};

use serde_json::Value;
use snapstage::job::codecommit::TriggerFilter;
use snapstage::job::contract::Execution;
use snapstage::job::invocation::{Invocation, classify};
use snapstage::job::params::{Layer, merge, user_parameters};
use snapstage::storage::steps::{RestoreParams, SnapshotParams};
use snapstage::{FailureKind, Result};

fn events_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../events")
}

fn samples(sub: &str) -> Vec<(String, Value)> {
    let mut out = vec![];
    for entry in std::fs::read_dir(events_dir().join(sub)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        out.push((name, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no samples in events/{sub}");
    out
}

/// Its parameters live in its own crate: functions/roll-out-release/tests/events.rs checks its samples.
const ROLL_OUT_RELEASE: &str = "roll-out-release";

fn execution() -> Execution {
    Execution {
        key: "events-test".into(),
        origin: "direct".into(),
        pipeline: None,
        commit: None,
    }
}

/// Parses and checks parameters the way the named function does before any backend call.
fn check_params(function: &str, layer: Layer) -> Result<()> {
    let layers = [layer];
    match function {
        "snapshot-production" => merge::<SnapshotParams>(&layers)?.validate(),
        "restore-to-staging" => merge::<RestoreParams>(&layers)?.validate(),
        "deploy-staging-db" => snapstage::staging::check_request(
            merge(&layers)?,
            &execution(),
            k8s_openapi::jiff::Timestamp::now(),
        ),
        "replicate-artifacts-back" => merge::<snapstage::replicate::Params>(&layers)?.check(),
        other => panic!("no function named {other:?}"),
    }
}

#[test]
fn codepipeline_job_samples_parse_and_carry_valid_parameters() {
    for (name, raw) in samples("codepipeline") {
        let Invocation::Job(ev) = classify(&raw, &TriggerFilter::default()).unwrap() else {
            panic!("{name}: not a job event")
        };
        let conf = &ev.job.data.action_configuration.configuration;
        let layer = user_parameters(conf.user_parameters.as_deref());
        if name == "reference-job" {
            // AWS's own example has plain-text UserParameters: a clear ConfigurationError.
            let e = layer.unwrap_err();
            assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
            assert!(e.to_string().contains("expected a JSON object"), "{e}");
            continue;
        }
        let function = conf.function_name.as_deref().unwrap();
        assert_eq!(function, name, "sample file is named after its function");
        if function == ROLL_OUT_RELEASE {
            continue;
        }
        check_params(function, layer.unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn codecommit_samples_trigger_or_are_ignored_as_documented() {
    let filter = TriggerFilter {
        repositories: vec![],
        branches: vec!["main".into(), "myBranch".into()],
    };
    for (name, raw) in samples("codecommit") {
        let got = classify(&raw, &filter).unwrap();
        let expect_trigger = match name.as_str() {
            "push-main" | "pull-request-merged" | "reference-merge" => true,
            "branch-deleted" | "tag-created" => false,
            other => panic!("events/codecommit/{other}.json has no expectation here: add one"),
        };
        match got {
            Invocation::Trigger(t) => assert!(expect_trigger, "{name} triggered {t:?}"),
            Invocation::Ignored(i) => assert!(!expect_trigger, "{name} ignored: {}", i.0),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn direct_samples_are_valid_for_their_function() {
    const FUNCTIONS: [&str; 4] = [
        "snapshot-production",
        "restore-to-staging",
        "deploy-staging-db",
        "replicate-artifacts-back",
    ];
    for (name, raw) in samples("direct") {
        if name.starts_with(ROLL_OUT_RELEASE) {
            continue;
        }
        let function = FUNCTIONS
            .iter()
            .find(|f| name.starts_with(*f))
            .unwrap_or_else(|| {
                panic!("events/direct/{name}.json does not start with a function name")
            });
        let Invocation::Direct(d) = classify(&raw, &TriggerFilter::default()).unwrap() else {
            panic!("{name}: not a direct request")
        };
        check_params(
            function,
            Layer {
                source: "request",
                values: d.params,
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// The Jenkins example (`examples/jenkins/`): its event is a valid rehydration, and the
/// Jenkinsfile runs it with the CLI.
#[test]
fn the_jenkins_rehydrate_example_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/jenkins");
    let raw: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/rehydrate.json")).unwrap())
            .unwrap();
    assert!(raw["array"]["rehydrate"].is_object(), "{raw}");
    let Invocation::Direct(d) = classify(&raw, &TriggerFilter::default()).unwrap() else {
        panic!("examples/jenkins/rehydrate.json: not a direct request")
    };
    check_params(
        "replicate-artifacts-back",
        Layer {
            source: "request",
            values: d.params,
        },
    )
    .unwrap();
    let jenkinsfile = std::fs::read_to_string(format!("{dir}/Jenkinsfile")).unwrap();
    assert!(
        jenkinsfile.contains("replicate-artifacts-back --event rehydrate.json"),
        "the Jenkinsfile runs the example event"
    );
}
