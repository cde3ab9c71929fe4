//! An EC2 Auto Scaling instance-refresh double in front of moto, which has no instance refresh
//! API at all.
//!
//! [`RefreshDouble`] is an HTTP server on loopback: point a function's
//! `AWS_ENDPOINT_URL_AUTO_SCALING` (or its `AWS_ENDPOINT_URL`) at it. It answers the four
//! instance-refresh operations itself, in the Auto Scaling API's awsQuery protocol (form-encoded
//! requests, XML answers and `<ErrorResponse>` errors, as the API reference shapes them):
//! `StartInstanceRefresh`, `DescribeInstanceRefreshes`, `CancelInstanceRefresh`,
//! `RollbackInstanceRefresh`, with the service's error codes (`InstanceRefreshInProgress`,
//! `ActiveInstanceRefreshNotFound`, `IrreversibleInstanceRefresh`, `ValidationError`). Every other
//! request goes to moto unchanged, except two answers it completes:
//! - DescribeAutoScalingGroups: moto reports every instance on the template's default version;
//!   the double reports the version it launched each replaced instance from, as Auto Scaling does;
//! - DescribeTargetHealth: moto knows no health checks; instances launched from an image marked
//!   [`RefreshDouble::fail_health_checks`] answer `unhealthy` (`Target.FailedHealthChecks`).
//!
//! A refresh advances one step each time it is described (no timers; [`RefreshDouble::hold`]
//! stops that so a test can script the states in between with [`RefreshDouble::advance`]). Each
//! step really replaces instances in moto through moto's own API: the group is pointed at the
//! desired launch template version, an instance is terminated with
//! `ShouldDecrementDesiredCapacity=false` (moto launches its replacement from the group's
//! template), and the group is pointed back. On success the group keeps the desired version
//! (`DesiredConfiguration` is applied); a rollback replaces the new instances with the previous
//! version again. [`RefreshDouble::fail`] makes the active refresh fail (and roll back with
//! AutoRollback), as a refresh whose instances never become healthy does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::Mutex;

use crate::faults::{Dropped, LoopbackServer, forward, request_id};

const XMLNS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";

/// The operations the double answers itself.
pub const OPERATIONS: [&str; 4] = [
    "StartInstanceRefresh",
    "DescribeInstanceRefreshes",
    "CancelInstanceRefresh",
    "RollbackInstanceRefresh",
];

/// One instance refresh.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub id: String,
    pub group: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub start_time: String,
    pub end_time: Option<String>,
    pub percentage_complete: i32,
    pub instances_to_update: i32,
    pub preferences: BTreeMap<String, String>,
    pub checkpoints: Vec<i32>,
    pub alarms: Vec<String>,
    /// `DesiredConfiguration.LaunchTemplate` as asked: (id or name, version).
    pub desired: Option<(Option<String>, Option<String>, String)>,
    /// The group's launch template before the refresh: (id, version as the group names it).
    pub previous: (String, String),
    /// The version the refresh moves instances to, resolved to a number.
    target_version: String,
    /// The previous version resolved to a number.
    previous_version: String,
    total: i32,
    replaced: Vec<String>,
    rollback: Option<Rollback>,
    /// A checkpoint reached: the next step only waits.
    at_checkpoint: bool,
    baked: bool,
}

#[derive(Debug, Clone, Default)]
struct Rollback {
    reason: String,
    start_time: String,
    percentage: i32,
    to_update: i32,
    total: i32,
}

impl Record {
    fn active(&self) -> bool {
        matches!(
            self.status.as_str(),
            "Pending" | "InProgress" | "Cancelling" | "RollbackInProgress" | "Baking"
        )
    }

    fn pref_bool(&self, name: &str, default: bool) -> bool {
        self.preferences.get(name).map_or(default, |v| v == "true")
    }
}

#[derive(Debug, Default)]
struct Engine {
    refreshes: Vec<Record>,
    /// Instance id → the launch template version the double launched it from.
    versions: BTreeMap<String, String>,
    /// Instance id → the image it was launched from (instances the double launched).
    images: BTreeMap<String, String>,
    failing_images: BTreeSet<String>,
    hold: bool,
    seen: Vec<String>,
    next_id: u32,
}

/// A running double; stops when dropped.
#[derive(Debug)]
pub struct RefreshDouble {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    moto: String,
    engine: Arc<Mutex<Engine>>,
    /// Stops (every connection with it) when the double is dropped.
    _server: LoopbackServer,
}

