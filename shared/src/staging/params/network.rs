//! The `networkPolicy` parameter section (see [`super`]).

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Peers `allowFrom` may list.
pub const MAX_PEERS: usize = 20;

/// The `networkPolicy` parameter section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyParams {
    /// False: no NetworkPolicy at all.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Who may reach the database once it is published, as NetworkPolicy peers
    /// (`ipBlock`, `namespaceSelector`, `podSelector`): e.g. the integration tests' CodeBuild
    /// subnets. Empty: from anywhere the cluster routes.
    #[serde(default)]
    pub allow_from: Vec<NetworkPolicyPeer>,
}

fn enabled() -> bool {
    true
}

impl Default for NetworkPolicyParams {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_from: Vec::new(),
        }
    }
}

impl NetworkPolicyParams {
    pub fn validate(&self) -> Result<()> {
        if self.allow_from.len() > MAX_PEERS {
            return Err(Error::parameter(
                "networkPolicy.allowFrom",
                format!("at most {MAX_PEERS} peers, got {}", self.allow_from.len()),
            ));
        }
        for (i, peer) in self.allow_from.iter().enumerate() {
            let field = format!("networkPolicy.allowFrom[{i}]");
            match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
                (None, None, None) => {
                    return Err(Error::parameter(
                        field,
                        "expected a NetworkPolicy peer: ipBlock (e.g. {\"cidr\": \"10.0.0.0/16\"}), namespaceSelector or podSelector",
                    ));
                }
                (Some(b), None, None) if !is_cidr(&b.cidr) => {
                    return Err(Error::parameter(
                        format!("{field}.ipBlock.cidr"),
                        format!("expected a CIDR like \"10.0.0.0/16\", got {:?}", b.cidr),
                    ));
                }
                (Some(_), None, None) => {}
                (Some(_), _, _) => {
                    return Err(Error::parameter(
                        field,
                        "ipBlock cannot be combined with namespaceSelector or podSelector in one peer; list them as two peers",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Short form for summaries.
    pub fn describe_access(&self) -> String {
        if self.allow_from.is_empty() {
            return "from anywhere in the cluster's network".into();
        }
        let peers: Vec<String> = self
            .allow_from
            .iter()
            .map(
                |p| match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
                    (Some(b), _, _) => b.cidr.clone(),
                    (None, Some(_), Some(_)) => "pods of selected namespaces".into(),
                    (None, Some(_), None) => "selected namespaces".into(),
                    _ => "selected pods".into(),
                },
            )
            .collect();
        format!("from {}", peers.join(", "))
    }
}

fn is_cidr(s: &str) -> bool {
    let Some((addr, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(bits) = bits.parse::<u8>() else {
        return false;
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => bits <= 32,
        Ok(std::net::IpAddr::V6(_)) => bits <= 128,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn params(v: serde_json::Value) -> Result<NetworkPolicyParams> {
        let p: NetworkPolicyParams = serde_json::from_value(v).unwrap();
        p.validate().map(|()| p)
    }

    #[test]
    fn peers_are_checked_with_their_field() {
        assert!(params(json!({"allowFrom": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]})).is_ok());
        let e = params(json!({"allowFrom": [{"ipBlock": {"cidr": "10.20.0.0/16"}}, {}]}))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("networkPolicy.allowFrom[1]: expected a NetworkPolicy peer"),
            "{e}"
        );
        let e = params(json!({"allowFrom": [{"ipBlock": {"cidr": "10.20.0.0"}}]}))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("networkPolicy.allowFrom[0].ipBlock.cidr: expected a CIDR"),
            "{e}"
        );
        let e =
            params(json!({"allowFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}))
                .unwrap_err()
                .to_string();
        assert!(e.contains("cannot be combined"), "{e}");
    }
}
