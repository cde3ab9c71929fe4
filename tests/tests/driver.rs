//! The pipeline driver over the fake function, through both invokers: continuations are
//! followed, variables flow through `#{Namespace.Variable}`, and a failure stops the pipeline.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use common::{FAKE, bin_dir, lambda_invoker};
use snapstage_localenv::Error;
use snapstage_localenv::invoker::{CliInvoker, Functions, Invoker};
use snapstage_localenv::jobservice::JobService;
use snapstage_localenv::pipeline::{self, Action, Options, Pipeline, RunStatus};
use snapstage_localenv::timeline::Status;

fn pipeline(actions: Vec<Action>) -> Pipeline {
    Pipeline {
        name: "fake-pipeline".into(),
        actions,
    }
}

/// Two actions: the first continues twice (doing a little awaited work each step), the second
/// reads the first one's output variable.
async fn continuation_and_variables(jobs: &JobService, invoker: &impl Invoker) {
    let p = pipeline(vec![
        Action::new(
            "First",
            "First",
            FAKE,
            r#"{"message": "hello", "rounds": 2, "workMs": 5}"#,
        ),
        Action::new(
            "Second",
            "Second",
            FAKE,
            r##"{"message": "#{First.Echo} world from #{codepipeline.PipelineExecutionId}"}"##,
        ),
    ]);
    let run = pipeline::run(&p, jobs, invoker, &Options::default())
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.timeline);

    let statuses: Vec<(&str, Status)> = run
        .timeline
        .entries
        .iter()
        .map(|e| (e.action.as_str(), e.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("First", Status::InProgress),
            ("First", Status::InProgress),
            ("First", Status::Succeeded),
            ("Second", Status::InProgress),
            ("Second", Status::Succeeded),
        ],
        "{}",
        run.timeline
    );
    assert_eq!(run.variable("First", "Echo"), Some("hello"));
    assert_eq!(run.variable("First", "Rounds"), Some("2"));
    assert_eq!(
        run.variable("Second", "Echo"),
        Some(format!("hello world from {}", run.execution_id).as_str())
    );
    // Continuations keep the execution the action started with (from GetJobDetails).
    assert_eq!(
        run.variable("First", "ExecutionKey"),
        Some(format!("fake-pipeline/{}/First", run.execution_id).as_str())
    );

    // Every job got exactly one result; each continuation was a new job.
    let all: Vec<&String> = run.jobs.values().flatten().collect();
    assert_eq!(all.len(), 5);
    for job in &all {
        assert_eq!(jobs.result_calls_for(job), 1, "job {job}");
    }
    assert!(jobs.calls().iter().all(|c| c.error.is_none()));
    let table = run.timeline.render();
    assert!(table.contains("Echo = hello"), "{table}");
    assert!(
        run.summary_line(2)
            .starts_with("pipeline fake-pipeline Succeeded in 2 actions")
    );
}