/// Clients for moto itself (never through the double).
#[derive(Clone)]
struct Moto {
    autoscaling: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
}

impl RefreshDouble {
    /// Listens on a free loopback port in front of moto at `moto` (`http://127.0.0.1:5100`).
    pub fn start(moto: &str) -> std::io::Result<Self> {
        let engine = Arc::new(Mutex::new(Engine::default()));
        let shared = Arc::clone(&engine);
        let upstream = moto.trim_end_matches('/').to_string();
        let server = LoopbackServer::start("refresh-double", false, move |http| async move {
            let config = crate::seed::moto_config(&upstream).await;
            let clients = Moto {
                autoscaling: aws_sdk_autoscaling::Client::new(&config),
                ec2: aws_sdk_ec2::Client::new(&config),
            };
            move |req| {
                let engine = Arc::clone(&shared);
                let http = http.clone();
                let upstream = upstream.clone();
                let clients = clients.clone();
                async move { handle(&engine, &clients, &http, &upstream, req).await }
            }
        })?;
        Ok(Self {
            url: server.url.clone(),
            moto: moto.to_string(),
            engine,
            _server: server,
        })
    }

    /// The moto endpoint behind the double.
    pub fn moto(&self) -> &str {
        &self.moto
    }

    /// Stops (`true`) or resumes the one-step advance on each DescribeInstanceRefreshes.
    pub async fn hold(&self, hold: bool) {
        self.engine.lock().await.hold = hold;
    }

    /// Instances launched from `image_id` fail their load balancer health checks.
    pub async fn fail_health_checks(&self, image_id: &str) {
        self.engine
            .lock()
            .await
            .failing_images
            .insert(image_id.to_string());
    }

    /// The group's refreshes, newest first.
    pub async fn refreshes(&self, group: &str) -> Vec<Record> {
        self.engine
            .lock()
            .await
            .refreshes
            .iter()
            .filter(|r| r.group == group)
            .cloned()
            .collect()
    }

    /// The operations the double answered or forwarded, in order (`StartInstanceRefresh`,
    /// `DescribeAutoScalingGroups`, ...).
    pub async fn seen(&self) -> Vec<String> {
        self.engine.lock().await.seen.clone()
    }

    /// How many requests named `op` arrived.
    pub async fn count(&self, op: &str) -> usize {
        self.seen()
            .await
            .iter()
            .filter(|s| s.as_str() == op)
            .count()
    }

    /// Advances the group's active refresh by one step now (for tests that [`hold`](Self::hold)).
    pub async fn advance(&self, group: &str) -> Result<(), String> {
        let config = crate::seed::moto_config(&self.moto).await;
        let clients = Moto {
            autoscaling: aws_sdk_autoscaling::Client::new(&config),
            ec2: aws_sdk_ec2::Client::new(&config),
        };
        let mut e = self.engine.lock().await;
        advance(&mut e, &clients, group).await
    }

    /// Makes the group's active refresh fail now with `reason`: with AutoRollback it rolls back
    /// (`RollbackInProgress`, then replaced instances return to the previous version), without
    /// it it is `Failed`.
    pub async fn fail(&self, group: &str, reason: &str) -> bool {
        let mut e = self.engine.lock().await;
        let Some(r) = e
            .refreshes
            .iter_mut()
            .find(|r| r.group == group && r.active())
        else {
            return false;
        };
        if r.pref_bool("AutoRollback", false) && r.desired.is_some() {
            start_rollback(r, reason);
        } else {
            r.status = "Failed".into();
            r.status_reason = Some(reason.to_string());
            r.end_time = Some(now());
        }
        true
    }
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    aws_smithy_types_fmt(secs)
}

/// Seconds since the epoch as `2026-01-02T03:04:05Z`.
fn aws_smithy_types_fmt(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn start_rollback(r: &mut Record, reason: &str) {
    r.status = "RollbackInProgress".into();
    r.status_reason = Some(format!("Rollback started: {reason}"));
    let to_update = r.replaced.len() as i32;
    r.rollback = Some(Rollback {
        reason: reason.to_string(),
        start_time: now(),
        percentage: if to_update == 0 { 100 } else { 0 },
        to_update,
        total: to_update,
    });
}

/// Decoded `application/x-www-form-urlencoded` pairs.
fn form(body: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn list(f: &BTreeMap<String, String>, prefix: &str) -> Vec<String> {
    (1..)
        .map_while(|i| f.get(&format!("{prefix}.member.{i}")).cloned())
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ok(op: &str, result: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<{op}Response xmlns=\"{XMLNS}\"><{op}Result>{result}</{op}Result>\
         <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{op}Response>",
        request_id()
    );
    xml(200, body)
}

fn error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type><Code>{code}</Code>\
         <Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
        esc(message),
        request_id()
    );
    xml(status, body)
}

