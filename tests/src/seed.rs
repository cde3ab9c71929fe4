//! The demo: a "production" database volume and a Nexus blob store in the cloud (moto), an empty
//! on-prem bucket (a second moto), and the four-action pipeline over them.
//!
//! Seeding is idempotent: the volume is found by its tags, object keys are deterministic.

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification, VolumeType};
use aws_sdk_s3::primitives::ByteStream;

use crate::Error;
use crate::pipeline::{Action, Pipeline};

pub const PRODUCTION_VOLUME_NAME: &str = "shop-db-prod";
pub const AVAILABILITY_ZONE: &str = "us-east-1a";
pub const ARTIFACT_BUCKET: &str = "shop-artifacts";
pub const ARTIFACT_PREFIX: &str = "nexus/blobs/";
pub const ONPREM_BUCKET: &str = "onprem-nexus";
/// Blobs in the demo blob store (each a `.bytes` and a `.properties` object).
pub const BLOBS: usize = 10;

/// What the demo data is.
#[derive(Debug, Clone)]
pub struct Demo {
    pub production_volume_id: String,
    /// Every object key under [`ARTIFACT_PREFIX`] in [`ARTIFACT_BUCKET`].
    pub artifact_keys: Vec<String>,
    /// The on-prem S3 endpoint.
    pub onprem_endpoint: String,
}

/// The demo pipeline: Snapshot → Restore → Deploy → Replicate.
/// `kubeconfig`: the cluster deploy-staging-db deploys to (its own user's kubeconfig file); with
/// none, the Deploy action asks for plan mode explicitly (`dryRun`).
pub fn demo_pipeline(
    production_volume_id: &str,
    onprem_endpoint: &str,
    kubeconfig: Option<&str>,
) -> Pipeline {
    let replicate = serde_json::json!({
        "sourceBucket": ARTIFACT_BUCKET,
        "sourcePrefix": ARTIFACT_PREFIX,
        "destinationBucket": ONPREM_BUCKET,
        "destinationEndpoint": onprem_endpoint,
    });
    let mut deploy = serde_json::json!({
        "volumeId": "#{Restore.VolumeId}", "engine": "postgresql",
        "availabilityZone": AVAILABILITY_ZONE,
    });
    match kubeconfig {
        Some(path) => deploy["cluster"] = serde_json::json!({ "kubeconfigFile": path }),
        None => deploy["dryRun"] = serde_json::json!(true),
    }
    Pipeline {
        name: "snapstage-demo".to_string(),
        actions: vec![
            Action::new(
                "Snapshot",
                "Snapshot",
                "snapshot-production",
                &serde_json::json!({ "volumeIds": [production_volume_id] }).to_string(),
            ),
            Action::new(
                "Restore",
                "Restore",
                "restore-to-staging",
                &format!(
                    r##"{{"snapshotId": "#{{Snapshot.SnapshotId}}", "availabilityZone": "{AVAILABILITY_ZONE}"}}"##
                ),
            ),
            Action::new(
                "Deploy",
                "StagingDb",
                "deploy-staging-db",
                &deploy.to_string(),
            ),
            Action::new(
                "Replicate",
                "Replicate",
                "replicate-artifacts-back",
                &replicate.to_string(),
            ),
        ],
    }
}

/// The demo's production web tier (an Auto Scaling group in moto, [`crate::asg`]).
pub const WEB_TIER: &str = "shop-web";
/// Instances in the demo's web tier.
pub const WEB_INSTANCES: i32 = 3;

/// The Release action (after the staging tests): roll-out-release puts `image` (in a real
/// pipeline `#{Build.ImageId}`, from the Packer build) on `group`.
pub fn release_action(group: &str, image: &str) -> Action {
    Action::new(
        "Release",
        "Release",
        "roll-out-release",
        &serde_json::json!({
            "autoScalingGroupName": group,
            "imageId": image,
            "minHealthyPercentage": 50,
            "instanceWarmup": 60,
        })
        .to_string(),
    )
}

