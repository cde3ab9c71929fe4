//! Shard mode: one batch of a Step Functions Distributed Map (`infra/statemachine/
//! replicate-map.asl.json`) copies exactly its own keys — no listing of the whole prefix — with
//! the verification, incremental skip and Nexus-safe order of a normal run.
//!
//! The batch arrives as `{"Items": [...], "BatchInput": {...}}` ([`crate::job::invocation`]):
//! `BatchInput` holds the usual parameters (and `executionId`, the map's execution name), `Items`
//! becomes the parameter `items`, each item one object:
//! - an `s3:listObjectsV2` item: `{"Key", "Size", "Etag", "LastModified", "StorageClass"}`;
//! - an S3 Inventory item (`InputType: MANIFEST`): `{"Bucket", "Key", "Size"?, "ETag"?, ...}`,
//!   its key URL-encoded as S3 Inventory writes keys (decoded here), `Size` a string; its
//!   `Bucket` must be the `sourceBucket`.
//!
//! What is known is not asked again: an item with its size is compared against the destination
//! as a listed object is (objects without a size are HEADed); the destination is listed over the
//! batch's key range only ([`Sink::list_keys`]).
//!
//! Order across shards: within a batch every `.bytes` is verified before any `.properties`
//! starts. A blob's `.bytes` and `.properties` share the prefix `content/vol-XX/chap-YY/<uuid>.`
//! and are adjacent in listing order (`.bytes` first), so an `ItemBatcher` that keeps listing
//! order splits them only when a batch boundary falls between the two; then the second batch
//! starts with a `.properties` whose `.bytes` it does not hold — and could write it before the
//! first batch wrote the `.bytes`. A batch therefore also copies (or finds unchanged) the
//! `.bytes` of every `.properties` it holds without one: a *companion*, in the first wave. The
//! neighbour batch may copy the same `.bytes` at the same time: the same content, verified
//! either way. What remains: `metadata.properties` (the blob store's own) lands when its batch
//! reaches it, not after every other batch; Nexus rewrites it, and the next run copies it again.
//!
//! A batch's run is keyed by the map's execution and its first key: Step Functions' Retry of a
//! batch resumes from its checkpoint. Its manifest is `shard-<id>.jsonl` under the `manifest`
//! prefix (default `s3://<sourceBucket>/.snapstage/manifests/<executionId>/`). An item gone at
//! the source fails the batch (after everything else is copied), naming the keys: the map's
//! results then say exactly which batches are not complete. Mirror mode and pull mode are
//! refused: deletions need the complete listing, and a directory is the CLI's pull mode.

use std::collections::HashSet;

use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use serde_json::Value;

use super::compare::{Listed, destination_key};
use super::copy::Ctx;
use super::journal::{self, Entry};
use super::params::{Destination, S3Url, Target, s3_url};
use super::plan::{self, Plan};
use super::sink::Sink;
use super::source::Source;
use crate::aws::aws_error;
use crate::error::{Error, Result};

/// One object of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    /// From the item, when it says.
    pub size: Option<u64>,
    /// From the item (normalized), when it says.
    pub etag: Option<String>,
    /// Not one of the batch's items: the `.bytes` of a `.properties` item, copied first.
    pub companion: bool,
}

/// A batch to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The batch's items in their order, then the companions.
    pub objects: Vec<Item>,
    /// The key its checkpoint is kept under: the execution and the first key.
    pub run_key: String,
    /// `shard-<id>.jsonl` under the manifest prefix.
    pub manifest: S3Url,
}

const FIELD: &str = "items";

