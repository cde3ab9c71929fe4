//! Where we answer CodePipeline: the job event's shape, the result we send, and the reporter
//! that sends it (PutJobSuccessResult / PutJobFailureResult, GetJobDetails).
//!
//! The event types are our own: `aws_lambda_events`' CodePipeline types drop `encryptionKey` and
//! `expirationTime` and misname the output artifacts. `Debug` on anything holding credentials is
//! redacted so a stray `{:?}` cannot leak them.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::aws::aws_error;
use crate::error::{Error, FailureKind, Result};

/// Limits from the CodePipeline API reference.
pub const MAX_SUMMARY: usize = 2048;
pub const MAX_EXTERNAL_ID: usize = 1500;
pub const MAX_FAILURE_MESSAGE: usize = 5000;
pub const MAX_CONTINUATION_TOKEN: usize = 2048;
pub const MAX_OUTPUT_VARIABLES_BYTES: usize = 122_880;
pub const MAX_ARTIFACTS: usize = 5;

/// `{"CodePipeline.job": {...}}`.
#[derive(Deserialize, Serialize, Clone, Debug)]
pub struct JobEvent {
    #[serde(rename = "CodePipeline.job")]
    pub job: Job,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    pub account_id: String,
    pub data: JobData,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct JobData {
    pub action_configuration: ActionConfiguration,
    #[serde(default)]
    pub input_artifacts: Vec<Artifact>,
    #[serde(default)]
    pub output_artifacts: Vec<Artifact>,
    #[serde(default)]
    pub artifact_credentials: Option<ArtifactCredentials>,
    #[serde(default)]
    pub continuation_token: Option<String>,
    #[serde(default)]
    pub encryption_key: Option<EncryptionKey>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
pub struct ActionConfiguration {
    pub configuration: ActionConfigurationValues,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default)]
pub struct ActionConfigurationValues {
    #[serde(rename = "FunctionName", default)]
    pub function_name: Option<String>,
    #[serde(rename = "UserParameters", default)]
    pub user_parameters: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub name: String,
    #[serde(default)]
    pub revision: Option<String>,
    pub location: ArtifactLocation,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactLocation {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub s3_location: Option<S3Location>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct S3Location {
    pub bucket_name: String,
    pub object_key: String,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    #[serde(default)]
    pub expiration_time: Option<serde_json::Value>,
}

impl fmt::Debug for ArtifactCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ArtifactCredentials(redacted)")
    }
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionKey {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// Structural checks the typed parse cannot express.
    pub fn validate(&self) -> Result<()> {
        if self.id.trim().is_empty() {
            return Err(Error::Event("CodePipeline.job.id: empty job id".into()));
        }
        for (name, list) in [
            ("inputArtifacts", &self.data.input_artifacts),
            ("outputArtifacts", &self.data.output_artifacts),
        ] {
            if list.len() > MAX_ARTIFACTS {
                return Err(Error::Event(format!(
                    "CodePipeline.job.data.{name}: {} artifacts, CodePipeline allows at most {MAX_ARTIFACTS}",
                    list.len()
                )));
            }
        }
        if let Some(up) = &self.data.action_configuration.configuration.user_parameters
            && up.chars().count() > 1000
        {
            return Err(Error::parameter(
                "UserParameters",
                format!(
                    "{} characters, CodePipeline allows at most 1000",
                    up.chars().count()
                ),
            ));
        }
        Ok(())
    }
}

/// What a step ended with, before it is sent anywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status")]
pub enum JobResult {
    Succeeded {
        summary: String,
        #[serde(rename = "externalExecutionId")]
        external_execution_id: String,
        #[serde(rename = "outputVariables")]
        output_variables: BTreeMap<String, String>,
    },
    InProgress {
        summary: String,
        #[serde(rename = "externalExecutionId")]
        external_execution_id: String,
        #[serde(rename = "percentComplete")]
        percent_complete: u8,
        #[serde(rename = "continuationToken")]
        continuation_token: String,
    },
    Failed {
        #[serde(rename = "failureType")]
        kind: FailureKind,
        message: String,
        #[serde(rename = "externalExecutionId")]
        external_execution_id: String,
    },
}

impl JobResult {
    pub fn failed(err: &Error, external_execution_id: &str) -> Self {
        Self::Failed {
            kind: err.failure_kind(),
            message: truncate(&err.to_string(), MAX_FAILURE_MESSAGE),
            external_execution_id: truncate(external_execution_id, MAX_EXTERNAL_ID),
        }
    }