/// Clients for the two clouds.
#[derive(Debug, Clone)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub s3: aws_sdk_s3::Client,
    pub onprem_s3: aws_sdk_s3::Client,
    pub onprem_endpoint: String,
}

impl Clients {
    /// Clients for moto: the cloud at `cloud_endpoint`, the on-prem S3 at `onprem_endpoint`
    /// (region us-east-1, moto's test credentials).
    pub async fn new(cloud_endpoint: &str, onprem_endpoint: &str) -> Self {
        let config = moto_config(cloud_endpoint).await;
        let s3 = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build();
        let onprem = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .endpoint_url(onprem_endpoint)
            .build();
        Self {
            ec2: aws_sdk_ec2::Client::new(&config),
            s3: aws_sdk_s3::Client::from_conf(s3),
            onprem_s3: aws_sdk_s3::Client::from_conf(onprem),
            onprem_endpoint: onprem_endpoint.to_string(),
        }
    }
}

/// An `SdkConfig` for a moto server: nothing read from the environment.
pub async fn moto_config(endpoint: &str) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            MOTO_KEY, MOTO_KEY, None, None, "moto",
        ))
        .endpoint_url(endpoint)
        .load()
        .await
}

/// moto's conventional credentials and the demo's region.
pub const MOTO_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";

fn aws<E: std::error::Error>(what: &str, e: E) -> Error {
    Error::Seed(format!(
        "{what}: {}",
        aws_sdk_ec2::error::DisplayErrorContext(e)
    ))
}

/// Creates what is missing of the demo data.
pub async fn seed(c: &Clients) -> Result<Demo, Error> {
    let production_volume_id = match find_production_volume(c).await? {
        Some(v) => v,
        None => {
            let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
            let out = c
                .ec2
                .create_volume()
                .availability_zone(AVAILABILITY_ZONE)
                .size(20)
                .volume_type(VolumeType::Gp3)
                .tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::Volume)
                        .tags(tag("Name", PRODUCTION_VOLUME_NAME))
                        .tags(tag("env", "production"))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| aws("CreateVolume", e))?;
            out.volume_id()
                .ok_or_else(|| Error::Seed("CreateVolume returned no volume id".into()))?
                .to_string()
        }
    };
    ensure_bucket(&c.s3, ARTIFACT_BUCKET).await?;
    let mut artifact_keys = Vec::new();
    for (key, body) in blob_store() {
        c.s3.put_object()
            .bucket(ARTIFACT_BUCKET)
            .key(&key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| aws(&format!("PutObject s3://{ARTIFACT_BUCKET}/{key}"), e))?;
        artifact_keys.push(key);
    }
    ensure_bucket(&c.onprem_s3, ONPREM_BUCKET).await?;
    Ok(Demo {
        production_volume_id,
        artifact_keys,
        onprem_endpoint: c.onprem_endpoint.clone(),
    })
}

/// The demo data if it was seeded before.
pub async fn existing(c: &Clients) -> Result<Option<Demo>, Error> {
    let Some(production_volume_id) = find_production_volume(c).await? else {
        return Ok(None);
    };
    let keys = list_keys(&c.s3, ARTIFACT_BUCKET, ARTIFACT_PREFIX)
        .await
        .unwrap_or_default();
    if keys.is_empty() {
        return Ok(None);
    }
    Ok(Some(Demo {
        production_volume_id,
        artifact_keys: keys,
        onprem_endpoint: c.onprem_endpoint.clone(),
    }))
}

/// The production volume: `Name=shop-db-prod`, `env=production`, not deleted.
pub async fn find_production_volume(c: &Clients) -> Result<Option<String>, Error> {
    let filter = |n: &str, v: &str| Filter::builder().name(n).values(v).build();
    let out = c
        .ec2
        .describe_volumes()
        .filters(filter("tag:Name", PRODUCTION_VOLUME_NAME))
        .filters(filter("tag:env", "production"))
        .send()
        .await
        .map_err(|e| aws("DescribeVolumes", e))?;
    Ok(out
        .volumes()
        .iter()
        .filter(|v| {
            v.state()
                .is_some_and(|s| matches!(s.as_str(), "available" | "in-use" | "creating"))
        })
        .find_map(|v| v.volume_id().map(str::to_string)))
}

