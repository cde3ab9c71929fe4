//! The continuation token: the state a step needs to resume, carried by CodePipeline (or by the
//! caller of a direct request) between invocations.
//!
//! Format: `ss1.` + base64url-nopad(JSON `{"f": function, "e": execution key, "n": stalls, "s": state,
//! "t": when the run's first invocation started}`),
//! at most 2048 characters. The `ss1` prefix is the version: a token from another version or another
//! function is a clear ConfigurationError, never a silent restart.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::job::codepipeline::MAX_CONTINUATION_TOKEN;

const PREFIX: &str = "ss1.";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Continuation {
    /// The function that issued the token.
    #[serde(rename = "f")]
    pub function: String,
    /// The execution key the work is tagged with.
    #[serde(rename = "e")]
    pub execution: String,
    /// Consecutive invocations that hit the deadline without progress.
    #[serde(rename = "n", default)]
    pub stalls: u32,
    /// The step's own resume state.
    #[serde(rename = "s")]
    pub state: serde_json::Value,
    /// When the run's first invocation started, in milliseconds since the epoch (the `RunDuration`
    /// metric). Absent in tokens issued before it was added: those runs report no duration.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
}

impl Continuation {
    pub fn encode(&self) -> Result<String> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::Internal(format!("continuation state: {e}")))?;
        let token = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        if token.len() > MAX_CONTINUATION_TOKEN {
            return Err(Error::Internal(format!(
                "continuation state needs {} chars, CodePipeline allows {MAX_CONTINUATION_TOKEN}; checkpoint it instead",
                token.len()
            )));
        }
        Ok(token)
    }

    /// Decodes a token and checks it belongs to `function`.
    pub fn decode(token: &str, function: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Configuration(format!(
                "continuationToken: {why}; it must be a token issued by snapstage {function} (start a new run without it)"
            ))
        };
        let body = token
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad("unknown format or version"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad("not base64url"))?;
        let c: Continuation =
            serde_json::from_slice(&bytes).map_err(|_| bad("not a snapstage state"))?;
        if c.function != function {
            return Err(bad(&format!("issued by {:?}", c.function)));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_and_checks_the_function() {
        let c = Continuation {
            function: "snapshot-production".into(),
            execution: "exec-1".into(),
            stalls: 1,
            state: json!({"snapshots": ["snap-1"]}),
            started_ms: Some(1_765_100_000_000),
        };
        let t = c.encode().unwrap();
        assert!(t.starts_with("ss1."));
        assert_eq!(Continuation::decode(&t, "snapshot-production").unwrap(), c);
        let e = Continuation::decode(&t, "restore-to-staging").unwrap_err();
        assert!(
            e.to_string().contains("issued by \"snapshot-production\""),
            "{e}"
        );
    }

    #[test]
    fn tokens_without_a_start_time_still_decode() {
        // A token issued before `t` existed: {"f":"f","e":"e","n":0,"s":{}}
        let old = format!(
            "{PREFIX}{}",
            URL_SAFE_NO_PAD.encode(br#"{"f":"f","e":"e","n":0,"s":{}}"#)
        );
        let c = Continuation::decode(&old, "f").unwrap();
        assert_eq!((c.execution.as_str(), c.started_ms), ("e", None));
    }

    #[test]
    fn foreign_tokens_are_configuration_errors() {
        for t in ["token_ID", "ss1.!!!", "ss1.e30", ""] {
            let e = Continuation::decode(t, "f").unwrap_err();
            assert_eq!(
                e.failure_kind(),
                crate::error::FailureKind::ConfigurationError,
                "{t}"
            );
        }
    }

    #[test]
    fn oversized_state_is_refused_not_truncated() {
        let c = Continuation {
            function: "f".into(),
            execution: "e".into(),
            stalls: 0,
            state: json!("x".repeat(2000)),
            started_ms: None,
        };
        assert!(c.encode().is_err());
    }
}