fn xml(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/xml"),
    );
    r
}

async fn handle(
    engine: &Mutex<Engine>,
    moto: &Moto,
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
    let f = form(&body);
    let action = f.get("Action").cloned().unwrap_or_default();
    let mut e = engine.lock().await;
    e.seen.push(if action.is_empty() {
        format!("{} {}", parts.method, parts.uri.path())
    } else {
        action.clone()
    });
    match action.as_str() {
        "StartInstanceRefresh" => Ok(start(&mut e, moto, &f).await),
        "DescribeInstanceRefreshes" => Ok(describe(&mut e, moto, &f).await),
        "CancelInstanceRefresh" => Ok(cancel(&mut e, &f)),
        "RollbackInstanceRefresh" => Ok(rollback(&mut e, &f)),
        "DescribeAutoScalingGroups" => {
            let versions = e.versions.clone();
            drop(e);
            let resp = forward(http, upstream, &parts, body).await?;
            rewrite(resp, |text| instance_versions(text, &versions)).await
        }
        "DescribeTargetHealth" => {
            let failing: BTreeSet<String> = e
                .images
                .iter()
                .filter(|(_, img)| e.failing_images.contains(*img))
                .map(|(id, _)| id.clone())
                .collect();
            drop(e);
            let resp = forward(http, upstream, &parts, body).await?;
            rewrite(resp, |text| failing_targets(text, &failing)).await
        }
        _ => {
            drop(e);
            forward(http, upstream, &parts, body).await
        }
    }
}

async fn rewrite(
    resp: Response<Full<Bytes>>,
    f: impl FnOnce(&str) -> String,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (mut parts, body) = resp.into_parts();
    let bytes = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    if !parts.status.is_success() {
        return Ok(Response::from_parts(parts, Full::new(bytes)));
    }
    let text = f(&String::from_utf8_lossy(&bytes));
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Full::new(Bytes::from(text))))
}

/// DescribeAutoScalingGroups: each instance the double launched on the version it launched it
/// from (moto names the template's default version for all).
fn instance_versions(xml: &str, versions: &BTreeMap<String, String>) -> String {
    let mut out = xml.to_string();
    for (id, version) in versions {
        let needle = format!("<InstanceId>{id}</InstanceId>");
        let Some(at) = out.find(&needle) else {
            continue;
        };
        let end = out[at..].find("</member>").map_or(out.len(), |i| at + i);
        let Some(v) = out[at..end]
            .find("<Version>")
            .map(|i| at + i + "<Version>".len())
        else {
            continue;
        };
        let Some(v_end) = out[v..end].find("</Version>").map(|i| v + i) else {
            continue;
        };
        out.replace_range(v..v_end, version);
    }
    out
}

/// DescribeTargetHealth: targets of failing instances are `unhealthy`.
fn failing_targets(xml: &str, failing: &BTreeSet<String>) -> String {
    let mut out = xml.to_string();
    for id in failing {
        let needle = format!("<Id>{id}</Id>");
        let mut from = 0;
        while let Some(rel) = out[from..].find(&needle) {
            let at = from + rel;
            // The member around this target.
            let start = out[..at].rfind("<member>").unwrap_or(0);
            let end = out[at..].find("</member>").map_or(out.len(), |i| at + i);
            let member = &out[start..end];
            let new_health = "<TargetHealth><State>unhealthy</State><Reason>Target.FailedHealthChecks</Reason>\
                              <Description>Health checks failed</Description></TargetHealth>";
            let replaced = match (
                member.find("<TargetHealth>"),
                member.find("</TargetHealth>"),
            ) {
                (Some(a), Some(b)) => format!(
                    "{}{new_health}{}",
                    &member[..a],
                    &member[b + "</TargetHealth>".len()..]
                ),
                _ => format!("{member}{new_health}"),
            };
            out.replace_range(start..end, &replaced);
            from = start + replaced.len();
        }
    }
    out
}

