//! The job layer: what an invocation is and how it ends. One CodePipeline result per job,
//! whatever happens; the same `main` as a Lambda function or a CLI.
//!
//! | module | what |
//! | --- | --- |
//! | [`contract`] | the job contract: one CodePipeline result per job, whatever happens |
//! | [`entry`] | `main` for every function: Lambda Runtime API or CLI |
//! | [`invocation`] | what a raw payload is: job event, CodeCommit event, or direct request |
//! | [`codepipeline`] | the job event, results, and the reporter (PutJob*Result, GetJobDetails) |
//! | [`codecommit`] | EventBridge CodeCommit events and the trigger filter |
//! | [`params`] | parameter sources and merging |
//! | [`continuation`] | the versioned continuation token |
//! | [`metrics`] | CloudWatch metrics in the embedded metric format, one document per invocation |

pub mod codecommit;
pub mod codepipeline;
pub mod continuation;
pub mod contract;
pub mod entry;
pub mod invocation;
pub mod metrics;
pub mod params;
