//! A user template inside a CodePipeline input artifact, read from S3 (moto) with the job's
//! artifact credentials, as the step does in a job: plan mode, so no cluster is needed.
//! Needs `SNAPSTAGE_MOTO_CLOUD` (set by `make test`); prints SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::io::Write as _;
use std::time::Duration;

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use serde_json::{Value, json};
use snapstage::job::codepipeline::{Artifact, ArtifactCredentials, ArtifactLocation, S3Location};
use snapstage::job::contract::{Deadline, Execution, JobArtifacts, Outcome, Step};
use snapstage::job::params::{Layer, merge};
use snapstage::staging::{self, Params};
use snapstage::storage::open::ImportMarks;
use snapstage_localenv::testkit::{self, unique};

const TEMPLATE: &str = include_str!("../../../infra/k8s/templates/postgresql.yaml");

fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, text) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(text.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

fn job_step(request: Value, bucket: &str, key: &str) -> Step<Params> {
    let Value::Object(values) = request else {
        panic!("not an object")
    };
    Step {
        params: merge(&[Layer {
            source: "UserParameters",
            values,
        }])
        .unwrap(),
        execution: Execution {
            key: "pipeline/exec-1/DeployStaging".into(),
            origin: "codepipeline".into(),
            pipeline: Some("pipeline".into()),
            commit: None,
        },
        state: None,
        deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(60)),
        artifacts: Some(JobArtifacts {
            inputs: vec![Artifact {
                name: "SourceOutput".into(),
                revision: None,
                location: ArtifactLocation {
                    kind: "S3".into(),
                    s3_location: Some(S3Location {
                        bucket_name: bucket.into(),
                        object_key: key.into(),
                    }),
                },
            }],
            outputs: vec![],
            credentials: Some(ArtifactCredentials {
                access_key_id: "ASIAARTIFACTREADER01".into(),
                secret_access_key: "artifact-secret".into(),
                session_token: "artifact-session-token".into(),
                expiration_time: None,
            }),
            encryption_key: None,
        }),
    }
}

#[tokio::test]
async fn a_template_in_an_input_artifact_is_read_with_the_job_credentials() {
    let Some(moto) = testkit::moto("deploy-staging-db artifact template") else {
        return;
    };
    let sdk = testkit::sdk_config(&moto.cloud).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let bucket = unique("artifacts");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let key = "pipeline/SourceOutp/Ab12Cd3";
    s3.put_object()
        .bucket(&bucket)
        .key(key)
        .body(zip_of(&[("README.md", "app"), ("deploy/db.yaml", TEMPLATE)]).into())
        .send()
        .await
        .unwrap();

    // The volume restore-to-staging made in this pipeline execution (another action of it).
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let volume = ec2
        .create_volume()
        .availability_zone("us-east-1a")
        .size(1)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .tags(tag("snapstage:managed-by", "snapstage"))
                .tags(tag("snapstage:role", "staging"))
                .tags(tag(
                    "snapstage:execution",
                    "pipeline/exec-1/RestoreToStaging",
                ))
                .build(),
        )
        .send()
        .await
        .unwrap()
        .volume_id()
        .unwrap()
        .to_string();
    let volumes = ImportMarks::new(&sdk);

    let request = json!({"volumeId": volume,
                         "template": {"artifact": {"path": "deploy/db.yaml"}}});
    let outcome = staging::step(&sdk, &volumes, job_step(request, &bucket, key))
        .await
        .unwrap();
    let Outcome::Done { summary, outputs } = outcome else {
        panic!("plan mode is one step")
    };
    assert_eq!(outputs["Mode"], "plan");
    assert_eq!(outputs["Service"], "postgres");
    assert!(
        summary.contains("workload from template.artifact SourceOutput:deploy/db.yaml"),
        "{summary}"
    );
    assert!(!summary.contains("artifact-secret"), "{summary}");

    let request = json!({"volumeId": volume,
                         "template": {"artifact": {"path": "db.yaml"}}});
    let e = staging::step(&sdk, &volumes, job_step(request, &bucket, key))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "template.artifact: input artifact SourceOutput has no file \"db.yaml\" (YAML files in it: deploy/db.yaml)"
    );
}
