//! A CodePipeline job service double: the three job-worker operations a Lambda Invoke action
//! uses, over HTTP/1.1 in the awsJson1.1 protocol exactly as `aws-sdk-codepipeline` speaks it.
//!
//! `POST /`, `X-Amz-Target: CodePipeline_20150709.<Operation>`,
//! `Content-Type: application/x-amz-json-1.1`, JSON bodies. Errors are HTTP 400 with the
//! `x-amzn-ErrorType` header and a `{"__type", "message"}` body (the SDK reads the header first,
//! then `code`, then `__type`, and strips everything after a `:`).
//!
//! Validation follows the CodePipeline API reference: job ids are UUIDs, a job takes exactly one
//! result, `outputVariables` never come with a `continuationToken`, and the length limits of
//! `summary`, `message`, `externalExecutionId`, `continuationToken` and the variable keys hold.
//! Every call is recorded, valid or not, so tests can assert what a function sent.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The awsJson1.1 target prefix of CodePipeline (its Smithy service shape and API version).
pub const TARGET_PREFIX: &str = "CodePipeline_20150709.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The account every job belongs to.
pub const ACCOUNT_ID: &str = "123456789012";
const REGION: &str = "us-east-1";

/// Where a job belongs: what GetJobDetails reports as its `pipelineContext`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobSpec {
    pub pipeline_name: String,
    pub stage: String,
    pub action: String,
    /// The pipeline execution id (`pipelineContext.pipelineExecutionId`).
    pub execution_id: String,
    /// `actionConfiguration.configuration.FunctionName`, when known.
    pub function_name: Option<String>,
    /// `actionConfiguration.configuration.UserParameters`, when known.
    pub user_parameters: Option<String>,
    /// Set on the jobs CodePipeline creates to continue an action.
    pub continuation_token: Option<String>,
}

/// One call the service received, valid or not.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The operation from `X-Amz-Target` (without the prefix), or the raw header value.
    pub operation: String,
    pub job_id: Option<String>,
    /// The request body (`Value::Null` when it was not JSON).
    pub body: Value,
    pub status: u16,
    /// The error code returned, if any (`JobNotFoundException`, ...).
    pub error: Option<String>,
}

impl Call {
    /// True for an accepted PutJobSuccessResult / PutJobFailureResult.
    pub fn is_result(&self) -> bool {
        self.error.is_none()
            && matches!(
                self.operation.as_str(),
                "PutJobSuccessResult" | "PutJobFailureResult"
            )
    }
}

/// The one result a job received.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Succeeded {
        summary: Option<String>,
        external_execution_id: Option<String>,
        percent_complete: Option<i64>,
        /// Present when the action continues in a new job.
        continuation_token: Option<String>,
        output_variables: BTreeMap<String, String>,
        current_revision: Option<Value>,
    },
    Failed {
        failure_type: String,
        message: String,
        external_execution_id: Option<String>,
    },
}

impl JobOutcome {
    /// `Succeeded`, `InProgress` (success with a continuation token) or `Failed`.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Succeeded {
                continuation_token: Some(_),
                ..
            } => "InProgress",
            Self::Succeeded { .. } => "Succeeded",
            Self::Failed { .. } => "Failed",
        }
    }

    /// The summary (success) or the failure type and message (failure).
    pub fn summary(&self) -> String {
        match self {
            Self::Succeeded { summary, .. } => summary.clone().unwrap_or_default(),
            Self::Failed {
                failure_type,
                message,
                ..
            } => format!("{failure_type}: {message}"),
        }
    }
}

#[derive(Debug)]
struct Job {
    spec: JobSpec,
    action_execution_id: String,
    outcome: Option<JobOutcome>,
}

#[derive(Debug, Default)]
struct State {
    jobs: BTreeMap<String, Job>,
    calls: Vec<Call>,
}

