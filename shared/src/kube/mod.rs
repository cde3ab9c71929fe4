//! The Kubernetes layer, below the storage backends and the staging environment: how to reach a
//! cluster, how to call its API, and the names, labels and ownership rules every object
//! snapstage makes follows. Nothing here knows about snapshots or databases.
//!
//! | module | what |
//! | --- | --- |
//! | [`client`] | a `kube::Client` for EKS (bearer token), a kubeconfig from Secrets Manager, or in-cluster |
//! | [`eks_token`] | the EKS bearer token (presigned STS GetCallerIdentity) |
//! | [`api`] | get / list / apply / delete with bounded retries, errors said in words |
//! | [`names`] | DNS-1123 names, label values, quantities, the execution hashes |
//! | [`labels`] | the labels and annotations snapstage writes |
//! | [`ownership`] | snapstage only changes what it made, never production |
//! | `fixture` | tests (feature `kube-fixture`): an API server double at the HTTP level (exact request scenarios) |

pub mod api;
pub mod client;
pub mod eks_token;
/// Test support: a Kubernetes API server double at the HTTP level (exact request scenarios).
#[cfg(any(test, feature = "kube-fixture"))]
pub mod fixture;
pub mod labels;
pub mod names;
pub mod object;
pub mod ownership;