    pub fn status(&self) -> &'static str {
        match self {
            Self::Succeeded { .. } => "Succeeded",
            Self::InProgress { .. } => "InProgress",
            Self::Failed { .. } => "Failed",
        }
    }
}

/// Truncates to at most `max` characters, on a character boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Checks output variables against CodePipeline's rules: keys `[A-Za-z0-9@\-_]+`, values
/// non-empty, 122,880 bytes in total.
pub fn validate_output_variables(vars: &BTreeMap<String, String>) -> Result<()> {
    let mut total = 0usize;
    for (k, v) in vars {
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '-' | '_'))
        {
            return Err(Error::Internal(format!(
                "output variable key {k:?} is not [A-Za-z0-9@\\-_]+"
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_OUTPUT_VARIABLES_BYTES {
        return Err(Error::Internal(format!(
            "output variables take {total} bytes, CodePipeline allows {MAX_OUTPUT_VARIABLES_BYTES}"
        )));
    }
    Ok(())
}

/// Where the pipeline run a job belongs to is found (GetJobDetails `pipelineContext`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineContext {
    pub pipeline_name: Option<String>,
    pub stage: Option<String>,
    pub action: Option<String>,
    pub pipeline_execution_id: Option<String>,
}

/// Sends a job's one result. Implemented over aws-sdk-codepipeline; tests may use any endpoint
/// that speaks the same protocol (`AWS_ENDPOINT_URL_CODEPIPELINE`).
pub trait JobReporter: Send + Sync {
    fn report(&self, job_id: &str, result: &JobResult) -> impl Future<Output = Result<()>> + Send;
    fn pipeline_context(
        &self,
        job_id: &str,
    ) -> impl Future<Output = Result<PipelineContext>> + Send;
}

/// The real reporter.
#[derive(Clone, Debug)]
pub struct CodePipelineReporter {
    client: aws_sdk_codepipeline::Client,
}

impl CodePipelineReporter {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_codepipeline::Client::new(config),
        }
    }
}

impl JobReporter for CodePipelineReporter {
    async fn report(&self, job_id: &str, result: &JobResult) -> Result<()> {
        use aws_sdk_codepipeline::types::{ExecutionDetails, FailureDetails, FailureType};
        match result {
            JobResult::Succeeded {
                summary,
                external_execution_id,
                output_variables,
            } => {
                validate_output_variables(output_variables)?;
                let details = ExecutionDetails::builder()
                    .summary(truncate(summary, MAX_SUMMARY))
                    .external_execution_id(truncate(external_execution_id, MAX_EXTERNAL_ID))
                    .percent_complete(100)
                    .build();
                let mut req = self
                    .client
                    .put_job_success_result()
                    .job_id(job_id)
                    .execution_details(details);
                if !output_variables.is_empty() {
                    req = req
                        .set_output_variables(Some(output_variables.clone().into_iter().collect()));
                }
                req.send()
                    .await
                    .map_err(|e| aws_error("codepipeline", "PutJobSuccessResult", e))?;
            }
            JobResult::InProgress {
                summary,
                external_execution_id,
                percent_complete,
                continuation_token,
            } => {
                if continuation_token.is_empty()
                    || continuation_token.len() > MAX_CONTINUATION_TOKEN
                {
                    return Err(Error::Internal(format!(
                        "continuation token of {} chars is outside 1..={MAX_CONTINUATION_TOKEN}",
                        continuation_token.len()
                    )));
                }
                let details = ExecutionDetails::builder()
                    .summary(truncate(summary, MAX_SUMMARY))
                    .external_execution_id(truncate(external_execution_id, MAX_EXTERNAL_ID))
                    .percent_complete(i32::from((*percent_complete).min(99)))
                    .build();
                self.client
                    .put_job_success_result()
                    .job_id(job_id)
                    .continuation_token(continuation_token)
                    .execution_details(details)
                    .send()
                    .await
                    .map_err(|e| aws_error("codepipeline", "PutJobSuccessResult", e))?;
            }
            JobResult::Failed {
                kind,
                message,
                external_execution_id,
            } => {
                let details = FailureDetails::builder()
                    .r#type(FailureType::from(kind.as_str()))
                    .message(truncate(message, MAX_FAILURE_MESSAGE))
                    .external_execution_id(truncate(external_execution_id, MAX_EXTERNAL_ID))
                    .build()
                    .map_err(|e| Error::Internal(format!("failure details: {e}")))?;
                self.client
                    .put_job_failure_result()
                    .job_id(job_id)
                    .failure_details(details)
                    .send()
                    .await
                    .map_err(|e| aws_error("codepipeline", "PutJobFailureResult", e))?;
            }
        }
        Ok(())
    }

