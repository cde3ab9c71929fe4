//! The CodePipeline job event a Lambda Invoke action receives, shaped like
//! `events/codepipeline/reference-job.json`.

use serde_json::{Value, json};

/// What goes into one job event.
#[derive(Debug, Clone, Default)]
pub struct JobEventSpec<'a> {
    pub job_id: &'a str,
    pub function_name: &'a str,
    pub user_parameters: &'a str,
    /// Set when CodePipeline continues an action in a new job.
    pub continuation_token: Option<&'a str>,
}

/// `{"CodePipeline.job": {"id", "accountId", "data": {...}}}`.
pub fn job_event(spec: &JobEventSpec<'_>) -> Value {
    let mut data = json!({
        "actionConfiguration": {
            "configuration": {
                "FunctionName": spec.function_name,
                "UserParameters": spec.user_parameters,
            }
        },
        "inputArtifacts": [],
        "outputArtifacts": [],
        "artifactCredentials": artifact_credentials(),
    });
    if let Some(t) = spec.continuation_token {
        data["continuationToken"] = Value::from(t);
    }
    json!({
        "CodePipeline.job": {
            "id": spec.job_id,
            "accountId": crate::jobservice::ACCOUNT_ID,
            "data": data,
        }
    })
}

/// Placeholder artifact credentials (the local pipeline has no artifact store): the shape of
/// the real ones, with an expiry an hour ahead in epoch milliseconds.
pub fn artifact_credentials() -> Value {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    json!({
        "accessKeyId": "ASIALOCALPIPELINE000",
        "secretAccessKey": "local-pipeline-artifact-secret",
        "sessionToken": "local-pipeline-artifact-session",
        "expirationTime": now_ms + 3_600_000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapstage::job::codepipeline::JobEvent;

    #[test]
    fn event_parses_as_the_core_job_event() {
        let v = job_event(&JobEventSpec {
            job_id: "11111111-abcd-1111-abcd-111111abcdef",
            function_name: "snapshot-production",
            user_parameters: r#"{"volumeIds": ["vol-1"]}"#,
            continuation_token: Some("tok"),
        });
        let ev: JobEvent = serde_json::from_value(v).unwrap();
        ev.job.validate().unwrap();
        assert_eq!(ev.job.id, "11111111-abcd-1111-abcd-111111abcdef");
        assert_eq!(ev.job.data.continuation_token.as_deref(), Some("tok"));
        assert_eq!(
            ev.job
                .data
                .action_configuration
                .configuration
                .function_name
                .as_deref(),
            Some("snapshot-production")
        );
        assert!(ev.job.data.artifact_credentials.is_some());
    }

    #[test]
    fn same_keys_as_the_reference_event() {
        let reference: Value =
            serde_json::from_str(include_str!("../../events/codepipeline/reference-job.json"))
                .unwrap();
        let ours = job_event(&JobEventSpec {
            job_id: "x",
            function_name: "f",
            user_parameters: "{}",
            continuation_token: Some("t"),
        });
        let keys = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v["CodePipeline.job"]["data"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            k.sort();
            k
        };
        // The reference also carries an encryptionKey (a KMS-encrypted artifact store).
        let mut expected = keys(&reference);
        expected.retain(|k| k != "encryptionKey");
        assert_eq!(keys(&ours), expected);
        for k in ["accessKeyId", "secretAccessKey", "sessionToken"] {
            assert!(ours["CodePipeline.job"]["data"]["artifactCredentials"][k].is_string());
        }
    }
}