impl Shard {
    /// Checks a batch against the validated parameters. `manifest` is the `manifest` parameter,
    /// a prefix in shard mode.
    pub fn new(
        items: &[Value],
        target: &Target,
        manifest: Option<&str>,
        execution: &str,
    ) -> Result<Self> {
        if target.mirror {
            return Err(Error::parameter(
                "mirror",
                "not in shard mode (items): deletions need the complete source listing; run \
                 mirror mode over the whole prefix, without items",
            ));
        }
        if let Destination::Directory(_) = target.destination {
            return Err(Error::parameter(
                "destinationDirectory",
                "not in shard mode (items): a Distributed Map batch copies to an S3 destination; \
                 the CLI's pull mode copies the whole prefix, without items",
            ));
        }
        let mut objects = parse_items(items, &target.source_bucket, &target.source_prefix)?;
        let first = objects
            .first()
            .map(|i| i.key.clone())
            .ok_or_else(|| Error::parameter(FIELD, "empty: a shard needs at least one item"))?;
        let keys: HashSet<String> = objects.iter().map(|i| i.key.clone()).collect();
        let companions: Vec<Item> = objects
            .iter()
            .filter_map(|i| companion(&i.key))
            .filter(|b| !keys.contains(b))
            .map(|key| Item {
                key,
                size: None,
                etag: None,
                companion: true,
            })
            .collect();
        objects.extend(companions);
        let id =
            hex::encode(&crate::digest::sha256(format!("{execution}\n{first}").as_bytes())[..12]);
        let mut prefix = match manifest {
            Some(m) => s3_url("manifest", m)?,
            None => S3Url {
                bucket: target.source_bucket.clone(),
                key: format!(".snapstage/manifests/{}/", path_safe(execution)),
            },
        };
        if !prefix.key.is_empty() && !prefix.key.ends_with('/') {
            prefix.key.push('/');
        }
        Ok(Self {
            objects,
            run_key: format!("{execution}/shard/{first}"),
            manifest: S3Url {
                bucket: prefix.bucket,
                key: format!("{}shard-{id}.jsonl", prefix.key),
            },
        })
    }

    /// The batch's objects listed (from the items, or a HEAD when an item has no size), the
    /// destination listed over their range, each decided as a normal run decides; and the
    /// items gone at the source.
    pub(super) async fn plan<R: Source, W: Sink>(
        &self,
        ctx: &Ctx<R, W>,
        target: &Target,
    ) -> Result<(Plan, Vec<String>)> {
        let mut src = Vec::new();
        let mut missing = Vec::new();
        for item in &self.objects {
            if plan::own_source_key(target, &item.key) {
                continue;
            }
            match (item.size, &item.etag) {
                (Some(size), etag) => src.push(Listed {
                    key: item.key.clone(),
                    size,
                    etag: etag.clone().unwrap_or_default(),
                }),
                (None, _) => match ctx.source.head(&item.key, None, None).await {
                    Ok(Some(h)) => src.push(Listed {
                        key: item.key.clone(),
                        size: h.size,
                        etag: h.info.etag,
                    }),
                    Ok(None) if item.companion => {
                        tracing::info!(key = %item.key, "no .bytes at the source for a .properties of this batch");
                    }
                    Ok(None) => missing.push(item.key.clone()),
                    Err(super::Problem::Fatal(e)) => return Err(e),
                    Err(_) => {
                        return Err(Error::Unavailable {
                            backend: "s3",
                            message: format!(
                                "HeadObject s3://{}/{}: the answer changed while it was read",
                                target.source_bucket, item.key
                            ),
                            source: None,
                        });
                    }
                },
            }
        }
        let dst_prefix = ctx.sink.prefix().to_string();
        let dst = super::plan::at_destination(ctx, target, &src).await?;
        let listed: Vec<(String, bool)> = src
            .iter()
            .map(|s| {
                let companion = self.objects.iter().any(|i| i.key == s.key && i.companion);
                (s.key.clone(), companion)
            })
            .collect();
        let plan = plan::decide(ctx, target, src, dst).await?;
        // What `decide` dropped was deleted at the source since the item was made.
        let planned: HashSet<&str> = plan
            .to_copy
            .iter()
            .map(|c| c.destination_key.as_str())
            .chain(plan.unchanged.iter().map(|l| l.key.as_str()))
            .collect();
        for (key, companion) in listed {
            let d = destination_key(&key, &target.source_prefix, &dst_prefix);
            if !companion && !planned.contains(d.as_str()) {
                missing.push(key);
            }
        }
        Ok((plan, missing))
    }

    /// Whether `key` (a source key) is one of the batch's items, not a companion.
    pub fn is_item(&self, key: &str) -> bool {
        self.objects.iter().any(|i| i.key == key && !i.companion)
    }