async fn group_template(
    moto: &Moto,
    group: &str,
) -> Result<Option<(String, String, Vec<(String, String)>)>, String> {
    let out = moto
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .map_err(|e| {
            format!(
                "DescribeAutoScalingGroups: {}",
                aws_sdk_autoscaling::error::DisplayErrorContext(e)
            )
        })?;
    let Some(g) = out.auto_scaling_groups().first() else {
        return Ok(None);
    };
    let (id, version) = g
        .launch_template()
        .map(|t| {
            (
                t.launch_template_id().unwrap_or_default().to_string(),
                t.version().unwrap_or("$Default").to_string(),
            )
        })
        .unwrap_or_default();
    let instances = g
        .instances()
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_string(),
                i.launch_template()
                    .and_then(|t| t.version())
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    Ok(Some((id, version, instances)))
}

/// A version as a number (`$Latest` / `$Default` resolved through EC2).
async fn resolve(moto: &Moto, template: &str, version: &str) -> Result<String, String> {
    if version.parse::<i64>().is_ok() {
        return Ok(version.to_string());
    }
    let mut req = moto
        .ec2
        .describe_launch_template_versions()
        .versions(version);
    req = if template.starts_with("lt-") {
        req.launch_template_id(template)
    } else {
        req.launch_template_name(template)
    };
    let out = req
        .send()
        .await
        .map_err(|e| format!("{}", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
    out.launch_template_versions()
        .first()
        .and_then(|v| v.version_number())
        .map(|n| n.to_string())
        .ok_or_else(|| format!("launch template {template} has no version {version}"))
}

async fn start(e: &mut Engine, moto: &Moto, f: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    let Some(group) = f.get("AutoScalingGroupName").cloned() else {
        return error(
            400,
            "ValidationError",
            "1 validation error detected: Value null at 'autoScalingGroupName' failed to satisfy constraint: Member must not be null",
        );
    };
    if let Some(s) = f.get("Strategy")
        && s != "Rolling"
    {
        return error(
            400,
            "ValidationError",
            &format!("Strategy {s} is not supported"),
        );
    }
    let (template_id, group_version, instances) = match group_template(moto, &group).await {
        Ok(Some(g)) => g,
        Ok(None) => {
            return error(
                400,
                "ValidationError",
                &format!("AutoScalingGroup name not found - AutoScalingGroup {group} not found"),
            );
        }
        Err(m) => return error(500, "InternalFailure", &m),
    };
    if e.refreshes.iter().any(|r| r.group == group && r.active()) {
        let active = e
            .refreshes
            .iter()
            .find(|r| r.group == group && r.active())
            .map(|r| r.id.clone())
            .unwrap_or_default();
        return error(
            400,
            "InstanceRefreshInProgress",
            &format!(
                "An Instance Refresh is already in progress and blocks the execution of this Instance Refresh. (Instance Refresh Id: {active})"
            ),
        );
    }
    let prefs: BTreeMap<String, String> = f
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("Preferences.")
                .map(|k| (k.to_string(), v.clone()))
        })
        .filter(|(k, _)| !k.contains('.'))
        .collect();
    let checkpoints: Vec<i32> = list(f, "Preferences.CheckpointPercentages")
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    let alarms = list(f, "Preferences.AlarmSpecification.Alarms");
    let lt_id = f
        .get("DesiredConfiguration.LaunchTemplate.LaunchTemplateId")
        .cloned();
    let lt_name = f
        .get("DesiredConfiguration.LaunchTemplate.LaunchTemplateName")
        .cloned();
    let lt_version = f
        .get("DesiredConfiguration.LaunchTemplate.Version")
        .cloned()
        .unwrap_or_else(|| "$Default".into());
    let desired = (lt_id.is_some() || lt_name.is_some())
        .then(|| (lt_id.clone(), lt_name.clone(), lt_version.clone()));
    if let Some(m) = prefs
        .get("MinHealthyPercentage")
        .and_then(|v| v.parse::<i32>().ok())
        && !(0..=100).contains(&m)
    {
        return error(
            400,
            "ValidationError",
            "MinHealthyPercentage must be between 0 and 100",
        );
    }
    let auto_rollback = prefs.get("AutoRollback").is_some_and(|v| v == "true");
    if auto_rollback && desired.is_none() {
        return error(
            400,
            "ValidationError",
            "AutoRollback requires a DesiredConfiguration with a launch template",
        );
    }
    if !alarms.is_empty() && !auto_rollback {
        return error(
            400,
            "ValidationError",
            "AlarmSpecification requires AutoRollback to be true",
        );
    }
    if auto_rollback && lt_version.starts_with('$') {
        return error(
            400,
            "ValidationError",
            "AutoRollback is not supported for a desired configuration with $Latest or $Default",
        );
    }
    let (want_template, want_version) = match &desired {
        Some((id, name, v)) => (id.clone().or(name.clone()).unwrap_or_default(), v.clone()),
        None => (template_id.clone(), group_version.clone()),
    };
    let target = match resolve(moto, &want_template, &want_version).await {
        Ok(v) => v,
        Err(m) => return error(400, "ValidationError", &m),
    };
    let previous_version = match resolve(moto, &template_id, &group_version).await {
        Ok(v) => v,
        Err(m) => return error(400, "ValidationError", &m),
    };
    e.next_id += 1;
    let id = format!("{:08x}-5e1f-4d2a-9b3c-{:012x}", e.next_id, e.next_id);
    let skip = prefs.get("SkipMatching").is_some_and(|v| v == "true");
    let to_update = instances
        .iter()
        .filter(|(iid, v)| !skip || e.versions.get(iid).unwrap_or(v) != &target)
        .count() as i32;
    e.refreshes.insert(
        0,
        Record {
            id: id.clone(),
            group,
            status: "Pending".into(),
            start_time: now(),
            instances_to_update: to_update,
            total: to_update,
            preferences: prefs,
            checkpoints,
            alarms,
            desired,
            previous: (template_id, group_version),
            target_version: target,
            previous_version,
            ..Record::default()
        },
    );
    ok(
        "StartInstanceRefresh",
        &format!("<InstanceRefreshId>{id}</InstanceRefreshId>"),
    )
}

