//! A fault-injecting HTTP proxy for the functions' external calls: put it between a function and
//! moto (`AWS_ENDPOINT_URL`), the job service (`AWS_ENDPOINT_URL_CODEPIPELINE`), the FlashArray
//! double (the array endpoint) or the Kubernetes API server double (a kube client's cluster URL),
//! and script what goes wrong, request by request.
//!
//! Faults ([`Fault`]): an error answer as the service sends it (EC2 XML, awsJson, FlashArray
//! JSON, a Kubernetes `Status` — 500, 503, 429, `RequestLimitExceeded`, `Throttling`, `UnauthorizedOperation`, ...), a
//! reset connection, a call that happens but whose answer is lost, an answer that never comes,
//! a slow answer. [`FaultProxy::crash_after`] makes the proxy behave like a process that dies
//! after its Nth call: the Nth call reaches the service, nothing after it does.
//!
//! Requests are named the way the service names its operations: the EC2/STS query `Action`, the
//! awsJson `X-Amz-Target` operation, the S3 operation followed by the path for requests signed
//! for S3 (`UploadPart /bucket/key`, `CreateMultipartUpload ...`, `ListObjectsV2 /bucket`), EKS
//! `DescribeCluster /clusters/<name>`, else `METHOD /path`. Rules match on a substring of that name.
//! The proxy runs on its own thread and runtime, so it keeps serving while a test blocks on a
//! child process; dropping it stops it and every connection it holds open.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// What happens to one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status, headers and body; the request is not forwarded.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Close the connection (TCP RST) without an answer; the request is not forwarded.
    Reset,
    /// Forward the request, then reset the connection instead of answering: the call happened,
    /// its answer is lost.
    LoseAnswer,
    /// Never answer (until the proxy stops); the request is not forwarded.
    Hang,
    /// Forward the request and answer after this delay.
    Slow(Duration),
    /// Forward the request, then remove every `<name>…</name>` element from the answer: a server
    /// that leaves that field out (s3s-fs lists objects without `ETag`).
    DropXml(String),
}

impl Fault {
    /// An EC2 (query protocol) error answer, as EC2 sends it.
    pub fn ec2(status: u16, code: &str, message: &str) -> Self {
        Self::Respond {
            status,
            headers: vec![("content-type".into(), "text/xml;charset=UTF-8".into())],
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
                 <Message>{message}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
                request_id()
            ),
        }
    }

    /// EC2's throttling answer: HTTP 503, `RequestLimitExceeded`.
    pub fn ec2_request_limit_exceeded() -> Self {
        Self::ec2(503, "RequestLimitExceeded", "Request limit exceeded.")
    }

    /// An awsJson 1.1 error answer (CodePipeline, Secrets Manager, ...), as AWS sends it.
    pub fn aws_json(status: u16, code: &str, message: &str) -> Self {
        Self::Respond {
            status,
            headers: vec![
                ("content-type".into(), "application/x-amz-json-1.1".into()),
                (
                    "x-amzn-errortype".into(),
                    format!("{code}:http://internal.amazon.com/coral/com.amazonaws.codepipeline/"),
                ),
                ("x-amzn-requestid".into(), request_id()),
            ],
            body: serde_json::json!({"__type": code, "message": message}).to_string(),
        }
    }

    /// An S3 error answer (`<Error><Code>` XML), as S3 sends it: `SlowDown` 503, `InternalError`
    /// 500, `RequestTimeout` 400, `AccessDenied` 403, ...
    pub fn s3(status: u16, code: &str, message: &str) -> Self {
        let id = request_id();
        Self::Respond {
            status,
            headers: vec![
                ("content-type".into(), "application/xml".into()),
                ("x-amz-request-id".into(), id.clone()),
            ],
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>{message}</Message><RequestId>{id}</RequestId></Error>"
            ),
        }
    }

    /// S3's throttling answer: HTTP 503, `SlowDown`.
    pub fn s3_slow_down() -> Self {
        Self::s3(503, "SlowDown", "Please reduce your request rate.")
    }

    /// A FlashArray REST 2.x error answer (`{"errors": [{"message"}]}`), with `Retry-After`
    /// in seconds when given.
    pub fn flasharray(status: u16, message: &str, retry_after: Option<u64>) -> Self {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(s) = retry_after {
            headers.push(("retry-after".into(), s.to_string()));
        }
        Self::Respond {
            status,
            headers,
            body: serde_json::json!({"errors": [{"message": message}]}).to_string(),
        }
    }

    /// A Kubernetes API server error answer: a `Status` object (`{"kind": "Status", "status":
    /// "Failure", "reason", "message", "code"}`), as the API server sends it.
    pub fn kubernetes(status: u16, reason: &str, message: &str) -> Self {
        Self::Respond {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "details": {}, "code": status
            })
            .to_string(),
        }
    }

    /// The API server's throttling answer: 429 TooManyRequests with `Retry-After` and
    /// `details.retryAfterSeconds`, as API priority and fairness sends it.
    pub fn kubernetes_too_many_requests(retry_after: u32) -> Self {
        Self::Respond {
            status: 429,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), retry_after.to_string()),
            ],
            body: serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Too many requests, please try again later.",
                "reason": "TooManyRequests", "details": {"retryAfterSeconds": retry_after},
                "code": 429
            })
            .to_string(),
        }
    }

    /// A bare status with a text body (a load balancer's 502/503/504).
    pub fn status(status: u16) -> Self {
        Self::Respond {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: format!("HTTP {status}"),
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Respond { status, .. } => format!("respond {status}"),
            Self::Reset => "reset".into(),
            Self::LoseAnswer => "lose answer".into(),
            Self::Hang => "hang".into(),
            Self::Slow(d) => format!("slow {} ms", d.as_millis()),
            Self::DropXml(name) => format!("drop <{name}>"),
        }
    }
}

