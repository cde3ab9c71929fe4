//! Replication past one Lambda, run locally: the Distributed Map of
//! `infra/statemachine/replicate-map.asl.json` played by this test — the source prefix listed as
//! its `s3:listObjectsV2` ItemReader lists it, the items batched as its `ItemBatcher` batches
//! them (`MaxItemsPerBatch`, `MaxInputBytesPerBatch`, `BatchInput`), and each batch handed to one
//! replicate-artifacts-back process (the real binary, in CLI mode, the child's input on stdin),
//! at most the definition's MaxConcurrency at once — with moto as the cloud S3 and versitygw as
//! the on-prem S3. The function's parameters come from SNAPSTAGE_DEFAULTS, as the stack sets them.
//!
//! Needs `scripts/services.sh start` and `eval "$(scripts/services.sh env)"` (SKIP otherwise;
//! under CI=true a failure).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::collections::BTreeMap;

use common::{put, s3};
use serde_json::{Value, json};
use snapstage_localenv::testkit::{self, CliRun, Moto, RunningCli, moto, unique};

const BIN: &str = env!("CARGO_BIN_EXE_replicate-artifacts-back");
const ASL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../infra/statemachine/replicate-map.asl.json"
);
const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/template.yaml");
const PREFIX: &str = "nexus/blobs/";
/// The stack's ResultPrefix (DefinitionSubstitutions in infra/template.yaml).
const RESULT_PREFIX: &str = ".snapstage/map/";

/// What the test takes from the state machine definition.
struct MapDefinition {
    max_items: usize,
    max_bytes: usize,
    batch_input: serde_json::Map<String, Value>,
    max_concurrency: usize,
}