/// A running job service; stops (and closes its connections) when dropped.
#[derive(Debug)]
pub struct JobService {
    /// `http://127.0.0.1:<port>`: set `AWS_ENDPOINT_URL_CODEPIPELINE` to it.
    pub url: String,
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for JobService {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl JobService {
    /// Binds 127.0.0.1 on an ephemeral port and serves on the current Tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let server = tokio::spawn(async move {
            // Owned by the accept loop: aborting the loop drops the set and every connection.
            let mut connections = JoinSet::new();
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(_) => continue,
                };
                while connections.try_join_next().is_some() {}
                let state = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            url: format!("http://{addr}"),
            addr,
            state,
            server,
        })
    }

    /// Creates a job the way CodePipeline does when an action starts (or continues).
    pub fn register_job(&self, spec: JobSpec) -> String {
        let job_id = new_uuid();
        let job = Job {
            spec,
            action_execution_id: new_uuid(),
            outcome: None,
        };
        lock(&self.state).jobs.insert(job_id.clone(), job);
        job_id
    }

    /// Every call received so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// The result a job received, if any.
    pub fn result_for(&self, job_id: &str) -> Option<JobOutcome> {
        lock(&self.state)
            .jobs
            .get(job_id)
            .and_then(|j| j.outcome.clone())
    }

    /// The accepted result calls for one job (a correct function makes exactly one).
    pub fn result_calls_for(&self, job_id: &str) -> usize {
        lock(&self.state)
            .calls
            .iter()
            .filter(|c| c.is_result() && c.job_id.as_deref() == Some(job_id))
            .count()
    }
}

/// A new pipeline execution id (CodePipeline's are UUIDs too).
pub fn new_execution_id() -> String {
    new_uuid()
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the maps half-updated: recover the data.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A random-looking, unique v4-shaped UUID (CodePipeline job ids match
/// `[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`).
fn new_uuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let a = splitmix(nanos ^ u64::from(std::process::id()).rotate_left(32) ^ n);
    let b = splitmix(a ^ n.wrapping_add(0x9e37_79b9));
    let hi = (a & 0xffff_ffff_ffff_0fff) | 0x4000;
    let lo = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An error the service returns: code and message.
#[derive(Debug)]
struct ApiError {
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// CodePipeline's (Coral's) wording for a failed constraint.
    fn constraint(path: &str, value: &str, constraint: &str) -> Self {
        let shown: String = value.chars().take(64).collect();
        Self::new(
            "ValidationException",
            format!(
                "1 validation error detected: Value '{shown}' at '{path}' failed to satisfy constraint: {constraint}"
            ),
        )
    }
    fn missing(path: &str) -> Self {
        Self::new(
            "ValidationException",
            format!(
                "1 validation error detected: Value null at '{path}' failed to satisfy constraint: Member must not be null"
            ),
        )
    }
}

async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let operation = target
        .strip_prefix(TARGET_PREFIX)
        .unwrap_or(&target)
        .to_string();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let job_id = parsed
        .as_ref()
        .and_then(|v| v.get("jobId"))
        .and_then(Value::as_str)
        .map(str::to_string);

    let mut st = lock(state);
    let result = if method != Method::POST || path != "/" {
        Err(ApiError::new(
            "UnknownOperationException",
            format!("{method} {path}: awsJson1.1 requests are POST /"),
        ))
    } else if !target.starts_with(TARGET_PREFIX) {
        Err(ApiError::new(
            "UnknownOperationException",
            format!("X-Amz-Target {target:?} does not name a CodePipeline_20150709 operation"),
        ))
    } else if !content_type.starts_with(CONTENT_TYPE) {
        Err(ApiError::new(
            "SerializationException",
            format!("Content-Type {content_type:?}: expected {CONTENT_TYPE}"),
        ))
    } else {
        match &parsed {
            Some(Value::Object(input)) => dispatch(&mut st, &operation, input),
            _ => Err(ApiError::new(
                "SerializationException",
                "the request body is not a JSON object",
            )),
        }
    };
    let (status, out, error) = match result {
        Ok(v) => (StatusCode::OK, v, None),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            json!({"__type": e.code, "message": e.message}),
            Some(e),
        ),
    };
    st.calls.push(Call {
        operation,
        job_id,
        body: parsed.unwrap_or(Value::Null),
        status: status.as_u16(),
        error: error.as_ref().map(|e| e.code.to_string()),
    });
    drop(st);

    let mut resp = Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
        .header("x-amzn-RequestId", new_uuid());
    if let Some(e) = &error {
        // As the real service does: the code, then the Coral namespace after a colon.
        resp = resp.header(
            "x-amzn-ErrorType",
            format!(
                "{}:http://internal.amazon.com/coral/com.amazonaws.codepipeline/",
                e.code
            ),
        );
    }
    let bytes = Bytes::from(out.to_string());
    resp.body(Full::new(bytes.clone()))
        .unwrap_or_else(|_| Response::new(Full::new(bytes)))
}

type Input = Map<String, Value>;

fn dispatch(st: &mut State, operation: &str, input: &Input) -> Result<Value, ApiError> {
    match operation {
        "PutJobSuccessResult" => put_success(st, input),
        "PutJobFailureResult" => put_failure(st, input),
        "GetJobDetails" => get_job_details(st, input),
        other => Err(ApiError::new(
            "UnknownOperationException",
            format!("unknown operation {other:?}"),
        )),
    }
}