/// A scripted fault: for requests whose name contains `op` (`"*"`: every request), let `skip`
/// through, then apply `fault` to the next `times`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub op: String,
    pub fault: Fault,
    pub skip: u32,
    pub times: u32,
}

impl Rule {
    /// `fault` for the next `times` requests named like `op`.
    pub fn new(op: &str, fault: Fault, times: u32) -> Self {
        Self {
            op: op.to_string(),
            fault,
            skip: 0,
            times,
        }
    }

    /// `fault` for every request named like `op`, from now on.
    pub fn always(op: &str, fault: Fault) -> Self {
        Self::new(op, fault, u32::MAX)
    }

    /// Lets `n` matching requests through before the fault applies.
    pub fn after(mut self, n: u32) -> Self {
        self.skip = n;
        self
    }
}

/// How a crash after the Nth call looks from the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// The Nth call reaches the service and its answer is lost; every later request is reset.
    LoseAnswer,
    /// The Nth call is answered; every later request hangs (kill the process to end it).
    HangAfter,
}

/// One request the proxy received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `CreateSnapshot`, `PutJobSuccessResult`, `POST /api/2.56/login`, ...
    pub op: String,
    /// The fault applied, if any.
    pub fault: Option<String>,
    /// True when the request reached the upstream service.
    pub forwarded: bool,
    /// The request's query string (S3: `list-type=2&start-after=...`), as sent.
    pub query: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    crash: Option<(usize, Crash)>,
    seen: Vec<Seen>,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<Mutex<State>>,
    /// Stops (every connection with it) when the proxy is dropped.
    _server: LoopbackServer,
}