fn cancel(e: &mut Engine, f: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    let group = f.get("AutoScalingGroupName").cloned().unwrap_or_default();
    match e.refreshes.iter_mut().find(|r| {
        r.group == group && matches!(r.status.as_str(), "Pending" | "InProgress" | "Baking")
    }) {
        Some(r) => {
            r.status = "Cancelling".into();
            ok(
                "CancelInstanceRefresh",
                &format!("<InstanceRefreshId>{}</InstanceRefreshId>", r.id),
            )
        }
        None => error(
            400,
            "ActiveInstanceRefreshNotFound",
            &format!(
                "No in progress or pending Instance Refresh found for Auto Scaling group {group}"
            ),
        ),
    }
}

fn rollback(e: &mut Engine, f: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    let group = f.get("AutoScalingGroupName").cloned().unwrap_or_default();
    let Some(r) = e.refreshes.iter_mut().find(|r| {
        r.group == group && matches!(r.status.as_str(), "Pending" | "InProgress" | "Baking")
    }) else {
        return error(
            400,
            "ActiveInstanceRefreshNotFound",
            &format!(
                "No in progress or pending Instance Refresh found for Auto Scaling group {group}"
            ),
        );
    };
    match &r.desired {
        None => error(
            400,
            "IrreversibleInstanceRefresh",
            "The instance refresh cannot be rolled back: it was started without a desired configuration",
        ),
        Some((_, _, v)) if v.starts_with('$') => error(
            400,
            "IrreversibleInstanceRefresh",
            "The instance refresh cannot be rolled back: its desired configuration uses $Latest or $Default",
        ),
        Some(_) => {
            start_rollback(
                r,
                "Rollback requested by the user (RollbackInstanceRefresh)",
            );
            ok(
                "RollbackInstanceRefresh",
                &format!("<InstanceRefreshId>{}</InstanceRefreshId>", r.id),
            )
        }
    }
}