async fn ensure_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<(), Error> {
    match s3.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
            }) =>
        {
            Ok(())
        }
        Err(e) => Err(aws(&format!("CreateBucket {bucket}"), e)),
    }
}

/// Every key under `prefix` (all pages).
pub async fn list_keys(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<String>, Error> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| aws(&format!("ListObjectsV2 s3://{bucket}/{prefix}"), e))?;
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
        match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    keys.sort();
    Ok(keys)
}

/// A small Nexus file blob store: `content/vol-01/chap-01/<uuid>.bytes` + `.properties` per
/// blob, and the store's `metadata.properties`. Deterministic, so reseeding rewrites it.
pub fn blob_store() -> Vec<(String, Vec<u8>)> {
    let base = format!("{ARTIFACT_PREFIX}default");
    let mut objects = vec![(
        format!("{base}/metadata.properties"),
        b"#Blob store metadata\ntype=file/1\n".to_vec(),
    )];
    for i in 0..BLOBS {
        let id = blob_uuid(i as u64);
        let size = 512 + i * 1531;
        let mut state = 0x5eed_u64 + i as u64;
        let bytes: Vec<u8> = (0..size)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 56) as u8
            })
            .collect();
        let props = format!(
            "#{i}\nsize={size}\n@Bucket.repo-name=maven-releases\n@BlobStore.created-by=ci\n\
             @BlobStore.content-type=application/java-archive\n\
             @BlobStore.blob-name=com/shop/app/1.0.{i}/app-1.0.{i}.jar\ncreationTime=1700000000000\n"
        );
        let dir = format!("{base}/content/vol-01/chap-01");
        objects.push((format!("{dir}/{id}.bytes"), bytes));
        objects.push((format!("{dir}/{id}.properties"), props.into_bytes()));
    }
    objects
}

fn blob_uuid(i: u64) -> String {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let a = mix(i);
    let b = mix(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::resolve;
    use std::collections::BTreeMap;

    #[test]
    fn the_blob_store_looks_like_nexus() {
        let objects = blob_store();
        assert_eq!(objects.len(), 2 * BLOBS + 1);
        let bytes = objects
            .iter()
            .filter(|(k, _)| k.ends_with(".bytes"))
            .count();
        assert_eq!(bytes, BLOBS);
        for (k, _) in &objects {
            assert!(k.starts_with("nexus/blobs/default/"), "{k}");
        }
        assert!(objects[1].0.contains("/content/vol-01/chap-01/"));
        // Deterministic: a reseed rewrites the same keys.
        assert_eq!(blob_store()[3].0, objects[3].0);
    }

    #[test]
    fn demo_parameters_are_json_once_resolved() {
        let p = demo_pipeline("vol-0abc", "http://127.0.0.1:5101", Some("/k"));
        let names: Vec<&str> = p.actions.iter().map(|a| a.namespace.as_str()).collect();
        assert_eq!(names, ["Snapshot", "Restore", "StagingDb", "Replicate"]);
        let mut vars = BTreeMap::new();
        vars.insert(
            "Snapshot".to_string(),
            BTreeMap::from([("SnapshotId".to_string(), "snap-1".to_string())]),
        );
        vars.insert(
            "Restore".to_string(),
            BTreeMap::from([("VolumeId".to_string(), "vol-2".to_string())]),
        );
        for a in &p.actions {
            let up = resolve(&a.user_parameters, &vars, "exec").unwrap();
            let v: serde_json::Value = serde_json::from_str(&up).unwrap();
            assert!(v.is_object(), "{up}");
        }
        assert!(p.actions[0].user_parameters.contains("vol-0abc"));
        assert!(
            p.actions[1]
                .user_parameters
                .contains("#{Snapshot.SnapshotId}")
        );
        assert!(p.actions[2].user_parameters.contains("#{Restore.VolumeId}"));
    }
}
