//! The EMF documents: valid by the specification, the right figures, nothing secret.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::*;
use crate::error::FailureKind;

const NOW_MS: u64 = 1_765_100_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(NOW_MS)
}

fn measured(handled: Handled, run_started_ms: Option<u64>) -> Measured {
    Measured {
        handled,
        step: Duration::from_millis(1250),
        run_started_ms,
    }
}

fn job(result: JobResult) -> Handled {
    Handled::Job {
        job_id: "11111111-abcd-1111-abcd-111111abcdef".into(),
        result,
        delivered: Ok(()),
    }
}

fn succeeded(outputs: &[(&str, &str)]) -> JobResult {
    JobResult::Succeeded {
        summary: "done".into(),
        external_execution_id: "shop/exec-42/Replicate".into(),
        output_variables: outputs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Checks a document against the EMF specification; returns the metrics it defines, by name,
/// with their unit and the dimension sets they are published under.
fn validate(doc: &Value) -> BTreeMap<String, (String, Vec<Vec<String>>)> {
    let line = doc.to_string();
    assert!(!line.contains('\n'), "one line: {line}");
    let root: Value = serde_json::from_str(&line).unwrap();
    let root = root.as_object().expect("the root is an object");
    let aws = root["_aws"].as_object().expect("_aws is an object");
    let ts = aws["Timestamp"]
        .as_u64()
        .expect("Timestamp: ms since the epoch");
    assert!(ts > 1_000_000_000_000, "milliseconds, not seconds: {ts}");
    let directives = aws["CloudWatchMetrics"].as_array().unwrap();
    assert!(!directives.is_empty());
    let mut defined = BTreeMap::new();
    for d in directives {
        let ns = d["Namespace"].as_str().unwrap();
        assert!(!ns.is_empty() && ns.len() <= 255 && !ns.starts_with("AWS/"));
        let sets: Vec<Vec<String>> = serde_json::from_value(d["Dimensions"].clone()).unwrap();
        for set in &sets {
            assert!(!set.is_empty() && set.len() <= 30, "{set:?}");
            for dim in set {
                let v = root[dim.as_str()].as_str().unwrap_or_else(|| {
                    panic!("dimension {dim} must be a string member of the root: {line}")
                });
                assert!(!v.is_empty() && v.len() <= 1024, "{dim}={v:?}");
                for id in ["JobId", "ExecutionId"] {
                    assert_ne!(dim, id, "an id is never a dimension");
                }
            }
        }
        let metrics = d["Metrics"].as_array().unwrap();
        assert!(!metrics.is_empty() && metrics.len() <= 100);
        for m in metrics {
            let name = m["Name"].as_str().unwrap();
            let unit = m["Unit"].as_str().unwrap();
            assert!(
                ["Milliseconds", "Seconds", "Bytes", "Count"].contains(&unit),
                "{unit}"
            );
            assert!(
                root[name].is_number(),
                "metric {name} needs a number member: {line}"
            );
            assert!(
                defined
                    .insert(name.to_string(), (unit.to_string(), sets.clone()))
                    .is_none(),
                "{name} defined twice"
            );
        }
    }
    defined
}

fn dims(sets: &[&[&str]]) -> Vec<Vec<String>> {
    sets.iter()
        .map(|s| s.iter().map(|d| d.to_string()).collect())
        .collect()
}

#[test]
fn a_failed_job_counts_one_failure_of_its_type_and_ends_the_run() {
    let failed = JobResult::failed(
        &Error::Configuration("UserParameters: not JSON".into()),
        "job/1",
    );
    let doc = document(
        "snapstage",
        "snapshot-production",
        &measured(job(failed), Some(NOW_MS - 90_500)),
        now(),
    );
    let defined = validate(&doc);
    assert_eq!(doc["Failures"], 1.0);
    assert_eq!(doc["FailureType"], "ConfigurationError");
    assert_eq!(doc["Outcome"], "failed");
    assert_eq!(doc["Function"], "snapshot-production");
    assert_eq!(doc["Invocations"], 1.0);
    assert_eq!(doc["StepDuration"], 1250.0);
    assert_eq!(doc["RunDuration"], 90.5);
    assert_eq!(doc["_aws"]["Timestamp"], NOW_MS);
    assert_eq!(
        defined["Failures"],
        (
            "Count".into(),
            dims(&[&["Function"], &["Function", "FailureType"]])
        )
    );
    assert_eq!(
        defined["StepDuration"],
        (
            "Milliseconds".into(),
            dims(&[&["Function"], &["Function", "Outcome"]])
        )
    );
    assert_eq!(defined["RunDuration"].0, "Seconds");
    // The ids are there for log search, as plain members.
    assert_eq!(doc["JobId"], "11111111-abcd-1111-abcd-111111abcdef");
    assert_eq!(doc["ExecutionId"], "job/1");
}

#[test]
fn a_continued_step_counts_its_duration_but_no_run_duration_or_failure() {
    let r = JobResult::InProgress {
        summary: "waiting for snap-1".into(),
        external_execution_id: "e".into(),
        percent_complete: 50,
        continuation_token: "ss1.secret-looking-state".into(),
    };
    let doc = document(
        "snapstage",
        "restore-to-staging",
        &measured(job(r), Some(NOW_MS - 1000)),
        now(),
    );
    let defined = validate(&doc);
    assert_eq!(doc["Outcome"], "continued");
    assert_eq!(
        defined.keys().collect::<Vec<_>>(),
        ["Invocations", "StepDuration"]
    );
    assert!(!doc.to_string().contains("ss1."), "no token in the metrics");
}

#[test]
fn a_finished_run_reports_its_wait_from_the_first_invocation() {
    let doc = document(
        "snapstage",
        "snapshot-production",
        &measured(
            job(succeeded(&[("SnapshotId", "snap-1")])),
            Some(NOW_MS - 600_000),
        ),
        now(),
    );
    validate(&doc);
    assert_eq!(doc["Outcome"], "succeeded");
    assert_eq!(doc["RunDuration"], 600.0);
    // A token from before the start was recorded: no duration rather than a wrong one.
    let doc = document(
        "snapstage",
        "snapshot-production",
        &measured(job(succeeded(&[])), None),
        now(),
    );
    assert!(!validate(&doc).contains_key("RunDuration"));
}

#[test]
fn replication_figures_come_from_the_output_variables() {
    let doc = document(
        "ops/snapstage",
        "replicate-artifacts-back",
        &measured(
            job(succeeded(&[
                ("ObjectsCopied", "4"),
                ("ObjectsSkipped", "2"),
                ("ObjectsDeleted", "0"),
                ("BytesCopied", "5242890"),
                ("ThroughputMBps", "12.5"),
                ("DestinationBucket", "onprem"),
            ])),
            Some(NOW_MS),
        ),
        now(),
    );
    let defined = validate(&doc);
    assert_eq!(doc["ObjectsCopied"], 4.0);
    assert_eq!(doc["ObjectsSkipped"], 2.0);
    assert_eq!(doc["ObjectsDeleted"], 0.0);
    assert_eq!(doc["BytesCopied"], 5_242_890.0);
    assert_eq!(
        defined["BytesCopied"],
        ("Bytes".into(), dims(&[&["Function"]]))
    );
    assert_eq!(defined["ObjectsCopied"].0, "Count");
    assert!(!defined.contains_key("ThroughputMBps"));
    assert!(doc.get("DestinationBucket").is_none(), "no output values");
    assert_eq!(
        doc["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "ops/snapstage"
    );
}

#[test]
fn nothing_secret_or_from_the_parameters_gets_in() {
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let failed = JobResult::Failed {
        kind: FailureKind::PermissionError,
        message: format!("secret {secret} was refused"),
        external_execution_id: "e".into(),
    };
    let outputs = succeeded(&[("Password", secret), ("ObjectsCopied", "1")]);
    for handled in [
        job(failed),
        job(outputs),
        Handled::Rejected(Error::Event(format!("bad payload {secret}"))),
    ] {
        let doc = document("snapstage", "f", &measured(handled, None), now());
        validate(&doc);
        assert!(!doc.to_string().contains(secret), "{doc}");
    }
}

#[test]
fn rejected_ignored_and_undelivered_invocations() {
    let doc = document(
        "snapstage",
        "f",
        &measured(Handled::Rejected(Error::Event("not JSON".into())), None),
        now(),
    );
    validate(&doc);
    assert_eq!(
        (&doc["Outcome"], &doc["FailureType"], &doc["Failures"]),
        (
            &"rejected".into(),
            &"ConfigurationError".into(),
            &1.0.into()
        )
    );

    let doc = document(
        "snapstage",
        "f",
        &measured(
            Handled::Ignored {
                reason: "branch".into(),
            },
            Some(NOW_MS),
        ),
        now(),
    );
    assert_eq!(validate(&doc).len(), 2);
    assert_eq!(doc["Outcome"], "ignored");

    let doc = document(
        "snapstage",
        "f",
        &measured(
            Handled::Job {
                job_id: "j".into(),
                result: succeeded(&[]),
                delivered: Err(Error::Unavailable {
                    backend: "codepipeline",
                    message: "connection refused".into(),
                    source: None,
                }),
            },
            Some(NOW_MS),
        ),
        now(),
    );
    assert_eq!(validate(&doc)["ResultsNotDelivered"].0, "Count");
    assert_eq!(doc["ResultsNotDelivered"], 1.0);
}

#[test]
fn on_under_lambda_off_in_the_cli_unless_asked() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let m = |lambda, pairs| Metrics::from_env(lambda, env(pairs)).unwrap();
    assert_eq!(m(true, &[]).sink, Sink::Stdout);
    assert_eq!(m(false, &[]).sink, Sink::Off);
    assert_eq!(m(false, &[("SNAPSTAGE_METRICS", "emf")]).sink, Sink::Stderr);
    assert_eq!(m(true, &[("SNAPSTAGE_METRICS", "EMF")]).sink, Sink::Stdout);
    assert_eq!(m(true, &[("SNAPSTAGE_METRICS", "off")]).sink, Sink::Off);
    assert_eq!(m(true, &[]).namespace, "snapstage");
    assert_eq!(
        m(true, &[("SNAPSTAGE_METRICS_NAMESPACE", "Team/snapstage")]).namespace,
        "Team/snapstage"
    );
    for bad in [
        ("SNAPSTAGE_METRICS", "yes"),
        ("SNAPSTAGE_METRICS_NAMESPACE", "AWS/Lambda"),
        ("SNAPSTAGE_METRICS_NAMESPACE", "a{b}"),
    ] {
        let e = Metrics::from_env(true, |k| (k == bad.0).then(|| bad.1.to_string())).unwrap_err();
        assert!(e.to_string().starts_with(bad.0), "{e}");
        assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    }
}