async fn describe(
    e: &mut Engine,
    moto: &Moto,
    f: &BTreeMap<String, String>,
) -> Response<Full<Bytes>> {
    let Some(group) = f.get("AutoScalingGroupName").cloned() else {
        return error(
            400,
            "ValidationError",
            "1 validation error detected: Value null at 'autoScalingGroupName' failed to satisfy constraint: Member must not be null",
        );
    };
    if !e.hold
        && let Err(m) = advance(e, moto, &group).await
    {
        return error(500, "InternalFailure", &m);
    }
    let ids = list(f, "InstanceRefreshIds");
    let max = f
        .get("MaxRecords")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 100);
    let skip = f
        .get("NextToken")
        .and_then(|t| t.strip_prefix("page-"))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let matching: Vec<&Record> = e
        .refreshes
        .iter()
        .filter(|r| r.group == group && (ids.is_empty() || ids.contains(&r.id)))
        .collect();
    let page: Vec<String> = matching
        .iter()
        .skip(skip)
        .take(max)
        .map(|r| member(r))
        .collect();
    let next = if matching.len() > skip + max {
        format!("<NextToken>page-{}</NextToken>", skip + max)
    } else {
        String::new()
    };
    ok(
        "DescribeInstanceRefreshes",
        &format!(
            "<InstanceRefreshes>{}</InstanceRefreshes>{next}",
            page.join("")
        ),
    )
}

fn tag(name: &str, v: impl std::fmt::Display) -> String {
    format!("<{name}>{}</{name}>", esc(&v.to_string()))
}

fn member(r: &Record) -> String {
    let mut m = String::from("<member>");
    m += &tag("InstanceRefreshId", &r.id);
    m += &tag("AutoScalingGroupName", &r.group);
    m += &tag("Status", &r.status);
    if let Some(s) = &r.status_reason {
        m += &tag("StatusReason", s);
    }
    m += &tag("StartTime", &r.start_time);
    if let Some(t) = &r.end_time {
        m += &tag("EndTime", t);
    }
    m += &tag("PercentageComplete", r.percentage_complete);
    m += &tag("InstancesToUpdate", r.instances_to_update);
    m += &format!(
        "<ProgressDetails><LivePoolProgress>{}{}</LivePoolProgress></ProgressDetails>",
        tag("PercentageComplete", r.percentage_complete),
        tag("InstancesToUpdate", r.instances_to_update)
    );
    m += "<Preferences>";
    for (k, v) in &r.preferences {
        m += &tag(k, v);
    }
    if !r.checkpoints.is_empty() {
        m += "<CheckpointPercentages>";
        for c in &r.checkpoints {
            m += &tag("member", c);
        }
        m += "</CheckpointPercentages>";
    }
    if !r.alarms.is_empty() {
        m += "<AlarmSpecification><Alarms>";
        for a in &r.alarms {
            m += &tag("member", a);
        }
        m += "</Alarms></AlarmSpecification>";
    }
    if !r.preferences.contains_key("ScaleInProtectedInstances") {
        m += "<ScaleInProtectedInstances>Ignore</ScaleInProtectedInstances>";
    }
    if !r.preferences.contains_key("StandbyInstances") {
        m += "<StandbyInstances>Ignore</StandbyInstances>";
    }
    m += "</Preferences>";
    if let Some((id, name, version)) = &r.desired {
        m += "<DesiredConfiguration><LaunchTemplate>";
        if let Some(id) = id {
            m += &tag("LaunchTemplateId", id);
        }
        if let Some(name) = name {
            m += &tag("LaunchTemplateName", name);
        }
        m += &tag("Version", version);
        m += "</LaunchTemplate></DesiredConfiguration>";
    }
    if let Some(rb) = &r.rollback {
        m += "<RollbackDetails>";
        m += &tag("RollbackReason", &rb.reason);
        m += &tag("RollbackStartTime", &rb.start_time);
        m += &tag("PercentageCompleteOnRollback", rb.percentage);
        m += &tag("InstancesToUpdateOnRollback", rb.to_update);
        m += &format!(
            "<ProgressDetailsOnRollback><LivePoolProgress>{}{}</LivePoolProgress></ProgressDetailsOnRollback>",
            tag("PercentageComplete", rb.percentage),
            tag("InstancesToUpdate", rb.to_update)
        );
        m += "</RollbackDetails>";
    }
    m += &tag("Strategy", "Rolling");
    m += "</member>";
    m
}

