//! The job service double, proven with independent clients: the official
//! `aws-sdk-codepipeline` client (typed errors included) and boto3.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::collections::HashMap;

use aws_sdk_codepipeline::Client;
use aws_sdk_codepipeline::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_codepipeline::types::{ExecutionDetails, FailureDetails, FailureType};
use snapstage_localenv::jobservice::{JobOutcome, JobService, JobSpec};

fn client(url: &str) -> Client {
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_codepipeline::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .endpoint_url(url)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDLOCAL", "secret", None, None, "test"))
        .build();
    Client::from_conf(conf)
}

fn spec() -> JobSpec {
    JobSpec {
        pipeline_name: "shop".into(),
        stage: "Staging".into(),
        action: "Snapshot".into(),
        execution_id: "0f1e2d3c-4b5a-4697-8877-665544332211".into(),
        function_name: Some("snapshot-production".into()),
        user_parameters: Some(r#"{"volumeIds": ["vol-1"]}"#.into()),
        continuation_token: None,
    }
}

fn details(summary: &str) -> ExecutionDetails {
    ExecutionDetails::builder()
        .summary(summary)
        .external_execution_id("shop/exec/Snapshot")
        .percent_complete(100)
        .build()
}

const UNKNOWN_JOB: &str = "00000000-0000-4000-8000-000000000000";

#[tokio::test]
async fn get_job_details_reports_the_pipeline_context() {
    let svc = JobService::start().await.unwrap();
    let job = svc.register_job(spec());
    let out = client(&svc.url)
        .get_job_details()
        .job_id(&job)
        .send()
        .await
        .unwrap();
    let d = out.job_details().unwrap();
    assert_eq!(d.id(), Some(job.as_str()));
    assert_eq!(d.account_id(), Some("123456789012"));
    let data = d.data().unwrap();
    let ctx = data.pipeline_context().unwrap();
    assert_eq!(ctx.pipeline_name(), Some("shop"));
    assert_eq!(ctx.stage().and_then(|s| s.name()), Some("Staging"));
    assert_eq!(ctx.action().and_then(|a| a.name()), Some("Snapshot"));
    assert!(ctx.action().and_then(|a| a.action_execution_id()).is_some());
    assert_eq!(
        ctx.pipeline_execution_id(),
        Some("0f1e2d3c-4b5a-4697-8877-665544332211")
    );
    assert_eq!(
        ctx.pipeline_arn(),
        Some("arn:aws:codepipeline:us-east-1:123456789012:shop")
    );
    let conf = data
        .action_configuration()
        .unwrap()
        .configuration()
        .unwrap();
    assert_eq!(
        conf.get("FunctionName").map(String::as_str),
        Some("snapshot-production")
    );
    assert!(data.artifact_credentials().is_some());

    let calls = svc.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].operation, "GetJobDetails");
    assert_eq!(calls[0].job_id.as_deref(), Some(job.as_str()));
    assert_eq!(calls[0].status, 200);
}

#[tokio::test]
async fn one_result_per_job_and_a_second_is_invalid_job_state() {
    let svc = JobService::start().await.unwrap();
    let cp = client(&svc.url);
    let job = svc.register_job(spec());
    cp.put_job_success_result()
        .job_id(&job)
        .execution_details(details("snapshot snap-1 taken"))
        .output_variables("SnapshotId", "snap-1")
        .output_variables("Backend", "ebs")
        .send()
        .await
        .unwrap();
    match svc.result_for(&job) {
        Some(JobOutcome::Succeeded {
            summary,
            output_variables,
            continuation_token: None,
            percent_complete,
            ..
        }) => {
            assert_eq!(summary.as_deref(), Some("snapshot snap-1 taken"));
            assert_eq!(output_variables["SnapshotId"], "snap-1");
            assert_eq!(output_variables["Backend"], "ebs");
            assert_eq!(percent_complete, Some(100));
        }
        other => panic!("{other:?}"),
    }

    let err = cp
        .put_job_success_result()
        .job_id(&job)
        .execution_details(details("again"))
        .send()
        .await
        .unwrap_err();
    let service_err = err.as_service_error().unwrap();
    assert!(
        service_err.is_invalid_job_state_exception(),
        "{service_err:?}"
    );

    let err = cp
        .put_job_failure_result()
        .job_id(&job)
        .failure_details(
            FailureDetails::builder()
                .r#type(FailureType::JobFailed)
                .message("late failure")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .unwrap()
            .is_invalid_job_state_exception()
    );
    // The first result stands; both rejected calls are recorded.
    assert_eq!(svc.result_for(&job).unwrap().status(), "Succeeded");
    assert_eq!(svc.result_calls_for(&job), 1);
    let rejected: Vec<_> = svc
        .calls()
        .into_iter()
        .filter(|c| c.status == 400)
        .collect();
    assert_eq!(rejected.len(), 2);
    assert!(
        rejected
            .iter()
            .all(|c| c.error.as_deref() == Some("InvalidJobStateException"))
    );
}