    async fn pipeline_context(&self, job_id: &str) -> Result<PipelineContext> {
        let out = self
            .client
            .get_job_details()
            .job_id(job_id)
            .send()
            .await
            .map_err(|e| aws_error("codepipeline", "GetJobDetails", e))?;
        let ctx = out
            .job_details()
            .and_then(|d| d.data())
            .and_then(|d| d.pipeline_context());
        Ok(PipelineContext {
            pipeline_name: ctx.and_then(|c| c.pipeline_name()).map(str::to_string),
            stage: ctx
                .and_then(|c| c.stage())
                .and_then(|s| s.name())
                .map(str::to_string),
            action: ctx
                .and_then(|c| c.action())
                .and_then(|a| a.name())
                .map(str::to_string),
            pipeline_execution_id: ctx
                .and_then(|c| c.pipeline_execution_id())
                .map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = include_str!("../../../events/codepipeline/reference-job.json");

    #[test]
    fn reference_event_parses_with_encryption_key_and_continuation() {
        let ev: JobEvent = serde_json::from_str(REFERENCE).unwrap();
        assert_eq!(ev.job.id, "11111111-abcd-1111-abcd-111111abcdef");
        assert_eq!(ev.job.data.encryption_key.as_ref().unwrap().kind, "KMS");
        assert_eq!(ev.job.data.continuation_token.as_deref(), Some("token_ID"));
        assert_eq!(ev.job.data.input_artifacts.len(), 1);
        ev.job.validate().unwrap();
    }

    #[test]
    fn debug_never_prints_credentials() {
        let ev: JobEvent = serde_json::from_str(REFERENCE).unwrap();
        let dbg = format!("{:?} {:?}", ev.job, ev.job.data.artifact_credentials);
        assert!(!dbg.contains("secret_key"), "{dbg}");
        assert!(!dbg.contains("session_token"), "{dbg}");
    }

    #[test]
    fn output_variable_keys_follow_codepipeline_rules() {
        let mut v = BTreeMap::new();
        v.insert("SnapshotId".to_string(), "snap-1".to_string());
        v.insert("a@b-c_d".to_string(), "x".to_string());
        validate_output_variables(&v).unwrap();
        v.insert("bad key".to_string(), "x".to_string());
        assert!(validate_output_variables(&v).is_err());
        let mut big = BTreeMap::new();
        big.insert("K".to_string(), "x".repeat(MAX_OUTPUT_VARIABLES_BYTES));
        assert!(validate_output_variables(&big).is_err());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "é".repeat(10);
        let t = truncate(&s, 4);
        assert_eq!(t.chars().count(), 4);
        assert_eq!(truncate("abc", 4), "abc");
    }

    #[test]
    fn too_many_artifacts_is_an_event_error() {
        let mut ev: JobEvent = serde_json::from_str(REFERENCE).unwrap();
        let a = ev.job.data.input_artifacts[0].clone();
        ev.job.data.input_artifacts = vec![a; 6];
        let err = ev.job.validate().unwrap_err();
        assert!(err.to_string().contains("inputArtifacts"), "{err}");
    }
}