/// An HTTP/1 server of the test doubles in front of a service (the fault proxy, the
/// instance-refresh double): a free loopback port, its own thread and current-thread runtime,
/// so it keeps serving while a test blocks on a child process. Dropping it stops the runtime,
/// which ends every connection, hanging ones included.
#[derive(Debug)]
pub(crate) struct LoopbackServer {
    /// `http://127.0.0.1:<port>`.
    pub(crate) url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl LoopbackServer {
    /// Starts the server thread `name`. `setup` runs first on the server's runtime with the
    /// HTTP client that forwards to the service (no proxy, no pooled connections, ring's
    /// crypto) and returns the request handler; `reset_on_close` makes a closed connection a
    /// TCP reset (an abrupt end, as a crash looks).
    pub(crate) fn start<S, SF, H, HF>(
        name: &str,
        reset_on_close: bool,
        setup: S,
    ) -> std::io::Result<Self>
    where
        S: FnOnce(reqwest::Client) -> SF + Send + 'static,
        SF: std::future::Future<Output = H>,
        H: Fn(Request<Incoming>) -> HF + Clone + Send + 'static,
        HF: std::future::Future<Output = Result<Response<Full<Bytes>>, Dropped>> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // reqwest is built without a default crypto provider; ring is the project's one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .map_err(std::io::Error::other)?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                rt.block_on(async move {
                    let handler = setup(http).await;
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let accept = async {
                        loop {
                            let Ok((stream, _)) = listener.accept().await else {
                                continue;
                            };
                            if reset_on_close {
                                let _ = stream.set_zero_linger();
                            }
                            let handler = handler.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(handler);
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here ends every connection task, hanging ones included.
            })?;
        Ok(Self {
            url,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let upstream = upstream.trim_end_matches('/').to_string();
        let server = LoopbackServer::start("fault-proxy", true, move |http| async move {
            move |req| {
                let state = Arc::clone(&shared);
                let http = http.clone();
                let upstream = upstream.clone();
                async move { handle(&state, &http, &upstream, req).await }
            }
        })?;
        Ok(Self {
            url: server.url.clone(),
            state,
            _server: server,
        })
    }

    /// Adds a rule; rules are tried in the order they were added.
    pub fn add(&self, rule: Rule) -> &Self {
        lock(&self.state).rules.push(rule);
        self
    }

    /// Removes every rule and the crash point: the proxy forwards everything again.
    pub fn heal(&self) {
        let mut st = lock(&self.state);
        st.rules.clear();
        st.crash = None;
    }

    /// Behaves like a process that dies after its `n`th call from now (1-based), see [`Crash`].
    pub fn crash_after(&self, n: usize, how: Crash) {
        let mut st = lock(&self.state);
        let base = st.seen.len();
        st.crash = Some((base + n, how));
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state).seen.clone()
    }

    /// Requests received so far whose name contains `op`.
    pub fn count(&self, op: &str) -> usize {
        lock(&self.state)
            .seen
            .iter()
            .filter(|s| s.op.contains(op))
            .count()
    }

    /// Requests that reached the upstream service.
    pub fn forwarded(&self) -> usize {
        lock(&self.state)
            .seen
            .iter()
            .filter(|s| s.forwarded)
            .count()
    }
}

/// The operation name of a request: the query `Action`, the awsJson target, the S3 or EKS
/// operation (from the SigV4 scope's service) and the path, else method + path.
fn op_name(
    method: &hyper::Method,
    path: &str,
    query: Option<&str>,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(t) = header("x-amz-target") {
        return t.rsplit('.').next().unwrap_or(t).to_string();
    }
    let form = std::str::from_utf8(body).unwrap_or_default();
    for part in form.split('&').chain(query.unwrap_or_default().split('&')) {
        if let Some(a) = part.strip_prefix("Action=") {
            return a.to_string();
        }
    }
    match signed_for(header("authorization")) {
        Some("s3") => {
            let op = s3_operation(method, path, query, header("x-amz-copy-source").is_some());
            format!("{op} {path}")
        }
        Some("eks") if method == hyper::Method::GET && path.starts_with("/clusters/") => {
            format!("DescribeCluster {path}")
        }
        _ => format!("{method} {path}"),
    }
}

/// The service a SigV4 `Authorization` header is scoped to
/// (`Credential=AKID/20260101/us-east-1/s3/aws4_request`).
fn signed_for(authorization: Option<&str>) -> Option<&str> {
    let scope = authorization?.split("Credential=").nth(1)?;
    let scope = scope.split([',', ' ']).next()?;
    scope.split('/').nth(3)
}

/// The S3 REST operation of a path-style request.
fn s3_operation(
    method: &hyper::Method,
    path: &str,
    query: Option<&str>,
    copy_source: bool,
) -> &'static str {
    let params: Vec<&str> = query
        .unwrap_or_default()
        .split('&')
        .map(|p| p.split('=').next().unwrap_or_default())
        .collect();
    let has = |name: &str| params.contains(&name);
    // "/bucket" or "/bucket/" addresses the bucket; anything longer, an object.
    let object = path
        .trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(_, key)| !key.is_empty());
    match (method.as_str(), object) {
        ("GET", false) if has("uploads") => "ListMultipartUploads",
        ("GET", false) if has("list-type") => "ListObjectsV2",
        ("GET", false) if has("location") => "GetBucketLocation",
        ("GET", false) => "ListObjects",
        ("HEAD", false) => "HeadBucket",
        ("PUT", false) => "CreateBucket",
        ("DELETE", false) => "DeleteBucket",
        ("POST", false) if has("delete") => "DeleteObjects",
        ("GET", true) if has("uploadId") => "ListParts",
        ("GET", true) => "GetObject",
        ("HEAD", true) => "HeadObject",
        ("PUT", true) if has("partNumber") && copy_source => "UploadPartCopy",
        ("PUT", true) if has("partNumber") => "UploadPart",
        ("PUT", true) if copy_source => "CopyObject",
        ("PUT", true) => "PutObject",
        ("POST", true) if has("uploads") => "CreateMultipartUpload",
        ("POST", true) if has("uploadId") => "CompleteMultipartUpload",
        ("DELETE", true) if has("uploadId") => "AbortMultipartUpload",
        ("DELETE", true) => "DeleteObject",
        _ => "S3",
    }
}