/// Replaces one instance of `group` with one launched from `version` of the group's template:
/// the group points at `version`, moto terminates the instance and launches its replacement
/// from the group's template, and the group points back at `restore`. Returns the new instance.
async fn replace(
    e: &mut Engine,
    moto: &Moto,
    group: &str,
    template: &str,
    instance: &str,
    version: &str,
    restore: &str,
) -> Result<Option<String>, String> {
    let set = |v: &str| {
        moto.autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(group)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(template)
                    .version(v)
                    .build(),
            )
            .send()
    };
    let before: BTreeSet<String> = group_template(moto, group)
        .await?
        .map(|(_, _, i)| i.into_iter().map(|(id, _)| id).collect())
        .unwrap_or_default();
    set(version).await.map_err(|e| {
        format!(
            "UpdateAutoScalingGroup: {}",
            aws_sdk_autoscaling::error::DisplayErrorContext(e)
        )
    })?;
    let terminated = moto
        .autoscaling
        .terminate_instance_in_auto_scaling_group()
        .instance_id(instance)
        .should_decrement_desired_capacity(false)
        .send()
        .await;
    let restored = set(restore).await;
    terminated.map_err(|e| {
        format!(
            "TerminateInstanceInAutoScalingGroup: {}",
            aws_sdk_autoscaling::error::DisplayErrorContext(e)
        )
    })?;
    restored.map_err(|e| {
        format!(
            "UpdateAutoScalingGroup: {}",
            aws_sdk_autoscaling::error::DisplayErrorContext(e)
        )
    })?;
    let after = group_template(moto, group)
        .await?
        .map(|(_, _, i)| i)
        .unwrap_or_default();
    let new = after
        .into_iter()
        .map(|(id, _)| id)
        .find(|id| !before.contains(id));
    if let Some(id) = &new {
        e.versions.insert(id.clone(), version.to_string());
        let image = moto
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .ok()
            .and_then(|o| {
                o.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .find_map(|i| i.image_id().map(str::to_string))
            });
        if let Some(img) = image {
            e.images.insert(id.clone(), img);
        }
    }
    Ok(new)
}

/// One step of the group's active refresh.
async fn advance(e: &mut Engine, moto: &Moto, group: &str) -> Result<(), String> {
    let Some(idx) = e
        .refreshes
        .iter()
        .position(|r| r.group == group && r.active())
    else {
        return Ok(());
    };
    let mut r = e.refreshes[idx].clone();
    let template = r.previous.0.clone();
    match r.status.as_str() {
        "Pending" => {
            r.status = "InProgress".into();
            if r.total == 0 {
                r.percentage_complete = 100;
            }
        }
        "Cancelling" => {
            r.status = "Cancelled".into();
            r.status_reason = Some("Instance refresh was cancelled by the user".into());
            r.end_time = Some(now());
        }
        "Baking" => {
            finish(moto, &mut r).await?;
        }
        "InProgress" if r.at_checkpoint => {
            r.at_checkpoint = false;
            r.status_reason = None;
        }
        "InProgress" => {
            let instances = group_template(moto, group)
                .await?
                .map(|(_, _, i)| i)
                .unwrap_or_default();
            let pending: Vec<String> = instances
                .iter()
                .filter(|(id, v)| {
                    let on = e.versions.get(id).unwrap_or(v);
                    !r.replaced.contains(id)
                        && (on != &r.target_version || !r.pref_bool("SkipMatching", false))
                })
                .map(|(id, _)| id.clone())
                .collect();
            let min = r
                .preferences
                .get("MinHealthyPercentage")
                .and_then(|m| m.parse::<usize>().ok())
                .unwrap_or(90);
            let batch = (instances.len() * (100 - min.min(100)) / 100).max(1);
            for id in pending.iter().take(batch) {
                let target = r.target_version.clone();
                let restore = r.previous.1.clone();
                if let Some(new) = replace(e, moto, group, &template, id, &target, &restore).await?
                {
                    r.replaced.push(new);
                }
            }
            let done = r.replaced.len() as i32;
            r.instances_to_update = (r.total - done).max(0);
            r.percentage_complete = if r.total == 0 {
                100
            } else {
                (done * 100 / r.total).min(100)
            };
            if let Some(cp) = r.checkpoints.iter().find(|c| {
                **c < 100 && **c <= r.percentage_complete && (done - 1) * 100 / r.total.max(1) < **c
            }) {
                r.at_checkpoint = true;
                r.status_reason = Some(format!(
                    "Checkpoint {cp}% reached; waiting for the checkpoint delay"
                ));
            }
            if r.instances_to_update == 0 && pending.len() <= batch {
                let bake = r
                    .preferences
                    .get("BakeTime")
                    .and_then(|b| b.parse::<i32>().ok())
                    .unwrap_or(0);
                if bake > 0 && !r.baked {
                    r.status = "Baking".into();
                    r.baked = true;
                } else {
                    finish(moto, &mut r).await?;
                }
            }
        }
        "RollbackInProgress" => {
            let instances = group_template(moto, group)
                .await?
                .map(|(_, _, i)| i)
                .unwrap_or_default();
            let on_new: Vec<String> = instances
                .iter()
                .filter(|(id, v)| {
                    e.versions.get(id).unwrap_or(v) == &r.target_version && r.replaced.contains(id)
                })
                .map(|(id, _)| id.clone())
                .collect();
            let previous = r.previous_version.clone();
            let restore = r.previous.1.clone();
            if let Some(id) = on_new.first() {
                replace(e, moto, group, &template, id, &previous, &restore).await?;
            }
            let left = on_new.len().saturating_sub(1) as i32;
            if let Some(rb) = r.rollback.as_mut() {
                rb.to_update = left;
                rb.percentage = if rb.total == 0 {
                    100
                } else {
                    (rb.total - left) * 100 / rb.total
                };
            }
            if left == 0 {
                r.status = "RollbackSuccessful".into();
                r.status_reason = Some("Instance refresh rollback completed successfully".into());
                r.end_time = Some(now());
            }
        }
        _ => {}
    }
    e.refreshes[idx] = r;
    Ok(())
}