    /// Writes the shard's manifest (JSON lines) with the function's credentials.
    pub async fn write_manifest(&self, config: &SdkConfig, entries: &[Entry]) -> Result<String> {
        let m = &self.manifest;
        Client::new(config)
            .put_object()
            .bucket(&m.bucket)
            .key(&m.key)
            .content_type("application/x-ndjson")
            .body(ByteStream::from(journal::manifest_lines(entries)))
            .send()
            .await
            .map_err(|e| aws_error("s3", &format!("PutObject {m} (shard manifest)"), e))?;
        Ok(m.to_string())
    }

    /// The batch's failure when items are gone at the source (the rest is copied).
    pub fn missing_error(&self, missing: &[String], manifest: &str) -> Error {
        let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
        Error::NotFound {
            backend: "s3",
            message: format!(
                "{} of this batch's items are gone at the source: {}{}; every other object is \
                 copied and verified (manifest {manifest}). An item names an object that was \
                 deleted since the listing (or the inventory) was made: run the map again for \
                 a fresh listing",
                missing.len(),
                shown.join(", "),
                if missing.len() > shown.len() {
                    format!(" (and {} more)", missing.len() - shown.len())
                } else {
                    String::new()
                }
            ),
            source: None,
        }
    }
}

/// The `.bytes` a Nexus `.properties` describes (`metadata.properties` has none).
fn companion(key: &str) -> Option<String> {
    let stem = key.strip_suffix(".properties")?;
    let name = stem.rsplit('/').next().unwrap_or(stem);
    (name != "metadata" && !name.is_empty()).then(|| format!("{stem}.bytes"))
}

/// An execution id as one key segment: itself when it is plain, else its hash.
fn path_safe(execution: &str) -> String {
    let plain = !execution.is_empty()
        && execution.len() <= 80
        && execution
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && execution != "."
        && execution != "..";
    if plain {
        execution.to_string()
    } else {
        hex::encode(&crate::digest::sha256(execution.as_bytes())[..12])
    }
}

/// Parses a batch's items (both shapes); errors name the item and field.
pub fn parse_items(items: &[Value], source_bucket: &str, source_prefix: &str) -> Result<Vec<Item>> {
    let mut out: Vec<Item> = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for (i, v) in items.iter().enumerate() {
        let at = |f: &str| format!("{FIELD}[{i}].{f}");
        let Value::Object(o) = v else {
            return Err(Error::parameter(
                format!("{FIELD}[{i}]"),
                format!(
                    "expected an object with \"Key\" (an s3:listObjectsV2 or S3 Inventory item), \
                     got {}",
                    crate::job::params::kind_of(v)
                ),
            ));
        };
        let inventory = o.contains_key("Bucket");
        if inventory {
            match o.get("Bucket") {
                Some(Value::String(b)) if b == source_bucket => {}
                Some(Value::String(b)) => {
                    return Err(Error::parameter(
                        at("Bucket"),
                        format!(
                            "the item is in bucket {b:?}, but sourceBucket is {source_bucket:?}: \
                             the map's item source and sourceBucket must name the same bucket"
                        ),
                    ));
                }
                _ => return Err(Error::parameter(at("Bucket"), "expected a bucket name")),
            }
        }
        let key = match o.get("Key") {
            Some(Value::String(k)) if !k.is_empty() => {
                if inventory {
                    url_decode(k).ok_or_else(|| {
                        Error::parameter(
                            at("Key"),
                            format!("{k:?} is not URL-encoded as S3 Inventory writes keys"),
                        )
                    })?
                } else {
                    k.clone()
                }
            }
            _ => {
                return Err(Error::parameter(
                    at("Key"),
                    "missing: each item names an object key",
                ));
            }
        };
        if !key.starts_with(source_prefix) {
            return Err(Error::parameter(
                at("Key"),
                format!(
                    "{key:?} is outside sourcePrefix {source_prefix:?}: the map's item source and \
                     sourcePrefix must name the same prefix"
                ),
            ));
        }
        let size = match o.get("Size") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(Value::String(s)) if s.trim().parse::<u64>().is_ok() => s.trim().parse().ok(),
            Some(other) => {
                return Err(Error::parameter(
                    at("Size"),
                    format!("expected a size in bytes, got {other}"),
                ));
            }
        };
        let etag = match o.get("Etag").or_else(|| o.get("ETag")) {
            None | Some(Value::Null) => None,
            Some(Value::String(e)) => {
                Some(super::normalize_etag(e)).filter(|e: &String| !e.is_empty())
            }
            Some(other) => {
                return Err(Error::parameter(
                    at("Etag"),
                    format!("expected the object's ETag, got {other}"),
                ));
            }
        };
        if seen.insert(key.clone()) {
            out.push(Item {
                key,
                size,
                etag,
                companion: false,
            });
        }
    }
    Ok(out)
}

