//! The few Kubernetes calls the staging steps make, each with its error said in words: read one
//! object (absent is `None`), list, server-side apply (one field manager, forced), delete with a
//! UID precondition (exactly the object that was checked).

use std::fmt::Debug;

use kube::Resource;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cluster::kube_error;
use crate::error::Result;

/// `ns/name` or `name`.
fn object<K: Resource<DynamicType = ()>>(api: &Api<K>, name: &str) -> String {
    let kind = K::kind(&());
    match api.namespace() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

pub async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.get_opt(name)
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
    api.list(params)
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
    api.patch(
        &name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(obj),
    )
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
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(kube_error(&format!("deleting {}", object(api, name)), e)),
    }
}