/// Decides what to do with request number `index` (0-based) named `op`.
fn decide(st: &mut State, index: usize, op: &str) -> Option<Fault> {
    if let Some((n, how)) = st.crash {
        let nth = index + 1;
        if nth == n && how == Crash::LoseAnswer {
            return Some(Fault::LoseAnswer);
        }
        if nth > n {
            return Some(match how {
                Crash::LoseAnswer => Fault::Reset,
                Crash::HangAfter => Fault::Hang,
            });
        }
    }
    for rule in &mut st.rules {
        if rule.times == 0 || !(rule.op == "*" || op.contains(&rule.op)) {
            continue;
        }
        if rule.skip > 0 {
            rule.skip -= 1;
            continue;
        }
        if rule.times != u32::MAX {
            rule.times -= 1;
        }
        return Some(rule.fault.clone());
    }
    None
}

/// The error a service returns to end a connection without an answer.
#[derive(Debug)]
pub(crate) struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fault proxy")
    }
}
impl std::error::Error for Dropped {}

const HOP_BY_HOP: [&str; 7] = [
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "proxy-connection",
];

async fn handle(
    state: &Mutex<State>,
    http: &reqwest::Client,
    upstream: &str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let op = op_name(
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &parts.headers,
        &body,
    );
    let fault = {
        let mut st = lock(state);
        let index = st.seen.len();
        let fault = decide(&mut st, index, &op);
        let forwarded = matches!(
            fault,
            None | Some(Fault::LoseAnswer | Fault::Slow(_) | Fault::DropXml(_))
        );
        st.seen.push(Seen {
            op: op.clone(),
            fault: fault.as_ref().map(Fault::name),
            forwarded,
            query: parts.uri.query().map(str::to_string),
        });
        fault
    };
    match fault {
        Some(Fault::Respond {
            status,
            headers,
            body,
        }) => {
            let mut resp = Response::builder().status(status);
            for (k, v) in headers {
                resp = resp.header(k, v);
            }
            resp.body(Full::new(Bytes::from(body))).map_err(|_| Dropped)
        }
        Some(Fault::Reset) => Err(Dropped),
        Some(Fault::Hang) => {
            std::future::pending::<()>().await;
            Err(Dropped)
        }
        Some(Fault::LoseAnswer) => {
            let _ = forward(http, upstream, &parts, body).await;
            Err(Dropped)
        }
        Some(Fault::Slow(d)) => {
            let resp = forward(http, upstream, &parts, body).await;
            tokio::time::sleep(d).await;
            resp
        }
        Some(Fault::DropXml(name)) => {
            let resp = forward(http, upstream, &parts, body).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
            let text = drop_xml(&String::from_utf8_lossy(&body), &name);
            Ok(Response::from_parts(parts, Full::new(Bytes::from(text))))
        }
        None => forward(http, upstream, &parts, body).await,
    }
}

