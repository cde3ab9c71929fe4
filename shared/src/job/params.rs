//! Parameters: environment defaults, then `UserParameters` (pipeline) or the request body (direct),
//! merged key by key in that order (a later source wins), then parsed into the function's typed
//! parameters with unknown keys rejected. Every error names the source and the field.
//!
//! | order | source | name in errors |
//! | --- | --- | --- |
//! | 1 | `SNAPSTAGE_DEFAULTS` environment variable (a JSON object, set by the template) | `SNAPSTAGE_DEFAULTS` |
//! | 2 | `UserParameters` of the CodePipeline action (a JSON object, ≤ 1000 chars) | `UserParameters` |
//! | 2 | the body of a direct request, less its reserved keys | `request` |

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub const DEFAULTS_ENV: &str = "SNAPSTAGE_DEFAULTS";

/// One source of parameters and the name errors use for it.
#[derive(Debug, Clone)]
pub struct Layer {
    pub source: &'static str,
    pub values: Map<String, Value>,
}

/// The defaults layer from the environment; absent means empty.
pub fn env_defaults(get: impl Fn(&str) -> Option<String>) -> Result<Layer> {
    let values = match get(DEFAULTS_ENV) {
        None => Map::new(),
        Some(s) if s.trim().is_empty() => Map::new(),
        Some(s) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                return Err(Error::Configuration(format!(
                    "{DEFAULTS_ENV}: expected a JSON object, got {}",
                    kind_of(&other)
                )));
            }
            Err(e) => {
                return Err(Error::Configuration(format!(
                    "{DEFAULTS_ENV}: not valid JSON: {e}"
                )));
            }
        },
    };
    Ok(Layer {
        source: DEFAULTS_ENV,
        values,
    })
}

/// The `UserParameters` layer. Absent or blank means empty; anything but a JSON object is an error
/// that shows what is expected.
pub fn user_parameters(raw: Option<&str>) -> Result<Layer> {
    let values = match raw.map(str::trim) {
        None | Some("") => Map::new(),
        Some(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                return Err(Error::parameter(
                    "UserParameters",
                    format!(
                        "expected a JSON object such as {{\"dryRun\": true}}, got {}",
                        kind_of(&other)
                    ),
                ));
            }
            Err(_) => {
                let head: String = s.chars().take(40).collect();
                return Err(Error::parameter(
                    "UserParameters",
                    format!(
                        "expected a JSON object such as {{\"dryRun\": true}}, got plain text {head:?}"
                    ),
                ));
            }
        },
    };
    Ok(Layer {
        source: "UserParameters",
        values,
    })
}

/// Keys that say the same thing in two ways: a later layer's one replaces an earlier layer's
/// other (a request's `ttlDays` over the stack defaults' `ttlHours`); both in one layer stay
/// both, for the function to refuse.
const ALTERNATIVES: [(&str, &str); 1] = [("ttlHours", "ttlDays")];

/// Merges the layers (later wins, key by key at the top level; see [`ALTERNATIVES`]) and parses
/// the result.
pub fn merge<P: DeserializeOwned>(layers: &[Layer]) -> Result<P> {
    let mut merged = Map::new();
    let mut origin: Vec<(String, &'static str)> = Vec::new();
    for layer in layers {
        for (a, b) in ALTERNATIVES {
            for (set, other) in [(a, b), (b, a)] {
                if layer.values.contains_key(set) && !layer.values.contains_key(other) {
                    merged.remove(other);
                    origin.retain(|(key, _)| key != other);
                }
            }
        }
        for (k, v) in &layer.values {
            merged.insert(k.clone(), v.clone());
            origin.retain(|(key, _)| key != k);
            origin.push((k.clone(), layer.source));
        }
    }
    let source_of = |key: &str| {
        origin
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, s)| *s)
            .unwrap_or("parameters")
    };
    serde_path_to_error::deserialize(Value::Object(merged)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let field = if path.is_empty() || path == "." || path == "?" {
            // Unknown or missing top-level fields have no path; serde names them in the message.
            match backticked(&message) {
                Some(f) if message.starts_with("unknown field") => format!("{}.{f}", source_of(f)),
                Some(f) => format!("parameters.{f}"),
                None => "parameters".to_string(),
            }
        } else {
            let top = path.split(['.', '[']).next().unwrap_or_default();
            format!("{}.{path}", source_of(top))
        };
        Error::parameter(field, message)
    })
}

fn backticked(s: &str) -> Option<&str> {
    let start = s.find('`')? + 1;
    let len = s[start..].find('`')?;
    Some(&s[start..start + len])
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct P {
        volume_ids: Vec<String>,
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        region: Option<String>,
    }

    fn layer(source: &'static str, v: Value) -> Layer {
        let Value::Object(values) = v else { panic!() };
        Layer { source, values }
    }

    #[test]
    fn later_layers_win_key_by_key() {
        let p: P = merge(&[
            layer(
                DEFAULTS_ENV,
                json!({"region": "eu-west-1", "volumeIds": ["vol-default"]}),
            ),
            layer("UserParameters", json!({"volumeIds": ["vol-1"]})),
        ])
        .unwrap();
        assert_eq!(
            p,
            P {
                volume_ids: vec!["vol-1".into()],
                dry_run: false,
                region: Some("eu-west-1".into())
            }
        );
    }

    #[test]
    fn errors_name_source_and_field() {
        let e = merge::<P>(&[layer("UserParameters", json!({"volumeIds": [42]}))]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("UserParameters.volumeIds[0]: invalid type: integer `42`"),
            "{e}"
        );
        let e =
            merge::<P>(&[layer("request", json!({"volumeIds": [], "volumeId": "x"}))]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("request.volumeId: unknown field `volumeId`"),
            "{e}"
        );
        let e = merge::<P>(&[layer("request", json!({}))]).unwrap_err();
        assert!(e.to_string().contains("volumeIds"), "{e}");
    }

    #[test]
    fn plain_text_user_parameters_are_a_clear_configuration_error() {
        let e = user_parameters(Some("input_parameter")).unwrap_err();
        assert!(e.to_string().contains("expected a JSON object"), "{e}");
        assert_eq!(
            e.failure_kind(),
            crate::error::FailureKind::ConfigurationError
        );
        assert!(user_parameters(Some("  ")).unwrap().values.is_empty());
        assert!(user_parameters(Some("[1]")).is_err());
    }

    #[test]
    fn defaults_must_be_an_object() {
        let get = |v: &'static str| move |k: &str| (k == DEFAULTS_ENV).then(|| v.to_string());
        assert!(
            env_defaults(get("{\"dryRun\": true}"))
                .unwrap()
                .values
                .contains_key("dryRun")
        );
        assert!(env_defaults(get("[]")).is_err());
        assert!(env_defaults(get("{")).is_err());
        assert!(env_defaults(|_| None).unwrap().values.is_empty());
    }
}
