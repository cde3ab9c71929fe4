//! A template file inside a CodePipeline input artifact: the artifact is a zip in S3
//! (`inputArtifacts[n].location.s3Location`), read with the job's `artifactCredentials`
//! (temporary credentials CodePipeline hands the action, never the function's role; never
//! logged), then the file at `path` inside the zip.

use std::io::Read;

use aws_credential_types::Credentials;

use crate::aws::aws_error;
use crate::error::{Error, Result};
use crate::job::contract::JobArtifacts;
use crate::staging::params::template::{ArtifactFile, MAX_TEMPLATE_BYTES, TemplateText};

/// The largest artifact read into memory to find the template in it.
pub const MAX_ARTIFACT_BYTES: i64 = 256 * 1024 * 1024;

fn param(message: String) -> Error {
    Error::parameter("template.artifact", message)
}

/// The input artifact named `name`, or the only one.
fn choose<'a>(
    artifacts: &'a JobArtifacts,
    name: Option<&str>,
) -> Result<&'a crate::job::codepipeline::Artifact> {
    let names: Vec<&str> = artifacts.inputs.iter().map(|a| a.name.as_str()).collect();
    match name {
        Some(n) => artifacts.inputs.iter().find(|a| a.name == n).ok_or_else(|| {
            param(format!(
                "the action has no input artifact named {n:?} (it has {})",
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            ))
        }),
        None => match artifacts.inputs.as_slice() {
            [one] => Ok(one),
            [] => Err(param(
                "the action has no input artifact: add the artifact that holds the template to the action's input artifacts".into(),
            )),
            _ => Err(param(format!(
                "the action has {} input artifacts ({}): name the one with the template in template.artifact.name",
                names.len(),
                names.join(", ")
            ))),
        },
    }
}

/// Reads the template from the job's input artifact.
pub async fn fetch(
    sdk: &aws_config::SdkConfig,
    file: &ArtifactFile,
    artifacts: Option<&JobArtifacts>,
) -> Result<TemplateText> {
    let Some(artifacts) = artifacts else {
        return Err(param(
            "a file inside an input artifact can only be read in a CodePipeline job (it has the artifacts and the credentials to read them); use template.inline or template.file here".into(),
        ));
    };
    let artifact = choose(artifacts, file.name.as_deref())?;
    let Some(location) = artifact.location.s3_location.as_ref() else {
        return Err(param(format!(
            "input artifact {} is not in S3 (location type {:?})",
            artifact.name, artifact.location.kind
        )));
    };
    let Some(creds) = artifacts.credentials.as_ref() else {
        return Err(Error::Configuration(
            "the job has no artifactCredentials to read its input artifacts".into(),
        ));
    };
    let credentials = Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        Some(creds.session_token.clone()),
        None,
        "codepipeline-artifact-credentials",
    );
    // S3-compatible endpoints (AWS_ENDPOINT_URL: local tests) take path-style requests.
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .credentials_provider(credentials)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    let object = client
        .get_object()
        .bucket(&location.bucket_name)
        .key(&location.object_key)
        .send()
        .await
        .map_err(|e| aws_error("s3", "GetObject (input artifact)", e))?;
    if object.content_length().unwrap_or(0) > MAX_ARTIFACT_BYTES {
        return Err(param(format!(
            "input artifact {} is larger than {MAX_ARTIFACT_BYTES} bytes; put the template in a smaller artifact",
            artifact.name
        )));
    }
    let bytes = object
        .body
        .collect()
        .await
        .map_err(|e| {
            Error::Unavailable {
                backend: "s3",
                message: format!("reading input artifact {}: {e}", artifact.name),
                source: None,
            }
            .caused_by(e)
        })?
        .into_bytes();
    let source = format!("template.artifact {}:{}", artifact.name, file.path);
    let text = read_zip_file(&bytes, &file.path, &artifact.name)?;
    TemplateText::new(text, source)
}