fn definition() -> MapDefinition {
    let asl: Value = serde_json::from_str(&std::fs::read_to_string(ASL).unwrap()).unwrap();
    let states = &asl["States"];
    let map = &states["CopyListedShards"];
    assert_eq!(map["Type"], "Map");
    assert_eq!(
        map["ItemReader"]["Resource"],
        "arn:aws:states:::s3:listObjectsV2"
    );
    assert_eq!(map["ItemReader"]["Parameters"]["Prefix"], "${SourcePrefix}");
    let processor = &map["ItemProcessor"];
    assert_eq!(processor["ProcessorConfig"]["Mode"], "DISTRIBUTED");
    // A child runs a Lambda of up to 15 minutes: an EXPRESS child (5 minutes) could not.
    assert_eq!(processor["ProcessorConfig"]["ExecutionType"], "STANDARD");
    let task = &processor["States"][processor["StartAt"].as_str().unwrap()];
    assert_eq!(task["Resource"], "arn:aws:states:::lambda:invoke");
    assert_eq!(task["Parameters"]["Payload.$"], "$");
    let retried: Vec<&str> = task["Retry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["MaxAttempts"].as_u64() != Some(0))
        .flat_map(|r| r["ErrorEquals"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    for e in [
        "Lambda.ServiceException",
        "Lambda.TooManyRequestsException",
        "States.TaskFailed",
    ] {
        assert!(retried.contains(&e), "{e} is not retried: {retried:?}");
    }
    // The other item source runs the same child.
    assert_eq!(
        states["CopyInventoryShards"]["ItemProcessor"]["States"]["CopyShard"]["Parameters"],
        task["Parameters"]
    );
    assert_eq!(
        states["CopyInventoryShards"]["ItemReader"]["ReaderConfig"]["InputType"],
        "MANIFEST"
    );
    let batcher = &map["ItemBatcher"];
    // MaxConcurrencyPath → the Settings state → the stack parameter's default.
    assert_eq!(map["MaxConcurrencyPath"], "$.maxConcurrency");
    assert_eq!(
        states["Settings"]["Parameters"]["maxConcurrency.$"],
        "States.StringToJson('${ReplicationMapConcurrency}')"
    );
    MapDefinition {
        max_items: batcher["MaxItemsPerBatch"].as_u64().unwrap() as usize,
        max_bytes: batcher["MaxInputBytesPerBatch"].as_u64().unwrap() as usize,
        batch_input: batcher["BatchInput"].as_object().unwrap().clone(),
        max_concurrency: parameter_default("ReplicationMapConcurrency"),
    }
}

/// A Number parameter's Default in infra/template.yaml.
fn parameter_default(name: &str) -> usize {
    let text = std::fs::read_to_string(TEMPLATE).unwrap();
    let mut lines = text.lines().skip_while(|l| *l != format!("  {name}:"));
    lines
        .next()
        .unwrap_or_else(|| panic!("no parameter {name}"));
    lines
        .take_while(|l| l.starts_with("    "))
        .find_map(|l| l.trim().strip_prefix("Default: "))
        .unwrap_or_else(|| panic!("{name} has no Default"))
        .parse()
        .unwrap()
}

/// BatchInput as Step Functions evaluates it for `execution` (`$$.Execution.Name`, and the
/// stack's substitutions).
fn batch_input(def: &MapDefinition, execution: &str, result_bucket: &str) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in &def.batch_input {
        let v = v.as_str().unwrap();
        match k.strip_suffix(".$") {
            Some(name) if v == "$$.Execution.Name" => {
                out.insert(name.into(), json!(execution));
            }
            Some(name) => {
                let f = v
                    .strip_prefix("States.Format('")
                    .and_then(|r| r.strip_suffix("', $$.Execution.Name)"))
                    .unwrap_or_else(|| panic!("BatchInput {k}: {v}"));
                let text = f
                    .replace("${ResultBucket}", result_bucket)
                    .replace("${ResultPrefix}", RESULT_PREFIX)
                    .replace("{}", execution);
                out.insert(name.into(), json!(text));
            }
            None => {
                out.insert(k.clone(), json!(v));
            }
        }
    }
    Value::Object(out)
}

/// The source prefix as the ListObjectsV2 ItemReader gives it: one item per object, in key order.
async fn list_items(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<Value> {
    let mut pages = c
        .list_objects_v2()
        .bucket(bucket)
        .prefix(PREFIX)
        .into_paginator()
        .send();
    let mut items = Vec::new();
    while let Some(page) = pages.next().await {
        for o in page.unwrap().contents() {
            items.push(json!({
                "Etag": o.e_tag().unwrap(),
                "Key": o.key().unwrap(),
                "LastModified": o.last_modified().map(|t| t.secs()).unwrap_or_default(),
                "Size": o.size().unwrap(),
                "StorageClass": "STANDARD",
            }));
        }
    }
    items
}

/// The child inputs, as ItemBatcher makes them: items in order, a batch closed at
/// MaxItemsPerBatch items or before its input passes MaxInputBytesPerBatch.
fn batches(def: &MapDefinition, items: &[Value], input: &Value) -> Vec<Value> {
    let mut out: Vec<Vec<Value>> = vec![Vec::new()];
    for item in items {
        let current = out.last_mut().unwrap();
        let size = |items: &[Value]| {
            json!({"BatchInput": input, "Items": items})
                .to_string()
                .len()
        };
        let mut with = current.clone();
        with.push(item.clone());
        if !current.is_empty() && (current.len() == def.max_items || size(&with) > def.max_bytes) {
            out.push(vec![item.clone()]);
        } else {
            *current = with;
        }
    }
    out.into_iter()
        .filter(|b| !b.is_empty())
        .map(|b| json!({"BatchInput": input, "Items": b}))
        .collect()
}

/// Runs the children, at most `max_concurrency` processes at once; the runs in batch order.
fn run_children(
    m: &Moto,
    def: &MapDefinition,
    children: &[Value],
    defaults: &Value,
) -> Vec<CliRun> {
    let defaults = defaults.to_string();
    let env = [("SNAPSTAGE_DEFAULTS", defaults.as_str())];
    let mut running: Vec<(usize, RunningCli)> = Vec::new();
    let mut done: BTreeMap<usize, CliRun> = BTreeMap::new();
    let mut peak = 0;
    for (i, child) in children.iter().enumerate() {
        while running.len() >= def.max_concurrency {
            let (j, r) = running.remove(0);
            done.insert(j, r.wait_within(testkit::CLI_TIMEOUT));
        }
        running.push((i, testkit::spawn_cli(BIN, &m.cloud, child, &[], &env)));
        peak = peak.max(running.len());
    }
    assert!(
        peak > 1 || children.len() == 1,
        "the shards ran one at a time"
    );
    for (j, r) in running {
        done.insert(j, r.wait_within(testkit::CLI_TIMEOUT));
    }
    done.into_values().collect()
}

/// Every object under the destination (or source) prefix: key → (size, ETag).
async fn objects(c: &aws_sdk_s3::Client, bucket: &str) -> BTreeMap<String, (i64, String)> {
    let mut pages = c
        .list_objects_v2()
        .bucket(bucket)
        .prefix(PREFIX)
        .into_paginator()
        .send();
    let mut out = BTreeMap::new();
    while let Some(page) = pages.next().await {
        for o in page.unwrap().contents() {
            out.insert(
                o.key().unwrap().to_string(),
                (
                    o.size().unwrap(),
                    o.e_tag().unwrap().trim_matches('"').to_string(),
                ),
            );
        }
    }
    out
}

/// A Nexus blob store of `pairs` blobs (.bytes + .properties), one loose object sorting first so
/// a batch boundary falls between a blob's .bytes and its .properties, and metadata.properties.
async fn blob_store(c: &aws_sdk_s3::Client, bucket: &str, pairs: usize) {
    c.create_bucket().bucket(bucket).send().await.unwrap();
    let mut keys: Vec<(String, Vec<u8>)> = vec![
        (
            format!("{PREFIX}content/aaa-loose.txt"),
            b"first in the listing".to_vec(),
        ),
        (
            format!("{PREFIX}metadata.properties"),
            b"type=file/1\n".to_vec(),
        ),
    ];
    for i in 0..pairs {
        let stem = format!(
            "{PREFIX}content/vol-{:02}/chap-{:02}/{i:08x}-4b1c-9e1f",
            i % 43 + 1,
            i % 47 + 1
        );
        keys.push((
            format!("{stem}.bytes"),
            format!("blob {i}").repeat(i % 7 + 1).into_bytes(),
        ));
        keys.push((
            format!("{stem}.properties"),
            format!("size={i}\n").into_bytes(),
        ));
    }
    let mut set = tokio::task::JoinSet::new();
    for chunk in keys.chunks(keys.len().div_ceil(16)) {
        let (c, bucket, chunk) = (c.clone(), bucket.to_string(), chunk.to_vec());
        set.spawn(async move {
            for (k, body) in chunk {
                put(&c, &bucket, &k, &body).await;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

fn answer(r: &CliRun) -> &Value {
    r.last()
}

fn count(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
}

#[tokio::test]
async fn a_distributed_map_of_shards_copies_the_prefix_as_one_run_would() {
    let test = "a_distributed_map_of_shards_copies_the_prefix_as_one_run_would";
    let Some(m) =
        moto(test).and_then(|m| testkit::onprem_s3(test).map(|onprem| Moto { onprem, ..m }))
    else {
        return;
    };
    let def = definition();
    assert!(def.max_concurrency > 1, "ReplicationMapConcurrency default");
    let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
    let src = unique("map-cloud");
    // Enough blobs for three batches of MaxItemsPerBatch.
    let pairs = def.max_items + def.max_items / 4;
    blob_store(&cloud, &src, pairs).await;
    let total = 2 * pairs + 2;
    let source = objects(&cloud, &src).await;
    assert_eq!(source.len(), total);

    let dst = unique("map-onprem");
    onprem.create_bucket().bucket(&dst).send().await.unwrap();
    let defaults = json!({"sourceBucket": src, "sourcePrefix": PREFIX, "destinationBucket": dst,
        "destinationEndpoint": m.onprem});
    let items = list_items(&cloud, &src).await;
    let execution = unique("map-run");
    let input = batch_input(&def, &execution, &src);
    let children = batches(&def, &items, &input);
    assert_eq!(children.len(), 3, "batches of {}", def.max_items);
    // A batch boundary falls between a blob's .bytes and its .properties.
    let splits = children
        .windows(2)
        .filter(|w| {
            let last = w[0]["Items"].as_array().unwrap().last().unwrap()["Key"]
                .as_str()
                .unwrap();
            let first = w[1]["Items"][0]["Key"].as_str().unwrap();
            last.ends_with(".bytes") && first == last.replace(".bytes", ".properties")
        })
        .count() as u64;
    assert!(splits > 0, "the store is laid out so a batch splits a blob");

    // The map: every shard succeeds, each with its manifest.
    let runs = run_children(&m, &def, &children, &defaults);
    let mut copied = 0;
    for (r, child) in runs.iter().zip(&children) {
        let a = answer(r);
        assert_eq!(
            (r.code, a["status"].as_str()),
            (0, Some("Succeeded")),
            "{a}\n{}",
            r.stderr
        );
        let n = child["Items"].as_array().unwrap().len() as u64;
        assert!(count(a, "objectsCopied") >= n, "{a}");
        assert_eq!(
            count(a, "objectsVerified"),
            count(a, "objectsCopied"),
            "{a}"
        );
        assert_eq!(a["failedKeys"], json!([]), "{a}");
        assert_eq!(a["executionId"], execution.as_str());
        copied += count(a, "objectsCopied");
        // The shard's manifest: one line per object it copied or found unchanged (a companion
        // its neighbour copied first).
        let url = a["manifest"].as_str().unwrap();
        let prefix = format!("s3://{src}/{RESULT_PREFIX}shards/{execution}/shard-");
        assert!(url.starts_with(&prefix) && url.ends_with(".jsonl"), "{url}");
        let key = url.strip_prefix(&format!("s3://{src}/")).unwrap();
        let lines = String::from_utf8(common::get(&cloud, &src, key).await).unwrap();
        assert_eq!(
            lines.lines().count() as u64,
            count(a, "objectsCopied"),
            "{lines}"
        );
        for item in child["Items"].as_array().unwrap() {
            assert!(
                lines.contains(&format!("\"key\":{}", item["Key"])),
                "{} missing from {url}",
                item["Key"]
            );
        }
    }
    // A split blob's .bytes may be copied by both of its batches: the same content, verified.
    assert!(
        (total as u64..=total as u64 + splits).contains(&copied),
        "copied {copied} of {total}"
    );
    let arrived = objects(&onprem, &dst).await;
    assert_eq!(
        arrived, source,
        "the destination holds every object, same size and MD5"
    );

    // Again (a new map run): nothing to copy.
    let again = unique("map-run");
    let children2 = batches(
        &def,
        &list_items(&cloud, &src).await,
        &batch_input(&def, &again, &src),
    );
    for r in run_children(&m, &def, &children2, &defaults) {
        let a = answer(&r);
        assert_eq!(
            (r.code, count(a, "objectsCopied")),
            (0, 0),
            "{a}\n{}",
            r.stderr
        );
        assert!(count(a, "objectsSkipped") > 0, "{a}");
    }

    // The whole prefix in one run gives the same destination.
    let whole = unique("map-whole");
    onprem.create_bucket().bucket(&whole).send().await.unwrap();
    let r = testkit::run_cli(
        BIN,
        &m.cloud,
        &json!({"sourceBucket": src, "sourcePrefix": PREFIX, "destinationBucket": whole,
            "destinationEndpoint": m.onprem}),
        &[],
        &[],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.last(), r.stderr);
    assert_eq!(objects(&onprem, &whole).await, arrived);

    // A batch holding an item deleted since the listing fails alone, naming it; the others
    // succeed (into a fresh destination, so they copy).
    let dst3 = unique("map-onprem");
    onprem.create_bucket().bucket(&dst3).send().await.unwrap();
    let stale = list_items(&cloud, &src).await;
    let gone = stale[def.max_items + 10]["Key"]
        .as_str()
        .unwrap()
        .to_string();
    cloud
        .delete_object()
        .bucket(&src)
        .key(&gone)
        .send()
        .await
        .unwrap();
    let third = unique("map-run");
    let children3 = batches(&def, &stale, &batch_input(&def, &third, &src));
    let defaults3 = json!({"sourceBucket": src, "sourcePrefix": PREFIX, "destinationBucket": dst3,
        "destinationEndpoint": m.onprem});
    let runs = run_children(&m, &def, &children3, &defaults3);
    let failed: Vec<usize> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.code != 0)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(failed, [1], "only the batch holding {gone} fails");
    let a = answer(&runs[1]);
    assert_eq!(a["status"], "Failed", "{a}");
    assert_eq!(a["failureType"], "ConfigurationError", "{a}");
    assert!(a["message"].as_str().unwrap().contains(&gone), "{a}");
    for i in [0, 2] {
        assert!(
            count(answer(&runs[i]), "objectsCopied") > 0,
            "{}",
            answer(&runs[i])
        );
    }
    // Everything but the gone object arrived, the failed batch's other objects included.
    let mut expected = source.clone();
    expected.remove(&gone);
    assert_eq!(objects(&onprem, &dst3).await, expected);
}