/// `xml` without its `<name>…</name>` elements.
fn drop_xml(xml: &str, name: &str) -> String {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        out.push_str(&rest[..start]);
        match rest[start..].find(&close) {
            Some(end) => rest = &rest[start + end + close.len()..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

pub(crate) async fn forward(
    http: &reqwest::Client,
    upstream: &str,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let method =
        reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).map_err(|_| Dropped)?;
    let mut req = http.request(method, format!("{upstream}{path}"));
    for (k, v) in &parts.headers {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            req = req.header(k.as_str(), v.as_bytes());
        }
    }
    let resp = req.body(body).send().await.map_err(|_| Dropped)?;
    let mut out = Response::builder().status(resp.status().as_u16());
    // A HEAD answer's Content-Length is the object's size (HeadObject), not the empty body's.
    let head = parts.method == hyper::Method::HEAD;
    for (k, v) in resp.headers() {
        if !HOP_BY_HOP.contains(&k.as_str()) || (head && k == hyper::header::CONTENT_LENGTH) {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    let bytes = resp.bytes().await.map_err(|_| Dropped)?;
    out.body(Full::new(bytes)).map_err(|_| Dropped)
}

pub(crate) fn request_id() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("5f0c7a2e-0000-4000-8000-{n:012x}")
}

/// What the proxy does is what the service does, minus the faults: the unit tests below check
/// the proxy itself against a tiny upstream.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn upstream() -> (String, std::thread::JoinHandle<()>) {
        // A one-thread HTTP upstream that answers 200 "ok" to everything, forever.
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        });
        (url, h)
    }

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    #[test]
    fn dropped_xml_elements_leave_the_rest_intact() {
        let listing = "<Contents><Key>a</Key><ETag>&quot;x&quot;</ETag><Size>1</Size></Contents>\
                       <Contents><Key>b</Key><ETag>\"y\"</ETag><Size>2</Size></Contents>";
        assert_eq!(
            drop_xml(listing, "ETag"),
            "<Contents><Key>a</Key><Size>1</Size></Contents>\
             <Contents><Key>b</Key><Size>2</Size></Contents>"
        );
        assert_eq!(drop_xml("<a>1</a>", "ETag"), "<a>1</a>");
        assert_eq!(drop_xml("<ETag>open", "ETag"), "<ETag>open");
    }

    #[tokio::test]
    async fn scripted_faults_apply_in_order_then_requests_pass() {
        let (up, _h) = upstream();
        let p = FaultProxy::start(&up).unwrap();
        p.add(Rule::new(
            "CreateSnapshot",
            Fault::ec2_request_limit_exceeded(),
            1,
        ));
        p.add(Rule::new("CreateSnapshot", Fault::Reset, 1));
        let c = client();
        let send = || {
            c.post(&p.url)
                .body("Action=CreateSnapshot&Version=2016-11-15")
                .send()
        };
        let r = send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("<Code>RequestLimitExceeded</Code>")
        );
        assert!(send().await.is_err(), "the connection was reset");
        let r = send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "ok");
        assert_eq!(p.count("CreateSnapshot"), 3);
        assert_eq!(p.forwarded(), 1);
    }

    #[test]
    fn s3_and_eks_requests_are_named_by_their_operation() {
        let name = |method: &str, uri: &str, service: &str, copy: bool| {
            let uri: hyper::Uri = uri.parse().unwrap();
            let mut headers = hyper::HeaderMap::new();
            headers.insert(
                "authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=testing/20261122/us-east-1/{service}/aws4_request, \
                     SignedHeaders=host, Signature=00"
                )
                .parse()
                .unwrap(),
            );
            if copy {
                headers.insert("x-amz-copy-source", "/b/src".parse().unwrap());
            }
            op_name(
                &method.parse().unwrap(),
                uri.path(),
                uri.query(),
                &headers,
                b"",
            )
        };
        for (method, uri, copy, want) in [
            ("GET", "/b?list-type=2&prefix=x", false, "ListObjectsV2 /b"),
            (
                "GET",
                "/b?uploads&prefix=k",
                false,
                "ListMultipartUploads /b",
            ),
            ("GET", "/b/k/x.bytes", false, "GetObject /b/k/x.bytes"),
            ("HEAD", "/b/k", false, "HeadObject /b/k"),
            ("PUT", "/b/k", false, "PutObject /b/k"),
            ("PUT", "/b/k", true, "CopyObject /b/k"),
            ("POST", "/b/k?uploads", false, "CreateMultipartUpload /b/k"),
            (
                "PUT",
                "/b/k?partNumber=2&uploadId=u",
                false,
                "UploadPart /b/k",
            ),
            (
                "POST",
                "/b/k?uploadId=u",
                false,
                "CompleteMultipartUpload /b/k",
            ),
            (
                "DELETE",
                "/b/k?uploadId=u",
                false,
                "AbortMultipartUpload /b/k",
            ),
            ("GET", "/b/k?uploadId=u", false, "ListParts /b/k"),
            ("DELETE", "/b/k", false, "DeleteObject /b/k"),
            ("PUT", "/b", false, "CreateBucket /b"),
        ] {
            assert_eq!(name(method, uri, "s3", copy), want, "{method} {uri}");
        }
        assert_eq!(
            name("GET", "/clusters/prod", "eks", false),
            "DescribeCluster /clusters/prod"
        );
        // Unsigned requests (the FlashArray double) keep method + path.
        let plain = op_name(
            &hyper::Method::POST,
            "/api/2.56/login",
            None,
            &hyper::HeaderMap::new(),
            b"",
        );
        assert_eq!(plain, "POST /api/2.56/login");
    }

    #[tokio::test]
    async fn a_crash_loses_the_nth_answer_and_refuses_the_rest() {
        let (up, _h) = upstream();
        let p = FaultProxy::start(&up).unwrap();
        p.crash_after(2, Crash::LoseAnswer);
        let c = client();
        assert!(c.get(format!("{}/a", p.url)).send().await.is_ok());
        assert!(c.get(format!("{}/b", p.url)).send().await.is_err());
        assert!(c.get(format!("{}/c", p.url)).send().await.is_err());
        let seen = p.seen();
        assert_eq!(seen[1].op, "GET /b");
        assert!(seen[1].forwarded, "the second call reached the service");
        assert!(!seen[2].forwarded);
        p.heal();
        assert!(c.get(format!("{}/d", p.url)).send().await.is_ok());
    }
}
