//! The few Kubernetes calls the staging steps make, each with its error said in words: read one
//! object (absent is `None`), list, server-side apply (one field manager, forced), delete with a
//! UID precondition (exactly the object that was checked).
//!
//! Every call is retried when the API server may answer later ([`retrying`]): 429 (waiting at
//! least its `retryAfterSeconds`), 5xx, and no answer at all (refused, reset, timed out), with
//! bounded exponential backoff and jitter. Each of these calls is idempotent: a read, a forced
//! apply, and a delete whose retry after a lost answer finds the object gone.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use kube::Resource;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::kube::client::kube_error;

/// `Kind ns/name` or `Kind name`, for messages.
pub fn describe<K: Resource<DynamicType = ()>>(namespace: Option<&str>, name: &str) -> String {
    let kind = K::kind(&());
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn object<K: Resource<DynamicType = ()>>(api: &Api<K>, name: &str) -> String {
    describe::<K>(api.namespace(), name)
}

pub async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    retrying(|| api.get_opt(name))
        .await
        .map_err(|e| kube_error(&format!("reading {}", object(api, name)), e))
}

pub async fn list<K>(api: &Api<K>, params: &ListParams) -> Result<Vec<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let what = match (&params.label_selector, &params.field_selector) {
        (Some(l), _) => format!("listing {} ({l})", K::plural(&())),
        (None, Some(f)) => format!("listing {} ({f})", K::plural(&())),
        (None, None) => format!("listing {}", K::plural(&())),
    };
    retrying(|| api.list(params))
        .await
        .map(|l| l.items)
        .map_err(|e| kube_error(&what, e))
}

/// Server-side apply of `obj` under `manager`, forced (snapstage owns these fields).
pub async fn apply<K>(api: &Api<K>, obj: &K, manager: &str) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(manager).force();
    let patch = Patch::Apply(obj);
    retrying(|| api.patch(&name, &params, &patch))
        .await
        .map_err(|e| kube_error(&format!("applying {}", object(api, &name)), e))
}

/// Deletes `name` if its UID is still `uid`; `false` when it was already gone.
pub async fn delete<K>(api: &Api<K>, name: &str, uid: Option<String>) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match retrying(|| api.delete(name, &params)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(kube_error(&format!("deleting {}", object(api, name)), e)),
    }
}

/// Tries in total (the first included) of a call the API server may answer later.
pub const ATTEMPTS: u32 = 4;
/// The first backoff, doubled on each retry.
const BASE: Duration = Duration::from_millis(250);
/// The longest single wait, a 429's `retryAfterSeconds` included.
const MAX_WAIT: Duration = Duration::from_secs(8);

/// True for an answer worth waiting for: 429, 5xx, or no answer (refused, reset, timed out).
pub fn retryable(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(s) => s.code == 429 || (500..=599).contains(&s.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The wait before retry number `retry` (0 for the first): exponential, capped, "equal jitter"
/// (half fixed, half random), and at least a 429's `retryAfterSeconds`.
fn delay(retry: u32, err: &kube::Error) -> Duration {
    let exp = BASE.saturating_mul(1u32 << retry.min(16)).min(MAX_WAIT);
    let jittered = exp / 2 + exp.mul_f64(jitter() / 2.0);
    let retry_after = match err {
        kube::Error::Api(s) => s
            .details
            .as_ref()
            .map(|d| Duration::from_secs(u64::from(d.retry_after_seconds)))
            .filter(|d| !d.is_zero()),
        _ => None,
    };
    match retry_after {
        Some(ra) => ra.min(MAX_WAIT).max(jittered),
        None => jittered,
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

/// Runs `call` until it succeeds, fails for good, or [`ATTEMPTS`] tries failed [`retryable`]-ly.
/// Only for calls that are safe to repeat (see the module notes; a create handles the 409 its
/// own retry may meet).
pub async fn retrying<T, F, Fut>(mut call: F) -> std::result::Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, kube::Error>>,
{
    let mut retry = 0;
    loop {
        match call().await {
            Err(e) if retry + 1 < ATTEMPTS && retryable(&e) => {
                let wait = delay(retry, &e);
                tracing::warn!(error = %e, attempt = retry + 1, wait_ms = wait.as_millis() as u64, "Kubernetes API call failed; retrying");
                tokio::time::sleep(wait).await;
                retry += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn api(code: u16, retry_after: u32) -> kube::Error {
        let s: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": code, "reason": "y", "message": "x",
            "details": {"retryAfterSeconds": retry_after}
        }))
        .unwrap();
        kube::Error::Api(s.boxed())
    }

    #[test]
    fn only_throttling_server_errors_and_silence_are_retried() {
        for code in [429, 500, 502, 503, 504] {
            assert!(retryable(&api(code, 0)), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 410, 422] {
            assert!(!retryable(&api(code, 0)), "{code}");
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        for retry in 0..3 {
            let d = delay(retry, &api(503, 0));
            let exp = BASE * (1 << retry);
            assert!(d >= exp / 2 && d <= exp, "{retry}: {d:?}");
        }
        assert!(delay(30, &api(503, 0)) <= MAX_WAIT);
        assert!(delay(0, &api(429, 3)) >= Duration::from_secs(3));
        assert_eq!(delay(0, &api(429, 600)), MAX_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_tried_at_most_attempts_times() {
        let mut n = 0;
        let r: std::result::Result<(), _> = retrying(|| {
            n += 1;
            async { Err(api(503, 0)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(n, ATTEMPTS);
        let mut n = 0;
        let r: std::result::Result<(), _> = retrying(|| {
            n += 1;
            async { Err(api(403, 0)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(n, 1, "a refusal is not retried");
    }
}
