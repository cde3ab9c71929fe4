//! Contract tests: every payload with a job id gets exactly one result, of the right type.
//! The reporter here records calls in memory; the end-to-end tests use the awsJson1.1 job service.

use std::sync::Mutex;

use serde::Deserialize;
use serde_json::json;

use super::*;
use crate::error::FailureKind;
use crate::job::codepipeline::PipelineContext;

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, JobResult)>>,
    fail_delivery: bool,
    no_context: bool,
    context_unavailable: bool,
}

impl JobReporter for Recorder {
    async fn report(&self, job_id: &str, result: &JobResult) -> Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push((job_id.to_string(), result.clone()));
        if self.fail_delivery {
            return Err(Error::Unavailable {
                backend: "codepipeline",
                message: "connection refused".into(),
                source: None,
            });
        }
        Ok(())
    }
    async fn pipeline_context(&self, _job_id: &str) -> Result<PipelineContext> {
        if self.context_unavailable {
            return Err(Error::Unavailable {
                backend: "codepipeline",
                message: "GetJobDetails: ThrottlingException".into(),
                source: None,
            });
        }
        if self.no_context {
            return Err(Error::Permission {
                backend: "codepipeline",
                message: "GetJobDetails".into(),
                source: None,
            });
        }
        Ok(PipelineContext {
            pipeline_name: Some("shop".into()),
            stage: Some("Data".into()),
            action: Some("Snapshot".into()),
            pipeline_execution_id: Some("exec-42".into()),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Params {
    #[serde(default)]
    mode: String,
    #[serde(default)]
    steps: u32,
    /// A Distributed Map batch's items.
    #[serde(default)]
    items: Option<Vec<Value>>,
}

struct Probe;

impl Function for Probe {
    const NAME: &'static str = "probe";
    type Params = Params;

    async fn step(&self, step: Step<Params>) -> Result<Outcome> {
        match step.params.mode.as_str() {
            "panic" => panic!("boom in the handler"),
            "hang" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                unreachable!()
            }
            "denied" => Err(Error::Permission {
                backend: "ec2",
                message: "UnauthorizedOperation".into(),
                source: None,
            }),
            "backend" => Err(Error::Backend {
                backend: "ec2",
                message: "IncorrectState".into(),
                source: None,
            }),
            "badvar" => Ok(Outcome::Done {
                summary: "x".into(),
                outputs: [("bad key".to_string(), "v".to_string())].into(),
            }),
            _ => {
                let done = step
                    .state
                    .as_ref()
                    .and_then(|s| s["done"].as_u64())
                    .unwrap_or(0)
                    + 1;
                if done < u64::from(step.params.steps) {
                    Ok(Outcome::Continue {
                        summary: format!("{done}/{}", step.params.steps),
                        percent: 50,
                        state: json!({"done": done}),
                    })
                } else {
                    let mut outputs: std::collections::BTreeMap<String, String> =
                        [("Execution".to_string(), step.execution.key.clone())].into();
                    if let Some(items) = &step.params.items {
                        outputs.insert("Items".into(), items.len().to_string());
                        outputs.insert("Keys".into(), json!(items).to_string());
                    }
                    Ok(Outcome::Done {
                        summary: "done".into(),
                        outputs,
                    })
                }
            }
        }
    }
}

fn settings() -> Result<Settings> {
    Settings::from_env(|_| None)
}

fn meta(secs: u64) -> InvocationMeta {
    InvocationMeta {
        request_id: "req-1".into(),
        deadline: SystemTime::now() + Duration::from_secs(secs),
    }
}

fn job(user_parameters: &str, token: Option<&str>) -> Value {
    let mut ev: Value = serde_json::from_str(include_str!(
        "../../../../events/codepipeline/reference-job.json"
    ))
    .unwrap();
    ev["CodePipeline.job"]["data"]["actionConfiguration"]["configuration"]["UserParameters"] =
        json!(user_parameters);
    ev["CodePipeline.job"]["data"]["continuationToken"] = token.map_or(Value::Null, |t| json!(t));
    ev
}

async fn run(c: &Contract<Probe, Recorder>, raw: Value, secs: u64) -> Handled {
    c.handle(raw, meta(secs)).await
}

fn one_result(c: &Contract<Probe, Recorder>) -> JobResult {
    let calls = c.reporter.calls.lock().unwrap();
    assert_eq!(calls.len(), 1, "exactly one result per job, got {calls:?}");
    calls[0].1.clone()
}

fn failure_kind(r: &JobResult) -> FailureKind {
    match r {
        JobResult::Failed { kind, .. } => *kind,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn success_is_reported_once_with_variables_keyed_by_pipeline_execution() {
    let c = Contract::new(Probe, Recorder::default(), settings());
    let h = run(&c, job("{}", None), 60).await;
    assert!(matches!(
        h,
        Handled::Job {
            delivered: Ok(()),
            ..
        }
    ));
    match one_result(&c) {
        JobResult::Succeeded {
            output_variables, ..
        } => {
            assert_eq!(output_variables["Execution"], "shop/exec-42/Snapshot")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn plain_text_user_parameters_fail_as_configuration_error() {
    let c = Contract::new(Probe, Recorder::default(), settings());
    run(&c, job("input_parameter", None), 60).await;
    assert_eq!(
        failure_kind(&one_result(&c)),
        FailureKind::ConfigurationError
    );
}

#[tokio::test]
async fn malformed_job_still_gets_its_one_failure() {
    let c = Contract::new(Probe, Recorder::default(), settings());
    let raw = json!({"CodePipeline.job": {"id": "job-9", "data": "nonsense"}});
    run(&c, raw, 60).await;
    let calls = c.reporter.calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "job-9");
    assert_eq!(failure_kind(&calls[0].1), FailureKind::ConfigurationError);
}

#[tokio::test]
async fn unknown_parameter_is_named() {
    let c = Contract::new(Probe, Recorder::default(), settings());
    run(&c, job(r#"{"mdoe": "x"}"#, None), 60).await;
    match one_result(&c) {
        JobResult::Failed { kind, message, .. } => {
            assert_eq!(kind, FailureKind::ConfigurationError);
            assert!(
                message.starts_with("UserParameters.mdoe: unknown field"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn panic_becomes_job_failed() {
    let c = Contract::new(Probe, Recorder::default(), settings());
    run(&c, job(r#"{"mode": "panic"}"#, None), 60).await;
    match one_result(&c) {
        JobResult::Failed { kind, message, .. } => {
            assert_eq!(kind, FailureKind::JobFailed);
            assert!(message.contains("boom in the handler"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn permission_and_backend_errors_keep_their_types() {
    for (mode, kind) in [
        ("denied", FailureKind::PermissionError),
        ("backend", FailureKind::JobFailed),
    ] {
        let c = Contract::new(Probe, Recorder::default(), settings());
        run(&c, job(&format!(r#"{{"mode": "{mode}"}}"#), None), 60).await;
        assert_eq!(failure_kind(&one_result(&c)), kind, "{mode}");
    }
}

#[tokio::test]
async fn invalid_output_variable_is_a_failure_not_a_rejected_call() {
    let c = Contract::new(Probe, Recorder::default(), settings());
    run(&c, job(r#"{"mode": "badvar"}"#, None), 60).await;
    assert_eq!(failure_kind(&one_result(&c)), FailureKind::JobFailed);
}

#[tokio::test(start_paused = true)]
async fn deadline_answers_in_progress_then_fails_after_repeated_stalls() {
    let mut token: Option<String> = None;
    for attempt in 1..=MAX_STALLS {
        let c = Contract::new(Probe, Recorder::default(), settings());
        // 15 s left, 10 s margin: the step has 5 s and hangs.
        run(&c, job(r#"{"mode": "hang"}"#, token.as_deref()), 15).await;
        match one_result(&c) {
            JobResult::InProgress {
                continuation_token, ..
            } if attempt < MAX_STALLS => {
                let decoded = Continuation::decode(&continuation_token, "probe").unwrap();
                assert_eq!(decoded.stalls, attempt);
                assert_eq!(decoded.execution, "shop/exec-42/Snapshot");
                token = Some(continuation_token);
            }
            JobResult::Failed { kind, message, .. } if attempt == MAX_STALLS => {
                assert_eq!(kind, FailureKind::JobFailed);
                assert!(message.contains("no progress"), "{message}");
            }
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn continuation_resumes_state_and_execution_across_jobs() {
    let mut token = None;
    let mut results = vec![];
    for _ in 0..3 {
        let c = Contract::new(
            Probe,
            Recorder {
                no_context: token.is_some(),
                ..Default::default()
            },
            settings(),
        );
        run(&c, job(r#"{"steps": 3}"#, token.as_deref()), 60).await;
        let r = one_result(&c);
        if let JobResult::InProgress {
            continuation_token, ..
        } = &r
        {
            token = Some(continuation_token.clone());
        }
        results.push(r);
    }
    assert!(matches!(
        results[0],
        JobResult::InProgress {
            percent_complete: 50,
            ..
        }
    ));
    assert!(matches!(results[1], JobResult::InProgress { .. }));
    match &results[2] {
        // The execution key comes from the token, not from a second GetJobDetails.
        JobResult::Succeeded {
            output_variables, ..
        } => {
            assert_eq!(output_variables["Execution"], "shop/exec-42/Snapshot")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn token_from_another_function_is_a_configuration_error() {
    let other = Continuation {
        function: "other".into(),
        execution: "e".into(),
        stalls: 0,
        state: json!({}),
        started_ms: None,
    };
    let c = Contract::new(Probe, Recorder::default(), settings());
    run(&c, job("{}", Some(&other.encode().unwrap())), 60).await;
    assert_eq!(
        failure_kind(&one_result(&c)),
        FailureKind::ConfigurationError
    );
}

#[tokio::test]
async fn without_get_job_details_the_job_id_keys_the_run() {
    let c = Contract::new(
        Probe,
        Recorder {
            no_context: true,
            ..Default::default()
        },
        settings(),
    );
    run(&c, job("{}", None), 60).await;
    match one_result(&c) {
        JobResult::Succeeded {
            output_variables, ..
        } => {
            assert_eq!(
                output_variables["Execution"],
                "job/11111111-abcd-1111-abcd-111111abcdef"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn when_get_job_details_is_unavailable_nothing_starts_and_the_job_fails_retryably() {
    let c = Contract::new(
        Probe,
        Recorder {
            context_unavailable: true,
            ..Default::default()
        },
        settings(),
    );
    // Were the step run, it would answer PermissionError.
    run(&c, job(r#"{"mode": "denied"}"#, None), 60).await;
    let result = one_result(&c);
    assert_eq!(failure_kind(&result), FailureKind::SystemUnavailable);
    let JobResult::Failed { message, .. } = &result else {
        panic!("{result:?}")
    };
    assert!(message.contains("nothing was started"), "{message}");
    assert!(message.contains("ThrottlingException"), "{message}");
}

#[tokio::test]
async fn undeliverable_result_is_visible_to_the_caller() {
    let c = Contract::new(
        Probe,
        Recorder {
            fail_delivery: true,
            ..Default::default()
        },
        settings(),
    );
    let h = run(&c, job("{}", None), 60).await;
    assert!(matches!(
        h,
        Handled::Job {
            delivered: Err(_),
            ..
        }
    ));
    assert_eq!(h.to_json("probe")["reportedToCodePipeline"], json!(false));
}

#[tokio::test]
async fn bad_environment_fails_every_job_with_configuration_error() {
    let bad = Settings::from_env(|k| (k == "SNAPSTAGE_DEFAULTS").then(|| "not json".to_string()));
    let c = Contract::new(Probe, Recorder::default(), bad);
    run(&c, job("{}", None), 60).await;
    match one_result(&c) {
        JobResult::Failed { kind, message, .. } => {
            assert_eq!(kind, FailureKind::ConfigurationError);
            assert!(message.contains("SNAPSTAGE_DEFAULTS"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn direct_requests_answer_the_caller_and_never_call_codepipeline() {
    let c = Contract::new(Probe, Recorder::default(), settings());
    let h = run(&c, json!({"steps": 1, "executionId": "build-7"}), 60).await;
    let v = h.to_json("probe");
    assert_eq!(v["status"], "Succeeded");
    assert_eq!(v["outputVariables"]["Execution"], "build-7");
    let h = run(&c, json!({"steps": "x"}), 60).await;
    let v = h.to_json("probe");
    assert_eq!(v["failureType"], "ConfigurationError");
    assert!(
        v["message"].as_str().unwrap().starts_with("request.steps"),
        "{v}"
    );
    assert!(c.reporter.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn codecommit_events_are_keyed_by_commit_or_ignored_with_reason() {
    let c = Contract::new(Probe, Recorder::default(), settings());
    let raw: Value =
        serde_json::from_str(include_str!("../../../../events/codecommit/push-main.json")).unwrap();
    let v = run(&c, raw, 60).await.to_json("probe");
    assert_eq!(v["status"], "Succeeded", "{v}");
    assert_eq!(
        v["executionId"],
        "codecommit/shop-api/a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
    );
    let raw: Value = serde_json::from_str(include_str!(
        "../../../../events/codecommit/tag-created.json"
    ))
    .unwrap();
    let v = run(&c, raw, 60).await.to_json("probe");
    assert_eq!(v["status"], "Ignored");
}

#[tokio::test]
async fn result_json_never_contains_artifact_credentials() {
    let c = Contract::new(Probe, Recorder::default(), settings());
    for raw in [
        job("{}", None),
        job("input_parameter", None),
        job(r#"{"mode": "panic"}"#, None),
    ] {
        let s = run(&c, raw, 60).await.to_json("probe").to_string();
        assert!(
            !s.contains("secret_key") && !s.contains("session_token"),
            "{s}"
        );
    }
}

#[test]
fn lambda_deadlines_in_epoch_ms_or_as_an_emulator_budget() {
    let at = deadline_from_epoch_ms(1_767_225_600_000);
    assert_eq!(at, UNIX_EPOCH + Duration::from_millis(1_767_225_600_000));
    // `cargo lambda watch` sends `600000`: ten minutes from now, not 1970.
    let left = deadline_from_epoch_ms(600_000)
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(590) && left <= Duration::from_secs(600),
        "{left:?}"
    );
}

#[tokio::test]
async fn the_run_start_is_carried_by_continuations_and_stalls() {
    // Three steps, then a stalled one: every invocation reports the first one's start.
    let mut token: Option<String> = None;
    let mut starts = vec![];
    for params in [r#"{"steps": 3}"#, r#"{"steps": 3}"#, r#"{"mode": "hang"}"#] {
        let c = Contract::new(Probe, Recorder::default(), settings());
        let m = c
            .handle_measured(job(params, token.as_deref()), meta(15))
            .await;
        starts.push(m.run_started_ms);
        if let JobResult::InProgress {
            continuation_token, ..
        } = one_result(&c)
        {
            token = Some(continuation_token);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = starts[0].expect("a new run starts now");
    assert_eq!(starts, vec![Some(first); 3]);
    let c = Continuation::decode(token.as_deref().unwrap(), "probe").unwrap();
    assert_eq!((c.stalls, c.started_ms), (1, Some(first)));

    // A token from before the start was recorded: no start, still resumed.
    let old = Continuation {
        started_ms: None,
        ..c
    };
    let c = Contract::new(Probe, Recorder::default(), settings());
    let m = c
        .handle_measured(
            job(r#"{"steps": 2}"#, Some(&old.encode().unwrap())),
            meta(60),
        )
        .await;
    assert_eq!(m.run_started_ms, None);
    assert!(matches!(one_result(&c), JobResult::Succeeded { .. }));
}

#[tokio::test]
async fn a_distributed_map_batch_answers_flat_and_never_in_progress() {
    let c = Contract::new(Probe, Recorder::default(), settings());
    let batch = |steps: u32| {
        json!({"Items": [{"Key": "a"}, {"Key": "b"}],
            "BatchInput": {"steps": steps, "executionId": "map-run-1"}})
    };
    let h = run(&c, batch(1), 60).await;
    let v = h.to_json("probe");
    assert_eq!(v["status"], "Succeeded", "{v}");
    assert_eq!(v["executionId"], "map-run-1");
    // Output variables by their camelCase names, numbers and arrays as JSON.
    assert_eq!(v["execution"], "map-run-1");
    assert_eq!(v["items"], 2);
    assert_eq!(v["keys"], json!([{"Key": "a"}, {"Key": "b"}]));
    assert!(v.get("outputVariables").is_none(), "{v}");

    // A batch that would continue fails instead: Step Functions cannot continue it; its retry
    // resumes from the step's checkpoint.
    let h = run(&c, batch(3), 60).await;
    let Handled::Direct { result, batch, .. } = &h else {
        panic!("{h:?}")
    };
    assert!(batch);
    assert_eq!(failure_kind(result), FailureKind::SystemUnavailable);
    let v = h.to_json("probe");
    assert_eq!(v["status"], "Failed", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("retry of the same batch resumes"),
        "{v}"
    );
    assert!(
        c.reporter.calls.lock().unwrap().is_empty(),
        "no CodePipeline call"
    );

    // The same request as a plain direct request continues.
    let h = run(&c, json!({"steps": 3, "executionId": "x"}), 60).await;
    assert_eq!(h.to_json("probe")["status"], "InProgress");
}
