//! snapstage's local environment: a CodePipeline job service double, a pipeline driver that runs
//! the real function binaries the way CodePipeline does, and the demo data.
//!
//! | where | what |
//! | --- | --- |
//! | [`jobservice`] | the awsJson1.1 job service double (PutJobSuccessResult, PutJobFailureResult, GetJobDetails) |
//! | [`asg`] | a production web tier in moto for roll-out-release: launch template, Auto Scaling group, target group, a release AMI |
//! | [`event`] | the job event a function receives |
//! | [`faults`] | a fault-injecting HTTP proxy between a function and a service (errors, resets, lost answers, hangs, crashes) |
//! | [`refresh`] | an EC2 Auto Scaling instance-refresh double in front of moto (moto has no instance refresh API) |
//! | [`pipeline`] | the pipeline definition and the driver (continuations, `#{Namespace.Variable}`) |
//! | [`invoker`] | running a function: CLI process, or the `cargo lambda watch` Runtime API emulator |
//! | [`timeline`] | one entry per invocation, and the table printer |
//! | [`seed`] | the demo data in moto and the demo pipeline |
//! | [`hybrid`] | the hybrid Jenkins/Nexus flow (`make demo-hybrid`): two arrays, the control plane, the pipeline and the on-prem rehydrate stage |
//! | [`flasharray_double`] | the FlashArray double (REST 2.56, spec-validated) from Rust tests |
//! | [`kube_double`] | the Kubernetes API server double (core/v1 storage objects, VolumeSnapshots, a simulated snapshot controller) from Rust tests |
//! | [`localkube`] | the local Kubernetes control plane of real components (`scripts/localkube.sh`), through the real `kubectl` |
//! | [`testkit`] | helpers for the functions' integration tests: moto or SKIP, local SDK config, running a binary |

use std::path::{Path, PathBuf};

pub mod asg;
pub mod event;
pub mod faults;
pub mod flasharray_double;
pub mod hybrid;
pub mod invoker;
pub mod jobservice;
pub mod kube_double;
pub mod localkube;
pub mod pipeline;
pub mod refresh;
pub mod seed;
pub mod testkit;
pub mod timeline;

/// What can stop the local environment itself (as opposed to a pipeline failing).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Something to install, build or start first; the message says what.
    #[error("{0}")]
    Setup(String),
    /// A function could not be run at all.
    #[error("{0}")]
    Invoke(String),
    /// Creating or reading the demo data failed.
    #[error("{0}")]
    Seed(String),
}

/// The workspace root (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}
