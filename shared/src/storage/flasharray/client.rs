//! The FlashArray REST 2.x session: TLS, version negotiation, login/logout, paging, retries.
//! The operations snapstage uses on a session are in `api.rs`.
//!
//! - `GET /api/api_version` picks the highest `2.x` the array offers, at most [`MAX_VERSION`].
//! - `POST /api/2.N/login` with the `api-token` header returns the session in the
//!   `x-auth-token` response header; [`Session::logout`] ends it (`POST /api/2.N/logout`).
//! - Lists are read page by page: `limit` + `continuation_token` from the `x-next-token` header,
//!   at most [`Config::max_pages`] pages.
//! - 429 and 503 are retried with bounded exponential backoff and jitter (honouring
//!   `Retry-After`), then reported as [`Error::Unavailable`].
//!
//! Neither the API token nor the session token ever appears in an error, a log line or a
//! `Debug` output.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::model::{ApiVersions, ErrorResponse, Items};
use crate::error::{Error, Result};

/// The backend name in errors and outputs.
pub const BACKEND: &str = "flasharray";

/// The newest REST version snapstage is written against (the spec it is checked with).
pub const MAX_VERSION: ApiVersion = ApiVersion {
    major: 2,
    minor: 56,
};

/// A FlashArray API token (from Secrets Manager). Never printed.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// The session token from `x-auth-token`. Never printed.
#[derive(Clone)]
struct AuthToken(HeaderValue);

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

/// Retries of throttled (429) and unavailable (503) answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Tries in total, the first included (at least 1).
    pub attempts: u32,
    /// The first backoff; doubled on each retry.
    pub base: Duration,
    /// The longest single wait, `Retry-After` included.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 5,
            base: Duration::from_millis(250),
            max: Duration::from_secs(8),
        }
    }
}

impl Retry {
    /// The wait before retry number `retry` (0 for the first retry): exponential, capped, with
    /// "equal jitter" (half fixed, half random) so concurrent functions spread out.
    pub(super) fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max);
        let jittered = exp / 2 + exp.mul_f64(jitter() / 2.0);
        match retry_after {
            Some(ra) => ra.min(self.max).max(jittered),
            None => jittered,
        }
    }
}

/// A random fraction in [0, 1) without a random-number crate: `RandomState` is seeded randomly.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// How to reach one array.
#[derive(Debug, Clone)]
pub struct Config {
    /// `https://array.example.com` (a management address or name of the array).
    pub endpoint: String,
    pub api_token: ApiToken,
    /// Extra trusted CA certificates (PEM), for arrays with an internal CA. TLS is always
    /// verified: these are added to the platform's roots.
    pub ca_bundle: Option<Vec<u8>>,
    /// Allows an `http://` endpoint. Only the tests' local double sets this.
    pub allow_insecure_http_for_tests: bool,
    /// Items per page when listing.
    pub page_size: u32,
    /// Pages read at most for one list.
    pub max_pages: u32,
    pub retry: Retry,
    /// Per request, connection included.
    pub timeout: Duration,
}