/// A failing action stops the pipeline; the next action never runs.
async fn failure_stops_the_pipeline(jobs: &JobService, invoker: &impl Invoker) {
    let p = pipeline(vec![
        Action::new("Ok", "Ok", FAKE, r#"{"message": "fine", "rounds": 0}"#),
        Action::new(
            "Broken",
            "Broken",
            FAKE,
            r#"{"fail": "no staging capacity"}"#,
        ),
        Action::new("Never", "Never", FAKE, "{}"),
    ]);
    let run = pipeline::run(&p, jobs, invoker, &Options::default())
        .await
        .unwrap();
    match &run.status {
        RunStatus::Failed { action, reason } => {
            assert_eq!(action, "Broken");
            assert!(reason.contains("ConfigurationError"), "{reason}");
            assert!(reason.contains("no staging capacity"), "{reason}");
        }
        other => panic!("expected a failure, got {other}"),
    }
    assert_eq!(run.timeline.final_status("Ok"), Some(Status::Succeeded));
    assert_eq!(run.timeline.final_status("Broken"), Some(Status::Failed));
    assert_eq!(run.timeline.final_status("Never"), None);
    assert!(!run.jobs.contains_key("Never"));
    assert_eq!(jobs.result_calls_for(&run.jobs["Broken"][0]), 1);
    assert!(run.summary_line(3).contains("Failed at action Broken"));
}

#[tokio::test]
async fn cli_invoker_follows_continuations_and_passes_variables() {
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(Functions::new(bin_dir(), &jobs.url));
    continuation_and_variables(&jobs, &invoker).await;
}

#[tokio::test]
async fn cli_invoker_failure_stops_the_pipeline() {
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(Functions::new(bin_dir(), &jobs.url));
    failure_stops_the_pipeline(&jobs, &invoker).await;
}

#[tokio::test]
async fn lambda_invoker_follows_continuations_and_passes_variables() {
    let jobs = JobService::start().await.unwrap();
    let functions = Functions::new(bin_dir(), &jobs.url);
    let log = common::scratch("lambda_continuations").join(format!("{FAKE}.log"));
    let _ = std::fs::remove_file(&log);
    let Some(invoker) = lambda_invoker(functions, "lambda_continuations").await else {
        return;
    };
    continuation_and_variables(&jobs, &invoker).await;

    // Under Lambda the metrics are on: one EMF document per invocation in the function's log,
    // a standalone JSON line, each run's end with its duration from the first invocation.
    let text = std::fs::read_to_string(&log).unwrap();
    let docs: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.contains("\"_aws\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let outcomes: Vec<&str> = docs
        .iter()
        .map(|d| d["Outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "continued",
            "continued",
            "succeeded",
            "continued",
            "succeeded"
        ],
        "{text}"
    );
    for d in &docs {
        assert_eq!(d["Function"], FAKE);
        assert_eq!(d["_aws"]["CloudWatchMetrics"][0]["Namespace"], "snapstage");
        assert_eq!(
            d["RunDuration"].is_number(),
            d["Outcome"] == "succeeded",
            "{d}"
        );
    }
}

#[tokio::test]
async fn lambda_invoker_failure_stops_the_pipeline() {
    let jobs = JobService::start().await.unwrap();
    let functions = Functions::new(bin_dir(), &jobs.url);
    let Some(invoker) = lambda_invoker(functions, "lambda_failure").await else {
        return;
    };
    failure_stops_the_pipeline(&jobs, &invoker).await;
}

#[tokio::test]
async fn an_unknown_variable_fails_before_the_action_runs() {
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(Functions::new(bin_dir(), &jobs.url));
    let p = pipeline(vec![
        Action::new("First", "First", FAKE, r#"{"rounds": 0}"#),
        Action::new(
            "Second",
            "Second",
            FAKE,
            r##"{"message": "#{Restore.VolumeId}"}"##,
        ),
    ]);
    let run = pipeline::run(&p, &jobs, &invoker, &Options::default())
        .await
        .unwrap();
    match &run.status {
        RunStatus::Failed { action, reason } => {
            assert_eq!(action, "Second");
            assert!(reason.contains("#{Restore.VolumeId}"), "{reason}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        run.jobs["Second"].len(),
        0,
        "no job for an unresolvable action"
    );
}

#[tokio::test]
async fn the_round_bound_stops_an_action_that_never_finishes() {
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(Functions::new(bin_dir(), &jobs.url));
    let p = pipeline(vec![Action::new("Slow", "Slow", FAKE, r#"{"rounds": 10}"#)]);
    let options = Options {
        max_rounds: 3,
        ..Options::default()
    };
    let run = pipeline::run(&p, &jobs, &invoker, &options).await.unwrap();
    match &run.status {
        RunStatus::Failed { action, reason } => {
            assert_eq!(action, "Slow");
            assert!(
                reason.contains("still in progress after 3 jobs"),
                "{reason}"
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(run.timeline.entries.len(), 3);
}

#[tokio::test]
async fn a_missing_binary_says_how_to_build_it() {
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(Functions::new(bin_dir(), &jobs.url));
    let p = pipeline(vec![Action::new("X", "X", "no-such-function", "{}")]);
    let err = pipeline::run(&p, &jobs, &invoker, &Options::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Setup(_)));
    assert!(
        err.to_string().contains("cargo build --workspace --bins"),
        "{err}"
    );
}

#[tokio::test]
async fn an_undelivered_result_fails_the_action() {
    // The job service is gone: the function cannot deliver its result (CLI exit status 3).
    let gone = JobService::start().await.unwrap();
    let url = gone.url.clone();
    drop(gone);
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(Functions::new(bin_dir(), &url).env("AWS_MAX_ATTEMPTS", "1"));
    let p = pipeline(vec![Action::new("X", "X", FAKE, r#"{"rounds": 0}"#)]);
    let run = pipeline::run(&p, &jobs, &invoker, &Options::default())
        .await
        .unwrap();
    match &run.status {
        RunStatus::Failed { reason, .. } => {
            assert!(reason.contains("exit status 3"), "{reason}");
            assert!(reason.contains("would hang"), "{reason}");
        }
        other => panic!("{other}"),
    }
}
