//! The `template` parameter: the user's own workload YAML, inline, from a file, or from a file
//! inside a CodePipeline input artifact; read and size-checked, not yet rendered.

use serde::Deserialize;

use crate::error::{Error, Result};

/// The longest template accepted.
pub const MAX_TEMPLATE_BYTES: usize = 1024 * 1024;

/// Where the template parameter says the YAML is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum TemplateParam {
    /// The YAML itself.
    Inline(String),
    /// A file path.
    File(String),
    /// A file inside a CodePipeline input artifact.
    Artifact(ArtifactFile),
}

/// A file inside an input artifact (a zip).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactFile {
    /// The path of the file inside the zip, e.g. `deploy/staging-db.yaml`.
    pub path: String,
    /// The input artifact's name; may be left out when there is exactly one.
    #[serde(default)]
    pub name: Option<String>,
}

/// A template's text and where it came from (said in errors and summaries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateText {
    pub text: String,
    pub source: String,
}

impl TemplateParam {
    /// How errors name it: `template.inline`, `template.file /x.yaml`, ...
    pub fn describe(&self) -> String {
        match self {
            Self::Inline(_) => "template.inline".into(),
            Self::File(p) => format!("template.file {p}"),
            Self::Artifact(a) => match &a.name {
                Some(n) => format!("template.artifact {n}:{}", a.path),
                None => format!("template.artifact {}", a.path),
            },
        }
    }

    /// The text of an inline or file template; `None` for an artifact (fetched by the step).
    pub fn read_local(&self) -> Result<Option<TemplateText>> {
        let source = self.describe();
        let text = match self {
            Self::Inline(t) => t.clone(),
            Self::File(path) => {
                let meta = std::fs::metadata(path).map_err(|e| {
                    Error::parameter("template.file", format!("cannot read {path:?}: {e}"))
                })?;
                if meta.len() > MAX_TEMPLATE_BYTES as u64 {
                    return Err(too_big(&source, meta.len()));
                }
                std::fs::read_to_string(path).map_err(|e| {
                    Error::parameter("template.file", format!("cannot read {path:?}: {e}"))
                })?
            }
            Self::Artifact(_) => return Ok(None),
        };
        TemplateText::new(text, source).map(Some)
    }
}

fn too_big(source: &str, len: u64) -> Error {
    Error::parameter(
        "template",
        format!("{source}: {len} bytes; a template may have at most {MAX_TEMPLATE_BYTES}"),
    )
}

impl TemplateText {
    pub fn new(text: String, source: String) -> Result<Self> {
        if text.len() > MAX_TEMPLATE_BYTES {
            return Err(too_big(&source, text.len() as u64));
        }
        if text.trim().is_empty() {
            return Err(Error::parameter(
                "template",
                format!("{source}: the template is empty"),
            ));
        }
        Ok(Self { text, source })
    }
}
