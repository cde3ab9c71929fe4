//! The hostile-input corpus: several hundred malformed events derived deterministically from every
//! sample in events/ (each member replaced by a hostile value or removed; hostile
//! `UserParameters` and continuation tokens on job events; whole-payload shapes). The samples'
//! artifact credentials are replaced by [`SECRET_KEY`] / [`SESSION_TOKEN`], so a leak is
//! recognisable. Used in-process by `shared/tests/hostile.rs` and through the real binaries by
//! `tests/tests/hostile_binaries.rs` (which includes this file by path).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::Path;

use serde_json::{Value, json};

pub const SECRET_KEY: &str = "HOSTILEsecretKEYwJalrXUtnFEMI0123456789";
pub const SESSION_TOKEN: &str = "HOSTILEsessionTOKENFwoGZXIvYXdzEXAMPLE";

/// `events/` of the workspace.
fn events_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../events")
}

pub fn samples() -> Vec<Value> {
    let root = events_dir();
    let mut out = vec![];
    for sub in ["codepipeline", "codecommit", "direct"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let mut v: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            if let Some(creds) = v.pointer_mut("/CodePipeline.job/data/artifactCredentials") {
                creds["secretAccessKey"] = json!(SECRET_KEY);
                creds["sessionToken"] = json!(SESSION_TOKEN);
            }
            out.push(v);
        }
    }
    out
}

pub fn hostile_values() -> Vec<Value> {
    let mut deep = json!(0);
    for _ in 0..64 {
        deep = json!([deep]);
    }
    vec![
        Value::Null,
        json!(42),
        json!(-1),
        json!(1e308),
        json!(true),
        json!(""),
        json!("x".repeat(5000)),
        json!("\u{0000}\u{202e}🎉"),
        json!([]),
        json!({}),
        deep,
    ]
}

/// Every path to a leaf or object member, as JSON pointers.
pub fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

pub fn corpus() -> Vec<Value> {
    let mut out = vec![];
    let values = hostile_values();
    for sample in samples() {
        let mut ptrs = vec![];
        pointers(&sample, String::new(), &mut ptrs);
        for (i, p) in ptrs.iter().enumerate() {
            // Replace the member with one hostile value (rotating through them) ...
            let mut m = sample.clone();
            *m.pointer_mut(p).unwrap() = values[i % values.len()].clone();
            out.push(m);
            // ... and remove it.
            let (parent, key) = p.rsplit_once('/').unwrap();
            let mut m = sample.clone();
            let target = if parent.is_empty() {
                Some(&mut m)
            } else {
                m.pointer_mut(parent)
            };
            match target {
                Some(Value::Object(o)) => {
                    o.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(a)) => {
                    a.remove(key.parse::<usize>().unwrap());
                }
                _ => {}
            }
            out.push(m);
        }
        // Hostile UserParameters and continuation tokens on job events.
        if sample.get("CodePipeline.job").is_some() {
            let ups = [
                "",
                "{",
                "[]",
                "null",
                "\"text\"",
                "{\"volumeIds\": \"vol-1\"}",
                "{\"dryRun\": \"yes\"}",
                "{\"__proto__\": {}}",
                &format!("{{\"k\": \"{}\"}}", "a".repeat(990)),
                &format!("{{\"k\": \"{}\"}}", "a".repeat(2000)),
            ];
            for up in ups {
                let mut m = sample.clone();
                m["CodePipeline.job"]["data"]["actionConfiguration"]["configuration"]["UserParameters"] =
                    json!(up);
                out.push(m);
            }
            for token in [
                "",
                "ss1.",
                "ss1.!!!!",
                "ss1.e30",
                "token_ID",
                &"ss1.A".repeat(700),
            ] {
                let mut m = sample.clone();
                m["CodePipeline.job"]["data"]["continuationToken"] = json!(token);
                out.push(m);
            }
        }
    }
    // Whole-payload shapes.
    out.extend(hostile_values());
    out.push(json!({"CodePipeline.job": null}));
    out.push(json!({"CodePipeline.job": {"id": 7}}));
    out.push(json!({"CodePipeline.job": {"id": "only-an-id"}}));
    out.push(json!({"detail-type": "CodeCommit Repository State Change", "source": "aws.codecommit", "detail": null}));
    out.push(json!({"Records": [{"s3": {}}]}));
    out
}
