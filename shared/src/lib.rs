//! snapstage core: everything the five functions share, in layers. A module uses only the
//! layers above it in this table (no import cycles between modules):
//!
//! | layer | what |
//! | --- | --- |
//! | [`error`], [`digest`] | the error type and its CodePipeline failure types; SHA-256 (ring) |
//! | [`aws`] | the one `SdkConfig` builder, secrets, AWS error classification |
//! | [`job`] | one invocation: the job contract, CodePipeline and CodeCommit events, parameters, continuation tokens, `main`, metrics |
//! | [`interlock`] | the production interlock: snapstage's marks, production markers, which volume a step may import |
//! | [`kube`] | Kubernetes: cluster access (EKS, kubeconfig, in-cluster), API calls, names, labels, ownership |
//! | [`storage`] | the snapshot/volume backend trait, its capability traits, the backends (EBS, FlashArray/CBS, CSI) and the two storage steps |
//! | [`staging`] | the staging environment on Kubernetes: parameters → spec → render → validate → apply → deploy, teardown |
//! | [`replicate`] | copying artifacts between S3 endpoints (and arrays), verified and resumable |

pub mod aws;
pub mod digest;
pub mod error;
pub mod interlock;
pub mod job;
pub mod kube;
pub mod replicate;
pub mod staging;
pub mod storage;

pub use error::{Error, FailureKind, Result};
pub use job::contract::{Deadline, Execution, Function, Outcome, Step};
