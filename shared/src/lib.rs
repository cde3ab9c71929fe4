//! snapstage core: everything the four functions share.
//!
//! | where | what |
//! | --- | --- |
//! | [`contract`] | the job contract: one CodePipeline result per job, whatever happens |
//! | [`codepipeline`] | the job event, results, and the reporter (PutJob*Result, GetJobDetails) |
//! | [`invocation`] | what a raw payload is: job event, CodeCommit event, or direct request |
//! | [`codecommit`] | EventBridge CodeCommit events and the trigger filter |
//! | [`params`] | parameter sources and merging |
//! | [`continuation`] | the versioned continuation token |
//! | [`entry`] | `main` for every function: Lambda Runtime API or CLI |
//! | [`metrics`] | CloudWatch metrics in the embedded metric format, one document per invocation |
//! | [`aws`] | the one `SdkConfig` builder |
//! | [`digest`] | SHA-256 (ring's assembly) for content and names |
//! | [`error`] | the error type and its CodePipeline failure types |
//! | [`eks`] | the EKS bearer token (presigned STS GetCallerIdentity) |
//! | [`cluster`] | cluster access: a `kube::Client` for EKS, a kubeconfig, or in-cluster |
//! | [`interlock`] | the production interlock: which volume a step may import (production markers, this run's staging mark, the override) |
//! | [`storage`] | the snapshot/volume backend trait, its backends (EBS, FlashArray/CBS) and the two storage steps |
//! | [`staging`] | the staging database on Kubernetes: manifests, apply, readiness, Jobs, teardown |
//! | [`replicate`] | copying artifacts between S3 endpoints, verified |

pub mod aws;
pub mod cluster;
pub mod codecommit;
pub mod codepipeline;
pub mod continuation;
pub mod contract;
pub mod digest;
pub mod eks;
pub mod entry;
pub mod error;
pub mod interlock;
pub mod invocation;
/// Test support: a Kubernetes API server double at the HTTP level (exact request scenarios).
#[cfg(any(test, feature = "kube-fixture"))]
pub mod kube_fixture;
pub mod metrics;
pub mod params;
pub mod replicate;
pub mod staging;
pub mod storage;

pub use contract::{Deadline, Execution, Function, Outcome, Step};
pub use error::{Error, FailureKind, Result};