/// `application/x-www-form-urlencoded` decoding, as S3 Inventory encodes keys: `+` is a space,
/// `%XX` a byte; `None` when that is not valid UTF-8 or a `%` is not followed by two hex digits.
fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureKind;
    use serde_json::json;

    fn target(v: Value) -> Target {
        let mut p: super::super::Params = serde_json::from_value(v).unwrap();
        p.items = None;
        p.validate().unwrap()
    }

    fn base() -> Target {
        target(
            json!({"sourceBucket": "cloud-nexus", "sourcePrefix": "blobs/",
            "destinationBucket": "onprem", "destinationEndpoint": "http://127.0.0.1:9000"}),
        )
    }

    fn field(r: Result<impl std::fmt::Debug>) -> (String, String) {
        match r.unwrap_err() {
            Error::Parameter { field, message } => (field, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn list_objects_v2_items_carry_size_and_etag() {
        let items = [
            json!({"Etag": "\"05704fbdccb224cb01c59005bebbad28\"", "Key": "blobs/content/vol-01/chap-02/a.bytes",
                "LastModified": 1668699881, "Size": 34910, "StorageClass": "STANDARD"}),
            json!({"Etag": "\"9b2cf535f27731c974343645a3985328-3\"", "Key": "blobs/content/vol-01/chap-02/b.bytes",
                "Size": 0}),
        ];
        let out = parse_items(&items, "cloud-nexus", "blobs/").unwrap();
        assert_eq!(
            out[0],
            Item {
                key: "blobs/content/vol-01/chap-02/a.bytes".into(),
                size: Some(34910),
                etag: Some("05704fbdccb224cb01c59005bebbad28".into()),
                companion: false,
            }
        );
        assert_eq!(
            out[1].etag.as_deref(),
            Some("9b2cf535f27731c974343645a3985328-3")
        );
        assert_eq!(out[1].size, Some(0));
    }

    #[test]
    fn inventory_items_are_decoded_and_checked_against_the_source_bucket() {
        let items = [
            json!({"Bucket": "cloud-nexus", "Key": "blobs/my+report%281%29.txt", "Size": "3399671",
                "LastModifiedDate": "2022-11-16T00:29:32.000Z"}),
            json!({"Bucket": "cloud-nexus", "Key": "blobs/plain.bytes", "Size": "",
                "ETag": "abc"}),
            // A duplicate is copied once.
            json!({"Bucket": "cloud-nexus", "Key": "blobs/plain.bytes"}),
        ];
        let out = parse_items(&items, "cloud-nexus", "blobs/").unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].key, "blobs/my report(1).txt");
        assert_eq!(out[0].size, Some(3_399_671));
        assert_eq!(out[0].etag, None);
        assert_eq!((out[1].size, out[1].etag.as_deref()), (None, Some("abc")));

        let (f, m) = field(parse_items(
            &[
                json!({"Key": "blobs/a"}),
                json!({"Bucket": "other", "Key": "blobs/b"}),
            ],
            "cloud-nexus",
            "blobs/",
        ));
        assert_eq!(f, "items[1].Bucket");
        assert!(m.contains("\"other\"") && m.contains("sourceBucket"), "{m}");
    }

    #[test]
    fn bad_items_name_the_item_and_the_field() {
        for (item, want) in [
            (json!("blobs/a"), "items[0]"),
            (json!({"Size": 3}), "items[0].Key"),
            (json!({"Key": ""}), "items[0].Key"),
            (json!({"Key": "elsewhere/a"}), "items[0].Key"),
            (json!({"Key": "blobs/a", "Size": -1}), "items[0].Size"),
            (json!({"Key": "blobs/a", "Size": "big"}), "items[0].Size"),
            (json!({"Key": "blobs/a", "Etag": 5}), "items[0].Etag"),
            (
                json!({"Bucket": "cloud-nexus", "Key": "blobs/%zz"}),
                "items[0].Key",
            ),
        ] {
            let (f, _) = field(parse_items(
                std::slice::from_ref(&item),
                "cloud-nexus",
                "blobs/",
            ));
            assert_eq!(f, want, "{item}");
        }
    }

    #[test]
    fn a_shard_is_keyed_by_its_execution_and_first_key_and_brings_its_companions() {
        let items = [
            json!({"Key": "blobs/content/vol-01/chap-01/a.properties", "Size": 5, "Etag": "x"}),
            json!({"Key": "blobs/content/vol-01/chap-01/b.bytes", "Size": 5, "Etag": "y"}),
            json!({"Key": "blobs/content/vol-01/chap-01/b.properties", "Size": 5, "Etag": "z"}),
            json!({"Key": "blobs/metadata.properties", "Size": 5, "Etag": "w"}),
        ];
        let s = Shard::new(&items, &base(), None, "map-run-7").unwrap();
        assert_eq!(
            s.run_key,
            "map-run-7/shard/blobs/content/vol-01/chap-01/a.properties"
        );
        let companions: Vec<&str> = s
            .objects
            .iter()
            .filter(|i| i.companion)
            .map(|i| i.key.as_str())
            .collect();
        // a.properties' .bytes is in another batch; b's is here; metadata.properties has none.
        assert_eq!(companions, ["blobs/content/vol-01/chap-01/a.bytes"]);
        assert!(s.is_item("blobs/content/vol-01/chap-01/a.properties"));
        assert!(!s.is_item("blobs/content/vol-01/chap-01/a.bytes"));
        assert_eq!(s.manifest.bucket, "cloud-nexus");
        assert!(
            s.manifest
                .key
                .starts_with(".snapstage/manifests/map-run-7/shard-")
                && s.manifest.key.ends_with(".jsonl"),
            "{}",
            s.manifest
        );
        // The same batch of the same execution has the same manifest; another execution not.
        let again = Shard::new(&items, &base(), None, "map-run-7").unwrap();
        assert_eq!(again.manifest, s.manifest);
        let other = Shard::new(&items, &base(), Some("s3://results/map/run"), "map-run-8").unwrap();
        assert_eq!(other.manifest.bucket, "results");
        assert!(
            other.manifest.key.starts_with("map/run/shard-"),
            "{}",
            other.manifest
        );
        assert_ne!(
            other.manifest.key.rsplit('/').next(),
            s.manifest.key.rsplit('/').next()
        );
        // An execution id that is not a plain key segment is hashed.
        let odd = Shard::new(&items, &base(), None, "a/../b").unwrap();
        assert!(!odd.manifest.key.contains(".."), "{}", odd.manifest);
    }

    #[test]
    fn mirror_pull_mode_and_empty_batches_are_refused() {
        let items = [json!({"Key": "blobs/a"})];
        let mirror = target(
            json!({"sourceBucket": "cloud-nexus", "sourcePrefix": "blobs/",
            "destinationBucket": "onprem", "mirror": true}),
        );
        let (f, m) = field(Shard::new(&items, &mirror, None, "e"));
        assert_eq!(f, "mirror");
        assert!(m.contains("complete source listing"), "{m}");
        let pull = target(
            json!({"sourceBucket": "cloud-nexus", "sourcePrefix": "blobs/",
            "destinationDirectory": "/var/nexus"}),
        );
        let (f, _) = field(Shard::new(&items, &pull, None, "e"));
        assert_eq!(f, "destinationDirectory");
        let (f, m) = field(Shard::new(&[], &base(), None, "e"));
        assert_eq!(f, "items");
        assert!(m.contains("empty"), "{m}");
        let e = Shard::new(&items, &base(), None, "e")
            .unwrap()
            .missing_error(&["blobs/a".into()], "s3://m/x.jsonl");
        assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
        assert!(e.to_string().contains("blobs/a"), "{e}");
    }
}
