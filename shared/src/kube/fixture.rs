//! A Kubernetes API server double at the HTTP level, in the style of kube-rs/controller-rs
//! `fixtures.rs`: `tower_test::mock::pair` behind `kube::Client::new`, and a scenario — the
//! exact requests expected, in order (method, path, query, key parts of the body) — each
//! answered with the JSON a real API server sends. A request that differs, one too many, or one
//! missing fails the test with what was expected and what came.
//!
//! One harness for this crate's unit tests (the CSI backend, the hooks) and deploy-staging-db's
//! integration tests (feature `kube-fixture`, a dev-dependency there). Server-side applies and
//! merge patches are expected under the field manager given to [`serve`].

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::missing_panics_doc
)]

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

type BodyCheck = Box<dyn Fn(&Value) + Send>;
type Answer = Box<dyn Fn(&Value) -> (u16, Value) + Send>;

/// One expected request and its answer.
pub struct Exchange {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    content_type: Option<&'static str>,
    checks: Vec<BodyCheck>,
    answer: Answer,
}

/// Stands for the scenario's field manager (given to [`serve`]) in an expected query.
const MANAGER: &str = "\u{0}field-manager";

impl Exchange {
    fn new(method: Method, path: &str) -> Self {
        Self {
            method,
            path: path.to_string(),
            query: Vec::new(),
            content_type: None,
            checks: Vec::new(),
            answer: Box::new(|_| (200, json!({}))),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new(Method::GET, path)
    }

    /// A LIST with these query parameters (decoded), e.g. `("labelSelector", "a=b")`.
    pub fn list(path: &str, query: &[(&str, &str)]) -> Self {
        let mut e = Self::new(Method::GET, path);
        e.query = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        e
    }

    /// A server-side apply: PATCH, `fieldManager` = snapstage's, `force=true`, apply-patch
    /// content type; answered with the object as the server stores it (uid, resourceVersion).
    pub fn apply(path: &str) -> Self {
        let mut e = Self::new(Method::PATCH, path);
        e.query = vec![
            ("force".into(), "true".into()),
            ("fieldManager".into(), MANAGER.into()),
        ];
        e.content_type = Some("application/apply-patch+yaml");
        e.answer = Box::new(|body| (200, stored(body.clone())));
        e
    }

    /// A JSON merge patch under snapstage's field manager.
    pub fn merge(path: &str) -> Self {
        let mut e = Self::new(Method::PATCH, path);
        e.query = vec![("fieldManager".into(), MANAGER.into())];
        e.content_type = Some("application/merge-patch+json");
        e
    }

    /// A POST that creates `path`'s collection member; answered with the object as stored.
    pub fn create(path: &str) -> Self {
        let mut e = Self::new(Method::POST, path);
        e.answer = Box::new(|body| (201, stored(body.clone())));
        e
    }

    /// 409 AlreadyExists, as the API server answers a POST of a name that exists.
    pub fn already_exists(self) -> Self {
        self.reply(
            409,
            status_json(409, "AlreadyExists", "the object already exists"),
        )
    }

    pub fn delete(path: &str) -> Self {
        let mut e = Self::new(Method::DELETE, path);
        e.answer = Box::new(|_| (200, status_json(200, "Success", "")));
        e
    }

    /// Asserts on the request body (JSON).
    pub fn body(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.checks.push(Box::new(check));
        self
    }

    pub fn reply(mut self, status: u16, answer: Value) -> Self {
        self.answer = Box::new(move |_| (status, answer.clone()));
        self
    }

    pub fn ok(self, answer: Value) -> Self {
        self.reply(200, answer)
    }

    /// 404 with the Status body the API server sends.
    pub fn not_found(self) -> Self {
        let name = self.path.rsplit('/').next().unwrap_or_default().to_string();
        let resource = self.path.rsplit('/').nth(1).unwrap_or_default().to_string();
        self.reply(
            404,
            status_json(404, "NotFound", &format!("{resource} \"{name}\" not found")),
        )
    }

    fn describe(&self) -> String {
        format!("{} {} {:?}", self.method, self.path, self.query)
    }
}

/// A `metav1.Status` body.
pub fn status_json(code: u16, reason: &str, message: &str) -> Value {
    let status = if code < 300 { "Success" } else { "Failure" };
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": status, "message": message, "reason": reason, "code": code
    })
}

/// The object as the API server returns it after an apply.
fn stored(mut obj: Value) -> Value {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("uid".into(), json!("5a1f3c2e-7b7d-4c8e-9f10-0123456789ab"));
        meta.insert("resourceVersion".into(), json!("4711"));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!("2025-06-01T12:00:00Z"));
    }
    obj
}

/// `application/x-www-form-urlencoded` decoding of one value.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn query_of(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A scenario being served.
pub struct Server {
    task: tokio::task::JoinHandle<Vec<String>>,
}

/// A client whose API server answers exactly `exchanges`, in order; applies and merge patches
/// are expected under `field_manager`.
pub fn serve(field_manager: &'static str, exchanges: Vec<Exchange>) -> (kube::Client, Server) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let task = tokio::spawn(verify(handle, field_manager, exchanges));
    (client, Server { task })
}

async fn verify(
    mut handle: Handle,
    field_manager: &'static str,
    exchanges: Vec<Exchange>,
) -> Vec<String> {
    let mut seen = Vec::new();
    for (i, want) in exchanges.into_iter().enumerate() {
        let next = tokio::time::timeout(Duration::from_secs(10), handle.next_request()).await;
        let Ok(Some((request, send))) = next else {
            panic!(
                "request #{i}: expected {}, but the step sent no more requests (sent: {seen:#?})",
                want.describe()
            );
        };
        let (parts, body) = request.into_parts();
        let line = format!("{} {}", parts.method, parts.uri);
        assert_eq!(
            (&parts.method, parts.uri.path()),
            (&want.method, want.path.as_str()),
            "request #{i}: expected {}, got {line} (before: {seen:#?})",
            want.describe()
        );
        let query = query_of(&parts.uri);
        for (k, v) in &want.query {
            let v = if v == MANAGER { field_manager } else { v };
            assert_eq!(
                query.get(k),
                Some(&v.to_string()),
                "request #{i} {line}: query {k} should be {v:?}"
            );
        }
        if let Some(ct) = want.content_type {
            assert_eq!(
                parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok()),
                Some(ct),
                "request #{i} {line}: content type"
            );
        }
        let bytes = body.collect_bytes().await.unwrap();
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("request #{i} {line}: body is not JSON: {e}"))
        };
        for check in &want.checks {
            check(&json);
        }
        let (status, answer) = (want.answer)(&json);
        let response = Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap();
        send.send_response(response);
        seen.push(line);
    }
    // The step must be done: once its client is dropped, no request may follow.
    if let Ok(Some((extra, _))) =
        tokio::time::timeout(Duration::from_secs(10), handle.next_request()).await
    {
        panic!(
            "unexpected request after the scenario: {} {} (sent: {seen:#?})",
            extra.method(),
            extra.uri()
        );
    }
    seen
}

impl Server {
    /// Waits for the scenario to be played to its end; its assertion failures fail the test.
    /// Drop every client first.
    pub async fn finish(self) -> Vec<String> {
        match tokio::time::timeout(Duration::from_secs(20), self.task).await {
            Ok(Ok(seen)) => seen,
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("fixture task: {e}"),
            Err(_) => panic!("the scenario did not finish"),
        }
    }
}