fn put_success(st: &mut State, input: &Input) -> Result<Value, ApiError> {
    let job_id = job_id(input)?;
    let token = opt_string(input, "continuationToken", 1, 2048)?;
    let mut summary = None;
    let mut external_execution_id = None;
    let mut percent_complete = None;
    if let Some(d) = input.get("executionDetails") {
        let d = object(d, "executionDetails")?;
        summary = opt_string(d, "summary", 1, 2048)
            .map_err(|e| rename(e, "summary", "executionDetails.summary"))?;
        external_execution_id = opt_string(d, "externalExecutionId", 1, 1500).map_err(|e| {
            rename(
                e,
                "externalExecutionId",
                "executionDetails.externalExecutionId",
            )
        })?;
        if let Some(p) = d.get("percentComplete") {
            let n = p
                .as_i64()
                .filter(|n| (0..=100).contains(n))
                .ok_or_else(|| {
                    ApiError::constraint(
                        "executionDetails.percentComplete",
                        &p.to_string(),
                        "Member must have value between 0 and 100",
                    )
                })?;
            percent_complete = Some(n);
        }
    }
    let output_variables = match input.get("outputVariables") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => output_variables(v)?,
    };
    if token.is_some() && !output_variables.is_empty() {
        return Err(ApiError::new(
            "ValidationException",
            "Output variables can only be set when the job is completed: outputVariables cannot be used together with continuationToken",
        ));
    }
    let current_revision = match input.get("currentRevision") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let r = object(v, "currentRevision")?;
            required_string(r, "revision", 1, 1500)
                .map_err(|e| rename(e, "revision", "currentRevision.revision"))?;
            required_string(r, "changeIdentifier", 1, 100)
                .map_err(|e| rename(e, "changeIdentifier", "currentRevision.changeIdentifier"))?;
            Some(v.clone())
        }
    };
    settle(
        st,
        &job_id,
        JobOutcome::Succeeded {
            summary,
            external_execution_id,
            percent_complete,
            continuation_token: token,
            output_variables,
            current_revision,
        },
    )
}

fn put_failure(st: &mut State, input: &Input) -> Result<Value, ApiError> {
    let job_id = job_id(input)?;
    let d = input
        .get("failureDetails")
        .ok_or_else(|| ApiError::missing("failureDetails"))?;
    let d = object(d, "failureDetails")?;
    let kind =
        required_string(d, "type", 1, 64).map_err(|e| rename(e, "type", "failureDetails.type"))?;
    const TYPES: [&str; 6] = [
        "JobFailed",
        "ConfigurationError",
        "PermissionError",
        "RevisionOutOfSync",
        "RevisionUnavailable",
        "SystemUnavailable",
    ];
    if !TYPES.contains(&kind.as_str()) {
        return Err(ApiError::constraint(
            "failureDetails.type",
            &kind,
            &format!("Member must satisfy enum value set: [{}]", TYPES.join(", ")),
        ));
    }
    let message = required_string(d, "message", 1, 5000)
        .map_err(|e| rename(e, "message", "failureDetails.message"))?;
    let external_execution_id = opt_string(d, "externalExecutionId", 1, 1500).map_err(|e| {
        rename(
            e,
            "externalExecutionId",
            "failureDetails.externalExecutionId",
        )
    })?;
    settle(
        st,
        &job_id,
        JobOutcome::Failed {
            failure_type: kind,
            message,
            external_execution_id,
        },
    )
}

/// Records a job's one result.
fn settle(st: &mut State, job_id: &str, outcome: JobOutcome) -> Result<Value, ApiError> {
    let job = st.jobs.get_mut(job_id).ok_or_else(|| not_found(job_id))?;
    if let Some(previous) = &job.outcome {
        let state = match previous.status() {
            "Failed" => "Failed",
            _ => "Succeeded",
        };
        return Err(ApiError::new(
            "InvalidJobStateException",
            format!("Job {job_id} is in state {state} and cannot receive another result"),
        ));
    }
    job.outcome = Some(outcome);
    Ok(json!({}))
}