impl Config {
    pub fn new(endpoint: impl Into<String>, api_token: ApiToken) -> Self {
        Self {
            endpoint: endpoint.into(),
            api_token,
            ca_bundle: None,
            allow_insecure_http_for_tests: false,
            page_size: 500,
            max_pages: 200,
            retry: Retry::default(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A REST API version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl ApiVersion {
    pub fn parse(s: &str) -> Option<Self> {
        let (major, minor) = s.trim().split_once('.')?;
        Some(Self {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

/// The highest `2.x` version in `offered` that is at most [`MAX_VERSION`].
pub fn pick_version(offered: &[String]) -> Option<ApiVersion> {
    offered
        .iter()
        .filter_map(|v| ApiVersion::parse(v))
        .filter(|v| v.major == 2 && *v <= MAX_VERSION)
        .max()
}

/// Turns an array's error answer into a classified [`Error`]. `op` is `METHOD /path` (no query,
/// no tokens); the message is the array's own (`errors[].context: errors[].message`).
pub fn api_error(status: u16, op: &str, body: &[u8]) -> Error {
    let parsed: ErrorResponse = serde_json::from_slice(body).unwrap_or_default();
    let mut message = parsed
        .errors
        .iter()
        .filter_map(|e| {
            let m = e.message.as_deref()?.trim();
            Some(match e.context.as_deref().filter(|c| !c.is_empty()) {
                Some(c) => format!("{c}: {m}"),
                None => m.to_string(),
            })
        })
        .collect::<Vec<_>>()
        .join("; ");
    if message.is_empty() {
        message = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error")
            .to_string();
    }
    if message.len() > 1000 {
        let cut = message
            .char_indices()
            .nth(1000)
            .map_or(message.len(), |(i, _)| i);
        message.truncate(cut);
        message.push('…');
    }
    let message = format!("{op}: HTTP {status}: {message}");
    let b = BACKEND;
    match status {
        401 | 403 => Error::Permission {
            backend: b,
            message,
            source: None,
        },
        404 => Error::NotFound {
            backend: b,
            message,
            source: None,
        },
        400 if message.to_ascii_lowercase().contains("does not exist") => Error::NotFound {
            backend: b,
            message,
            source: None,
        },
        429 | 502 | 503 | 504 => Error::Unavailable {
            backend: b,
            message,
            source: None,
        },
        _ => Error::Backend {
            backend: b,
            message,
            source: None,
        },
    }
}

/// True for an error the array reports because the object already exists.
pub fn is_already_exists(e: &Error) -> bool {
    matches!(e, Error::Backend { message, .. } if message.to_ascii_lowercase().contains("already exists"))
}

fn tls_config(ca_bundle: Option<&[u8]>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut extra = Vec::new();
    if let Some(pem) = ca_bundle {
        for cert in CertificateDer::pem_slice_iter(pem) {
            extra.push(cert.map_err(|e| {
                Error::Configuration(format!("caBundle: not a PEM certificate bundle: {e}"))
            })?);
        }
        if extra.is_empty() {
            return Err(Error::Configuration(
                "caBundle: no certificate found (expected PEM \"-----BEGIN CERTIFICATE-----\")"
                    .into(),
            ));
        }
    }
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| Error::Configuration(format!("TLS trust roots: {e}")))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Configuration(format!("TLS: {e}")))?
        .dangerous() // a custom verifier, not less verification: the platform verifier
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn check_endpoint(cfg: &Config) -> Result<Url> {
    let bad = |why: &str| {
        Error::Configuration(format!(
            "FlashArray endpoint {:?}: {why}",
            cfg.endpoint.chars().take(200).collect::<String>()
        ))
    };
    let url = Url::parse(cfg.endpoint.trim()).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if cfg.allow_insecure_http_for_tests => {}
        _ => return Err(bad("expected https://<array address>")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials do not belong in the endpoint"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("expected no query or fragment"));
    }
    Ok(url)
}

/// An HTTP client for one array. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    cfg: Arc<Config>,
}

/// One answer from the array.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Client {
    pub fn new(cfg: Config) -> Result<Self> {
        let base = check_endpoint(&cfg)?;
        let tls = tls_config(cfg.ca_bundle.as_deref())?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(!cfg.allow_insecure_http_for_tests)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("snapstage/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Configuration(format!("FlashArray HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            cfg: Arc::new(cfg),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// Sends one request, retrying 429/503 (and, for GET, connection failures) within the
    /// retry budget. Returns any other answer as it is.
    async fn execute(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        headers: HeaderMap,
        body: Option<Vec<u8>>,
    ) -> Result<Answer> {
        let op = format!("{method} {path}");
        let url = self.url(path, query);
        let retry = self.cfg.retry;
        let attempts = retry.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(b) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retryable = matches!(status.as_u16(), 429 | 503);
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let headers = resp.headers().clone();
                    let body = resp.bytes().await.map_err(|e| {
                        let e = e.without_url();
                        Error::Unavailable {
                            backend: BACKEND,
                            message: format!("{op}: reading the answer: {e}"),
                            source: None,
                        }
                        .caused_by(e)
                    })?;
                    if retryable && attempt < attempts {
                        let wait = retry.delay(attempt - 1, retry_after);
                        tracing::warn!(%op, status = status.as_u16(), attempt, wait_ms = wait.as_millis() as u64, "FlashArray is busy; retrying");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    if retryable {
                        let e = api_error(status.as_u16(), &op, &body);
                        return Err(Error::Unavailable {
                            backend: BACKEND,
                            message: format!("{} (after {attempt} attempts)", strip(&e)),
                            source: None,
                        });
                    }
                    tracing::debug!(%op, status = status.as_u16(), "FlashArray answered");
                    return Ok(Answer {
                        status,
                        headers,
                        body,
                    });
                }
                Err(e) => {
                    // A request that never reached the array can be sent again; a GET always can.
                    let safe = e.is_connect() || method == Method::GET;
                    let e = e.without_url();
                    let msg = crate::error::DisplayChain(&e).to_string();
                    if safe && attempt < attempts {
                        let wait = retry.delay(attempt - 1, None);
                        tracing::warn!(%op, attempt, error = %msg, "FlashArray unreachable; retrying");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(Error::Unavailable {
                        backend: BACKEND,
                        message: format!(
                            "{op} to {}: {msg} (after {attempt} attempts)",
                            self.base.host_str().unwrap_or_default()
                        ),
                        source: None,
                    }
                    .caused_by(e));
                }
            }
        }
    }

    /// `GET /api/api_version`: the versions the array offers.
    pub async fn api_versions(&self) -> Result<Vec<String>> {
        let a = self
            .execute(Method::GET, "/api/api_version", &[], HeaderMap::new(), None)
            .await?;
        let v: ApiVersions = parse(a, "GET /api/api_version")?;
        Ok(v.version)
    }

    /// The version this client will use with the array.
    pub async fn negotiate(&self) -> Result<ApiVersion> {
        let offered = self.api_versions().await?;
        pick_version(&offered).ok_or_else(|| {
            Error::Configuration(format!(
                "the FlashArray at {} offers REST API versions [{}]; snapstage needs 2.x (2.0 to {MAX_VERSION})",
                self.base.host_str().unwrap_or_default(),
                offered.join(", ")
            ))
        })
    }

    /// Negotiates the version and logs in with the API token.
    pub async fn login(&self) -> Result<Session> {
        let version = self.negotiate().await?;
        let path = format!("/api/{version}/login");
        let mut headers = HeaderMap::new();
        let mut token = HeaderValue::from_str(self.cfg.api_token.expose()).map_err(|_| {
            Error::Configuration("FlashArray API token: not a valid header value".into())
        })?;
        token.set_sensitive(true);
        headers.insert("api-token", token);
        let a = self
            .execute(Method::POST, &path, &[], headers, None)
            .await?;
        if !a.status.is_success() {
            let e = api_error(a.status.as_u16(), &format!("POST {path}"), &a.body);
            return Err(match e {
                Error::Permission {
                    backend,
                    message,
                    source,
                } => Error::Permission {
                    backend,
                    message: format!("{message} (check the API token and its user's role)"),
                    source,
                },
                other => other,
            });
        }
        let mut auth = a
            .headers
            .get("x-auth-token")
            .cloned()
            .ok_or_else(|| Error::Backend {
                backend: BACKEND,
                message: format!("POST {path}: no x-auth-token in the answer"),
                source: None,
            })?;
        auth.set_sensitive(true);
        tracing::info!(version = %version, array = self.base.host_str().unwrap_or_default(), "FlashArray session opened");
        Ok(Session {
            client: self.clone(),
            version,
            auth: AuthToken(auth),
        })
    }
}

fn strip(e: &Error) -> String {
    match e {
        Error::Permission { message, .. }
        | Error::NotFound { message, .. }
        | Error::Unavailable { message, .. }
        | Error::Backend { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn parse<T: DeserializeOwned>(a: Answer, op: &str) -> Result<T> {
    if !a.status.is_success() {
        return Err(api_error(a.status.as_u16(), op, &a.body));
    }
    serde_json::from_slice(&a.body).map_err(|e| {
        Error::Backend {
            backend: BACKEND,
            message: format!("{op}: unexpected answer: {e}"),
            source: None,
        }
        .caused_by(e)
    })
}

/// A logged-in session on one array. End it with [`Session::logout`].
#[derive(Debug)]
pub struct Session {
    client: Client,
    version: ApiVersion,
    auth: AuthToken,
}

pub(super) type Query<'a> = Vec<(&'a str, String)>;

impl Session {
    pub fn version(&self) -> ApiVersion {
        self.version
    }

    fn path(&self, rel: &str) -> String {
        format!("/api/{}{rel}", self.version)
    }

    fn auth_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-auth-token", self.auth.0.clone());
        h
    }

    /// `POST /api/2.N/logout`.
    pub async fn logout(self) -> Result<()> {
        let path = self.path("/logout");
        let a = self
            .client
            .execute(Method::POST, &path, &[], self.auth_headers(), None)
            .await?;
        if !a.status.is_success() {
            return Err(api_error(
                a.status.as_u16(),
                &format!("POST {path}"),
                &a.body,
            ));
        }
        tracing::info!("FlashArray session closed");
        Ok(())
    }

    /// One GET, one page (used with `sort`, where the array gives no continuation token).
    pub async fn get_page<T: DeserializeOwned>(
        &self,
        rel: &str,
        query: &Query<'_>,
    ) -> Result<Vec<T>> {
        let path = self.path(rel);
        let a = self
            .client
            .execute(Method::GET, &path, query, self.auth_headers(), None)
            .await?;
        let page: Items<T> = parse(a, &format!("GET {path}"))?;
        Ok(page.items)
    }

    /// Every item of a list, page by page (`limit`, then `continuation_token` from
    /// `x-next-token`), at most `max_pages` pages.
    pub async fn get_all<T: DeserializeOwned>(
        &self,
        rel: &str,
        query: &Query<'_>,
    ) -> Result<Vec<T>> {
        let path = self.path(rel);
        let op = format!("GET {path}");
        let cfg = self.client.config();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..cfg.max_pages.max(1) {
            let mut q = query.clone();
            q.push(("limit", cfg.page_size.max(1).to_string()));
            if let Some(t) = &token {
                q.push(("continuation_token", t.clone()));
            }
            let a = self
                .client
                .execute(Method::GET, &path, &q, self.auth_headers(), None)
                .await?;
            let next = a
                .headers
                .get("x-next-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let page: Items<T> = parse(a, &op)?;
            out.extend(page.items);
            match next.or(page.continuation_token).filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
        Err(Error::Backend {
            backend: BACKEND,
            message: format!(
                "{op}: more than {} pages of {} items; narrow the query",
                cfg.max_pages, cfg.page_size
            ),
            source: None,
        })
    }

    /// A POST that answers with `items`.
    pub async fn post<T: DeserializeOwned, B: Serialize>(
        &self,
        rel: &str,
        query: &Query<'_>,
        body: &B,
    ) -> Result<Vec<T>> {
        self.send(Method::POST, rel, query, body).await
    }

    /// A PATCH that answers with `items`.
    pub async fn patch<T: DeserializeOwned, B: Serialize>(
        &self,
        rel: &str,
        query: &Query<'_>,
        body: &B,
    ) -> Result<Vec<T>> {
        self.send(Method::PATCH, rel, query, body).await
    }

    /// A PUT that answers with `items`.
    pub async fn put<T: DeserializeOwned, B: Serialize>(
        &self,
        rel: &str,
        query: &Query<'_>,
        body: &B,
    ) -> Result<Vec<T>> {
        self.send(Method::PUT, rel, query, body).await
    }

    /// `method` with a JSON body, answered with `items`.
    async fn send<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        rel: &str,
        query: &Query<'_>,
        body: &B,
    ) -> Result<Vec<T>> {
        let path = self.path(rel);
        let body = serde_json::to_vec(body).map_err(|e| Error::Internal(e.to_string()))?;
        let what = format!("{method} {path}");
        let a = self
            .client
            .execute(method, &path, query, self.auth_headers(), Some(body))
            .await?;
        let out: Items<T> = parse(a, &what)?;
        Ok(out.items)
    }

    pub(super) fn one<T>(items: Vec<T>, what: &str) -> Result<T> {
        items.into_iter().next().ok_or_else(|| Error::Backend {
            backend: BACKEND,
            message: format!("{what}: the array answered with no item"),
            source: None,
        })
    }
}
