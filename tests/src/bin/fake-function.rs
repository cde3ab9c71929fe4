//! A tiny function for testing the local pipeline: it answers through the real job contract
//! (`snapstage::job::entry::main`), continues `rounds` times (default 1) before it succeeds, and
//! fails with a ConfigurationError when `fail` is set.
//!
//! UserParameters: `{"message": "hi", "rounds": 1, "fail": "reason", "workMs": 5}` (all optional).
//! Outputs: `Echo` (the message), `Rounds`, `ExecutionKey`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde::Deserialize;
use serde_json::{Value, json};
use snapstage::job::entry::About;
use snapstage::{Error, Function, Outcome, Result, Step};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Params {
    #[serde(default)]
    message: String,
    #[serde(default = "one")]
    rounds: u32,
    #[serde(default)]
    fail: Option<String>,
    /// Milliseconds of simulated work per step (an await, like a real backend call).
    #[serde(default)]
    work_ms: u64,
}

fn one() -> u32 {
    1
}

struct Fake;

impl Function for Fake {
    const NAME: &'static str = "fake-function";
    type Params = Params;

    async fn step(&self, step: Step<Params>) -> Result<Outcome> {
        let p = step.params;
        tokio::time::sleep(std::time::Duration::from_millis(p.work_ms)).await;
        if let Some(reason) = p.fail {
            return Err(Error::parameter("fail", reason));
        }
        let done = step
            .state
            .as_ref()
            .and_then(|s| s.get("round"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if done < u64::from(p.rounds) {
            let next = done + 1;
            return Ok(Outcome::Continue {
                summary: format!("round {next} of {}", p.rounds),
                percent: u8::try_from(next * 100 / (u64::from(p.rounds) + 1)).unwrap_or(99),
                state: json!({ "round": next }),
            });
        }
        let outputs = BTreeMap::from([
            ("Echo".to_string(), p.message.clone()),
            ("Rounds".to_string(), done.to_string()),
            ("ExecutionKey".to_string(), step.execution.key.clone()),
        ]);
        Ok(Outcome::Done {
            summary: format!("echoed {:?} after {done} continuation(s)", p.message),
            outputs,
        })
    }
}

fn main() -> ExitCode {
    snapstage::job::entry::main(
        &About {
            summary: "A test function: continues `rounds` times, then echoes `message`.",
            parameters: "  message   text to echo (default empty)\n  rounds    continuations before success (default 1)\n  fail      fail with this reason (ConfigurationError)\n  workMs    simulated work per step in milliseconds (default 0)\n",
            outputs: "  Echo, Rounds, ExecutionKey\n",
        },
        |_| Fake,
    )
}