/// A refresh's success: the group keeps the desired configuration.
async fn finish(moto: &Moto, r: &mut Record) -> Result<(), String> {
    if let Some((id, name, version)) = &r.desired {
        let mut spec = LaunchTemplateSpecification::builder().version(version);
        spec = match (id, name) {
            (Some(id), _) => spec.launch_template_id(id),
            (None, Some(name)) => spec.launch_template_name(name),
            (None, None) => spec,
        };
        moto.autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(&r.group)
            .launch_template(spec.build())
            .send()
            .await
            .map_err(|e| {
                format!(
                    "UpdateAutoScalingGroup: {}",
                    aws_sdk_autoscaling::error::DisplayErrorContext(e)
                )
            })?;
    }
    r.status = "Successful".into();
    r.status_reason = None;
    r.percentage_complete = 100;
    r.instances_to_update = 0;
    r.end_time = Some(now());
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn forms_decode_like_the_sdk_encodes_them() {
        let f = form(b"Action=StartInstanceRefresh&AutoScalingGroupName=web%2Dprod&Preferences.CheckpointPercentages.member.1=20&Preferences.CheckpointPercentages.member.2=100&X=a+b%25");
        assert_eq!(f["AutoScalingGroupName"], "web-prod");
        assert_eq!(list(&f, "Preferences.CheckpointPercentages"), ["20", "100"]);
        assert_eq!(f["X"], "a b%");
    }

    #[test]
    fn timestamps_are_iso8601_utc() {
        assert_eq!(aws_smithy_types_fmt(0), "1970-01-01T00:00:00Z");
        assert_eq!(aws_smithy_types_fmt(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn instance_versions_and_failing_targets_rewrite_only_their_instance() {
        let groups = "<Instances><member><InstanceId>i-1</InstanceId><LaunchTemplate><Version>1</Version></LaunchTemplate></member>\
                      <member><InstanceId>i-2</InstanceId><LaunchTemplate><Version>1</Version></LaunchTemplate></member></Instances>";
        let v = BTreeMap::from([("i-2".to_string(), "3".to_string())]);
        let out = instance_versions(groups, &v);
        assert!(out.contains("<InstanceId>i-1</InstanceId><LaunchTemplate><Version>1</Version>"));
        assert!(out.contains("<InstanceId>i-2</InstanceId><LaunchTemplate><Version>3</Version>"));
        let health = "<TargetHealthDescriptions><member><Target><Id>i-1</Id></Target><TargetHealth><State>healthy</State></TargetHealth></member>\
                      <member><Target><Id>i-2</Id></Target><TargetHealth><State>healthy</State></TargetHealth></member></TargetHealthDescriptions>";
        let out = failing_targets(health, &BTreeSet::from(["i-2".to_string()]));
        assert!(out.contains("<Id>i-1</Id></Target><TargetHealth><State>healthy</State>"));
        assert!(out.contains("<Id>i-2</Id></Target><TargetHealth><State>unhealthy</State><Reason>Target.FailedHealthChecks</Reason>"));
    }
}