/// The UTF-8 text of `path` inside the zip `bytes` (stored or deflated entries).
pub fn read_zip_file(bytes: &[u8], path: &str, artifact: &str) -> Result<String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| param(format!("input artifact {artifact} is not a zip file ({e})")))?;
    let wanted = path.trim_start_matches("./").trim_start_matches('/');
    if zip.index_for_name(wanted).is_none() {
        let mut near: Vec<String> = zip
            .file_names()
            .filter_map(|n| n.ok())
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .take(10)
            .map(|n| n.to_string())
            .collect();
        near.sort();
        return Err(param(format!(
            "input artifact {artifact} has no file {wanted:?}{}",
            if near.is_empty() {
                String::new()
            } else {
                format!(" (YAML files in it: {})", near.join(", "))
            }
        )));
    }
    let mut entry = zip.by_name(wanted).map_err(|e| {
        param(format!(
            "input artifact {artifact}: cannot read {wanted:?} ({e})"
        ))
    })?;
    if entry.size() > MAX_TEMPLATE_BYTES as u64 {
        return Err(param(format!(
            "{wanted:?} in input artifact {artifact} has {} bytes; a template may have at most {MAX_TEMPLATE_BYTES}",
            entry.size()
        )));
    }
    let mut text = String::new();
    entry
        .by_ref()
        .take(MAX_TEMPLATE_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| {
            param(format!(
                "{wanted:?} in input artifact {artifact} is not readable UTF-8 text ({e})"
            ))
        })?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::job::codepipeline::{Artifact, ArtifactLocation, S3Location};

    pub(crate) fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, text) in files {
            w.start_file(*name, opts).unwrap();
            w.write_all(text.as_bytes()).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn reads_a_deflated_file_and_names_what_is_missing() {
        let zip = zip_of(&[
            ("deploy/staging-db.yaml", "kind: Service\n"),
            ("README.md", "hello"),
            ("deploy/other.yml", "x"),
        ]);
        assert_eq!(
            read_zip_file(&zip, "deploy/staging-db.yaml", "SourceOutput").unwrap(),
            "kind: Service\n"
        );
        assert_eq!(
            read_zip_file(&zip, "./deploy/staging-db.yaml", "SourceOutput").unwrap(),
            "kind: Service\n"
        );
        let e = read_zip_file(&zip, "staging-db.yaml", "SourceOutput")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "template.artifact: input artifact SourceOutput has no file \"staging-db.yaml\" (YAML files in it: deploy/other.yml, deploy/staging-db.yaml)"
        );
        let e = read_zip_file(b"not a zip", "x.yaml", "SourceOutput")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("template.artifact: input artifact SourceOutput is not a zip file"),
            "{e}"
        );
    }

    fn artifact(name: &str) -> Artifact {
        Artifact {
            name: name.into(),
            revision: None,
            location: ArtifactLocation {
                kind: "S3".into(),
                s3_location: Some(S3Location {
                    bucket_name: "b".into(),
                    object_key: "k".into(),
                }),
            },
        }
    }

    #[test]
    fn the_artifact_is_the_named_or_the_only_one() {
        let arts = |names: &[&str]| JobArtifacts {
            inputs: names.iter().map(|n| artifact(n)).collect(),
            outputs: vec![],
            credentials: None,
            encryption_key: None,
        };
        assert_eq!(choose(&arts(&["Src"]), None).unwrap().name, "Src");
        assert_eq!(
            choose(&arts(&["Src", "Build"]), Some("Build"))
                .unwrap()
                .name,
            "Build"
        );
        let e = choose(&arts(&["Src", "Build"]), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has 2 input artifacts (Src, Build): name the one"),
            "{e}"
        );
        let e = choose(&arts(&["Src"]), Some("Tpl"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no input artifact named \"Tpl\" (it has Src)"),
            "{e}"
        );
        assert!(choose(&arts(&[]), None).is_err());
    }
}
