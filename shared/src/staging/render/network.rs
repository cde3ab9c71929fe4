//! Isolation until masked: the staging namespace's NetworkPolicies.
//!
//! Restored data is production's data until the masking Job has run, so nobody may reach the
//! staging database before then:
//!
//! | policy | selects | applied | allows |
//! | --- | --- | --- | --- |
//! | `staging-db-isolation` | every pod of the namespace | with the Namespace, before anything runs | ingress only from snapstage's own masking and migration Jobs in the namespace |
//! | `staging-db-egress` | the database pod, or the application's (snapstage's own workload; not a user template) | with the Namespace | egress only to DNS: the copy of production connects nowhere (no WAL archive, no replication source, no foreign server; a Jenkins copy reaches no agent, no deploy target; a Nexus copy no S3 blob store, no proxied remote) |
//! | `staging-db-access` | the database or application pod (a user template: every pod) | once masking succeeded, or once the database is ready when no masking is configured | ingress on the published port (Jenkins, Nexus: their HTTP port) from `networkPolicy.allowFrom` (NetworkPolicy peers; default: from anywhere the cluster routes) |
//!
//! A masking that fails never opens the database. NetworkPolicies are enforced by the cluster's
//! network plugin (Calico, Cilium, the VPC CNI with network policy enabled, …); on a cluster
//! without one they are stored and have no effect — the README says how to check.
//! `networkPolicy.enabled: false` leaves them out.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::kube::labels::MANAGED_BY;
use crate::kube::labels::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY};
use crate::staging::objects::INSTANCE;
use crate::staging::spec::Spec;

pub const ISOLATION: &str = "staging-db-isolation";
pub const EGRESS: &str = "staging-db-egress";
pub const ACCESS: &str = "staging-db-access";

fn meta(spec: &Spec, name: &str) -> ObjectMeta {
    let mut labels = crate::staging::render::parts::app_labels(spec);
    labels.insert(LABEL_COMPONENT.into(), "network-policy".into());
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(spec.namespace.clone()),
        labels: Some(labels),
        ..Default::default()
    }
}

fn selector(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    }
}

/// snapstage's database pod, or an application's built-in one: its selector labels and
/// component (the built-in templates label their pods the same way).
fn database_pod(spec: &Spec) -> LabelSelector {
    let mut l = crate::staging::render::parts::selector_labels(spec.engine);
    l.insert(LABEL_COMPONENT.into(), spec.engine.component().into());
    selector(l)
}

/// snapstage's masking and migration Job pods of this namespace.
fn snapstage_jobs() -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_INSTANCE.to_string(), INSTANCE.to_string()),
        ])),
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: LABEL_COMPONENT.into(),
            operator: "In".into(),
            values: Some(vec!["masking".into(), "migration".into()]),
        }]),
    }
}

fn dns_ports() -> Vec<NetworkPolicyPort> {
    ["UDP", "TCP"]
        .into_iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(53)),
            protocol: Some(p.into()),
            end_port: None,
        })
        .collect()
}

/// The policies applied with the Namespace, before anything runs in it.
pub fn isolation(spec: &Spec) -> Vec<NetworkPolicy> {
    if !spec.network_policy.enabled {
        return Vec::new();
    }
    let mut out = vec![NetworkPolicy {
        metadata: meta(spec, ISOLATION),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(snapstage_jobs()),
                    ..Default::default()
                }]),
                ports: None,
            }]),
            egress: None,
        }),
    }];
    if spec.own_workload() {
        out.push(NetworkPolicy {
            metadata: meta(spec, EGRESS),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(database_pod(spec)),
                policy_types: Some(vec!["Egress".into()]),
                ingress: None,
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: None,
                    ports: Some(dns_ports()),
                }]),
            }),
        });
    }
    out
}

/// The policy that publishes the database (after masking).
pub fn access(spec: &Spec, port: i32) -> Option<NetworkPolicy> {
    let p = &spec.network_policy;
    if !p.enabled {
        return None;
    }
    let (pod_selector, ports) = match spec.own_workload() {
        true => (
            database_pod(spec),
            Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(port)),
                protocol: Some("TCP".into()),
                end_port: None,
            }]),
        ),
        // A user template's pods and ports are the user's: every pod, every port.
        false => (LabelSelector::default(), None),
    };
    Some(NetworkPolicy {
        metadata: meta(spec, ACCESS),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: (!p.allow_from.is_empty()).then(|| p.allow_from.clone()),
                ports,
            }]),
            egress: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::staging::fixtures::plan_for;
    use crate::staging::render::jobs::{self, JobKind};

    /// A label selector's meaning (matchLabels and `In` expressions).
    fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
        let exact = sel
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        let exprs = sel.match_expressions.iter().flatten().all(|e| {
            assert_eq!(e.operator, "In");
            labels
                .get(&e.key)
                .is_some_and(|v| e.values.iter().flatten().any(|x| x == v))
        });
        exact && exprs
    }

    #[test]
    fn the_database_is_closed_until_published_and_then_open_on_its_port_only() {
        let plan = plan_for(json!({"volumeId": "vol-0123456789abcdef0",
            "networkPolicy": {"allowFrom": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}}));
        let iso = isolation(&plan.spec);
        assert_eq!(iso.len(), 2);
        let deny = iso[0].spec.as_ref().unwrap();
        assert_eq!(
            deny.pod_selector,
            Some(LabelSelector::default()),
            "every pod"
        );
        let from = deny.ingress.as_ref().unwrap()[0].from.as_ref().unwrap();
        assert_eq!(from.len(), 1);
        let jobs_selector = from[0].pod_selector.as_ref().unwrap();
        // The Job pods carry what the rule selects; the database pod does not.
        let masked = plan_for(json!({"volumeId": "vol-0123456789abcdef0",
            "masking": {"image": "postgres:17", "command": ["psql", "-f", "/scripts/mask.sql"]},
            "migration": {"image": "postgres:17", "command": ["psql", "-c", "SELECT 1"]}}));
        for kind in [JobKind::Masking, JobKind::Migration] {
            let job = jobs::render(&masked.spec, kind).unwrap();
            let labels = job.spec.unwrap().template.metadata.unwrap().labels.unwrap();
            assert!(matches(jobs_selector, &labels), "{kind:?}: {labels:?}");
        }
        let db_labels = plan
            .rendered
            .builtin()
            .unwrap()
            .stateful_set
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        assert!(!matches(jobs_selector, &db_labels));
        assert_eq!(db_labels[LABEL_COMPONENT], "database");
        let egress = iso[1].spec.as_ref().unwrap();
        assert_eq!(egress.policy_types, Some(vec!["Egress".into()]));
        assert!(
            matches(egress.pod_selector.as_ref().unwrap(), &db_labels),
            "selects the database pod"
        );
        let rule = &egress.egress.as_ref().unwrap()[0];
        assert!(
            rule.to.is_none()
                && rule
                    .ports
                    .as_ref()
                    .unwrap()
                    .iter()
                    .all(|p| p.port == Some(IntOrString::Int(53)))
        );

        let open = access(&plan.spec, 5432).unwrap();
        let rule = &open.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
        assert_eq!(
            rule.from.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .unwrap()
                .cidr,
            "10.20.0.0/16"
        );
        assert_eq!(
            rule.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(5432))
        );
    }

    #[test]
    fn disabled_renders_none() {
        let plan = plan_for(
            json!({"volumeId": "vol-0123456789abcdef0", "networkPolicy": {"enabled": false}}),
        );
        assert!(isolation(&plan.spec).is_empty());
        assert!(access(&plan.spec, 5432).is_none());
    }
}