fn get_job_details(st: &State, input: &Input) -> Result<Value, ApiError> {
    let job_id = job_id(input)?;
    let job = st.jobs.get(&job_id).ok_or_else(|| not_found(&job_id))?;
    let s = &job.spec;
    let mut configuration = Map::new();
    if let Some(f) = &s.function_name {
        configuration.insert("FunctionName".into(), Value::from(f.as_str()));
    }
    if let Some(u) = &s.user_parameters {
        configuration.insert("UserParameters".into(), Value::from(u.as_str()));
    }
    let mut data = json!({
        "actionTypeId": {"category": "Invoke", "owner": "AWS", "provider": "Lambda", "version": "1"},
        "actionConfiguration": {"configuration": configuration},
        "pipelineContext": {
            "pipelineName": s.pipeline_name,
            "stage": {"name": s.stage},
            "action": {"name": s.action, "actionExecutionId": job.action_execution_id},
            "pipelineArn": format!("arn:aws:codepipeline:{REGION}:{ACCOUNT_ID}:{}", s.pipeline_name),
            "pipelineExecutionId": s.execution_id,
        },
        "inputArtifacts": [],
        "outputArtifacts": [],
        "artifactCredentials": crate::event::artifact_credentials(),
    });
    if let Some(t) = &s.continuation_token {
        data["continuationToken"] = Value::from(t.as_str());
    }
    Ok(json!({"jobDetails": {"id": job_id, "accountId": ACCOUNT_ID, "data": data}}))
}

fn not_found(job_id: &str) -> ApiError {
    ApiError::new(
        "JobNotFoundException",
        format!("The job with the ID {job_id} was not found"),
    )
}

fn job_id(input: &Input) -> Result<String, ApiError> {
    let id = required_string(input, "jobId", 0, usize::MAX)?;
    if !is_uuid(&id) {
        return Err(ApiError::constraint(
            "jobId",
            &id,
            "Member must satisfy regular expression pattern: [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        ));
    }
    Ok(id)
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')))
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Input, ApiError> {
    v.as_object().ok_or_else(|| {
        ApiError::new(
            "SerializationException",
            format!("{path}: expected a JSON object"),
        )
    })
}

fn required_string(input: &Input, key: &str, min: usize, max: usize) -> Result<String, ApiError> {
    opt_string(input, key, min, max)?.ok_or_else(|| ApiError::missing(key))
}

fn opt_string(
    input: &Input,
    key: &str,
    min: usize,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match input.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n < min {
                Err(ApiError::constraint(
                    key,
                    s,
                    &format!("Member must have length greater than or equal to {min}"),
                ))
            } else if n > max {
                Err(ApiError::constraint(
                    key,
                    s,
                    &format!("Member must have length less than or equal to {max}"),
                ))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(other) => Err(ApiError::new(
            "SerializationException",
            format!("{key}: expected a string, got {other}"),
        )),
    }
}

fn rename(mut e: ApiError, from: &str, to: &str) -> ApiError {
    e.message = e
        .message
        .replacen(&format!("'{from}'"), &format!("'{to}'"), 1);
    e
}

fn output_variables(v: &Value) -> Result<BTreeMap<String, String>, ApiError> {
    let map = object(v, "outputVariables")?;
    let mut out = BTreeMap::new();
    let mut total = 0;
    for (k, v) in map {
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '-' | '_'))
        {
            return Err(ApiError::constraint(
                "outputVariables",
                k,
                "Map keys must satisfy constraint: [Member must satisfy regular expression pattern: [A-Za-z0-9@\\-_]+]",
            ));
        }
        let Value::String(s) = v else {
            return Err(ApiError::new(
                "SerializationException",
                format!("outputVariables.{k}: expected a string, got {v}"),
            ));
        };
        total += k.len() + s.len();
        out.insert(k.clone(), s.clone());
    }
    if total > 122_880 {
        return Err(ApiError::new(
            "ValidationException",
            format!("outputVariables take {total} bytes; the limit is 122880"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_unique_uuids() {
        let a = new_uuid();
        let b = new_uuid();
        assert!(is_uuid(&a), "{a}");
        assert!(is_uuid(&b), "{b}");
        assert_ne!(a, b);
        assert!(!is_uuid("11111111-abcd-1111-abcd-111111abcdeX"));
        assert!(is_uuid("11111111-abcd-1111-abcd-111111abcdef"));
    }

    #[test]
    fn validation_messages_name_the_member() {
        let mut input = Map::new();
        input.insert("jobId".into(), Value::from(new_uuid()));
        input.insert(
            "executionDetails".into(),
            json!({"summary": "x".repeat(2049)}),
        );
        let mut st = State::default();
        let e = put_success(&mut st, &input).unwrap_err();
        assert_eq!(e.code, "ValidationException");
        assert!(
            e.message.contains("'executionDetails.summary'"),
            "{}",
            e.message
        );
        assert!(e.message.contains("2048"), "{}", e.message);
    }
}