#[tokio::test]
async fn unknown_jobs_are_job_not_found() {
    let svc = JobService::start().await.unwrap();
    let cp = client(&svc.url);
    let e = cp
        .get_job_details()
        .job_id(UNKNOWN_JOB)
        .send()
        .await
        .unwrap_err();
    let e = e.into_service_error();
    assert!(e.is_job_not_found_exception(), "{e:?}");
    assert!(e.to_string().contains(UNKNOWN_JOB), "{e}");

    let e = cp
        .put_job_success_result()
        .job_id(UNKNOWN_JOB)
        .execution_details(details("x"))
        .send()
        .await
        .unwrap_err();
    assert!(e.into_service_error().is_job_not_found_exception());

    let e = cp
        .put_job_failure_result()
        .job_id(UNKNOWN_JOB)
        .failure_details(
            FailureDetails::builder()
                .r#type(FailureType::ConfigurationError)
                .message("m")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err();
    assert!(e.into_service_error().is_job_not_found_exception());
}

#[tokio::test]
async fn failure_results_are_recorded_with_their_type() {
    let svc = JobService::start().await.unwrap();
    let job = svc.register_job(spec());
    client(&svc.url)
        .put_job_failure_result()
        .job_id(&job)
        .failure_details(
            FailureDetails::builder()
                .r#type(FailureType::ConfigurationError)
                .message("UserParameters.volumeIds: expected a list of volume ids")
                .external_execution_id("shop/exec/Snapshot")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        svc.result_for(&job),
        Some(JobOutcome::Failed {
            failure_type: "ConfigurationError".into(),
            message: "UserParameters.volumeIds: expected a list of volume ids".into(),
            external_execution_id: Some("shop/exec/Snapshot".into()),
        })
    );
    let call = svc.calls().pop().unwrap();
    assert_eq!(call.operation, "PutJobFailureResult");
    assert_eq!(call.body["failureDetails"]["type"], "ConfigurationError");
}

#[tokio::test]
async fn continuation_tokens_mark_the_job_in_progress() {
    let svc = JobService::start().await.unwrap();
    let job = svc.register_job(spec());
    client(&svc.url)
        .put_job_success_result()
        .job_id(&job)
        .continuation_token("ss1.abc")
        .execution_details(
            ExecutionDetails::builder()
                .summary("copying 3 of 20")
                .percent_complete(15)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let outcome = svc.result_for(&job).unwrap();
    assert_eq!(outcome.status(), "InProgress");
    assert!(matches!(
        outcome,
        JobOutcome::Succeeded { continuation_token: Some(ref t), percent_complete: Some(15), .. } if t == "ss1.abc"
    ));
}

#[tokio::test]
async fn invalid_results_are_validation_errors_and_leave_the_job_open() {
    let svc = JobService::start().await.unwrap();
    let cp = client(&svc.url);
    let job = svc.register_job(spec());

    let validation = |e: aws_sdk_codepipeline::error::SdkError<_, _>| {
        let e: aws_sdk_codepipeline::operation::put_job_success_result::PutJobSuccessResultError =
            e.into_service_error();
        assert!(e.is_validation_exception(), "{e:?}");
        e.to_string()
    };

    // outputVariables together with a continuation token.
    let msg = validation(
        cp.put_job_success_result()
            .job_id(&job)
            .continuation_token("t")
            .output_variables("A", "1")
            .send()
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("continuationToken"), "{msg}");
    // summary over 2048 characters.
    let msg = validation(
        cp.put_job_success_result()
            .job_id(&job)
            .execution_details(details(&"s".repeat(2049)))
            .send()
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("executionDetails.summary"), "{msg}");
    // continuation token over 2048 characters.
    let msg = validation(
        cp.put_job_success_result()
            .job_id(&job)
            .continuation_token("t".repeat(2049))
            .send()
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("continuationToken"), "{msg}");
    // variable key outside [A-Za-z0-9@\-_]+.
    let msg = validation(
        cp.put_job_success_result()
            .job_id(&job)
            .set_output_variables(Some(HashMap::from([(
                "snapshot id".to_string(),
                "x".to_string(),
            )])))
            .send()
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("snapshot id"), "{msg}");
    // failure message over 5000 characters.
    let e = cp
        .put_job_failure_result()
        .job_id(&job)
        .failure_details(
            FailureDetails::builder()
                .r#type(FailureType::JobFailed)
                .message("m".repeat(5001))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_validation_exception(), "{e:?}");
    assert!(e.to_string().contains("failureDetails.message"), "{e}");
    // A job id that is not a UUID.
    let e = cp
        .get_job_details()
        .job_id("not-a-job")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_validation_exception(), "{e:?}");

    // None of that settled the job: a valid result is still accepted.
    assert!(svc.result_for(&job).is_none());
    cp.put_job_success_result()
        .job_id(&job)
        .execution_details(details("ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(svc.result_calls_for(&job), 1);
}

#[tokio::test]
async fn the_wire_format_is_aws_json_1_1() {
    let svc = JobService::start().await.unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // An operation the double does not implement.
    let resp = http
        .post(&svc.url)
        .header("X-Amz-Target", "CodePipeline_20150709.ListPipelines")
        .header("Content-Type", "application/x-amz-json-1.1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let error_type = resp.headers()["x-amzn-errortype"].to_str().unwrap();
    assert!(
        error_type.starts_with("UnknownOperationException:"),
        "{error_type}"
    );
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-amz-json-1.1"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["__type"], "UnknownOperationException");
    assert!(body["message"].as_str().unwrap().contains("ListPipelines"));

    // A successful PutJob* answers 200 with `{}`.
    let job = svc.register_job(spec());
    let resp = http
        .post(&svc.url)
        .header("X-Amz-Target", "CodePipeline_20150709.PutJobSuccessResult")
        .header("Content-Type", "application/x-amz-json-1.1")
        .body(serde_json::json!({ "jobId": job }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "{}");
}

/// The same three operations through boto3 (a second, independent client), when the project's
/// Python venv is there.
#[tokio::test]
async fn boto3_client_agrees() {
    let python = snapstage_localenv::workspace_root().join(".venv/bin/python");
    if !python.is_file() {
        snapstage_localenv::testkit::skip(&format!(
            "boto3_client_agrees: {} not found; run scripts/setup.sh",
            python.display()
        ));
        return;
    }
    let svc = JobService::start().await.unwrap();
    let ok_job = svc.register_job(spec());
    let failed_job = svc.register_job(spec());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobservice_boto3.py");
    let url = svc.url.clone();
    let (a, b) = (ok_job.clone(), failed_job.clone());
    // The job service runs on this runtime: wait for Python on a blocking thread.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args([&url, &a, &b])
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_PROFILE")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "boto3 check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("boto3: all checks passed"), "{stdout}");

    assert_eq!(svc.result_for(&ok_job).unwrap().status(), "Succeeded");
    assert!(matches!(
        svc.result_for(&failed_job),
        Some(JobOutcome::Failed { ref failure_type, .. }) if failure_type == "SystemUnavailable"
    ));
    assert_eq!(svc.result_calls_for(&ok_job), 1);
    assert_eq!(svc.result_calls_for(&failed_job), 1);
}
