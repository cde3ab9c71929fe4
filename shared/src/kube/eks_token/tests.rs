//! The EKS token against the documented algorithm, with fixed credentials and time, and against
//! botocore's SigV4 query signer (the signer `aws eks get-token` uses) as an independent client.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use super::*;

// 2026-01-02T03:04:05Z
const FIXED: u64 = 1_767_323_045;

fn creds() -> Credentials {
    Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        Some("FwoGZXIvYXdzEXAMPLE/+=".into()),
        None,
        "test",
    )
}

fn decode(token: &str) -> (String, BTreeMap<String, String>) {
    let body = token.strip_prefix(TOKEN_PREFIX).expect("prefix");
    assert!(!body.contains('='), "base64url without padding");
    let url = String::from_utf8(URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
    let (base, query) = url.split_once('?').unwrap();
    let q = query
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    (base.to_string(), q)
}

#[test]
fn token_is_a_presigned_get_caller_identity_url() {
    let t = token(
        &creds(),
        "eu-west-1",
        "staging",
        UNIX_EPOCH + Duration::from_secs(FIXED),
    )
    .unwrap();
    let (base, q) = decode(&t);
    assert_eq!(base, "https://sts.eu-west-1.amazonaws.com/");
    assert_eq!(q["Action"], "GetCallerIdentity");
    assert_eq!(q["Version"], "2011-06-15");
    assert_eq!(q["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
    assert_eq!(
        q["X-Amz-Credential"],
        "AKIDEXAMPLE%2F20260102%2Feu-west-1%2Fsts%2Faws4_request"
    );
    assert_eq!(q["X-Amz-Date"], "20260102T030405Z");
    assert_eq!(q["X-Amz-Expires"], "60");
    assert_eq!(q["X-Amz-SignedHeaders"], "host%3Bx-k8s-aws-id");
    assert_eq!(q["X-Amz-Security-Token"], "FwoGZXIvYXdzEXAMPLE%2F%2B%3D");
    assert_eq!(q["X-Amz-Signature"].len(), 64);
}

#[test]
fn the_cluster_name_is_signed() {
    let at = UNIX_EPOCH + Duration::from_secs(FIXED);
    let a = decode(&token(&creds(), "us-east-1", "staging", at).unwrap()).1;
    let b = decode(&token(&creds(), "us-east-1", "production", at).unwrap()).1;
    assert_ne!(a["X-Amz-Signature"], b["X-Amz-Signature"]);
    assert!(token(&creds(), "us-east-1", "", at).is_err());
}

#[test]
fn signature_matches_botocore() {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if !python.exists() {
        assert!(
            !matches!(std::env::var("CI").as_deref(), Ok("true")),
            "{} not found: under CI=true a missing prerequisite fails the run (make setup installs boto3)",
            python.display()
        );
        eprintln!(
            "SKIP: {} not found (make setup installs boto3)",
            python.display()
        );
        return;
    }
    let script = r#"
import sys, datetime
import botocore.auth, botocore.awsrequest, botocore.credentials
ak, sk, tok, region, cluster, ts = sys.argv[1:7]
fixed = datetime.datetime.fromtimestamp(int(ts), datetime.timezone.utc).replace(tzinfo=None)
botocore.auth.get_current_datetime = lambda *a, **k: fixed
req = botocore.awsrequest.AWSRequest(method="GET",
    url=f"https://sts.{region}.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15",
    headers={"x-k8s-aws-id": cluster})
botocore.auth.SigV4QueryAuth(botocore.credentials.Credentials(ak, sk, tok), "sts", region, expires=60).add_auth(req)
print(req.url)
"#;
    let c = creds();
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            script,
            c.access_key_id(),
            c.secret_access_key(),
            c.session_token().unwrap(),
            "eu-west-1",
            "staging",
            &FIXED.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let boto_url = String::from_utf8(out.stdout).unwrap();
    let boto_sig = boto_url.trim().rsplit_once("X-Amz-Signature=").unwrap().1;
    let ours = decode(
        &token(
            &c,
            "eu-west-1",
            "staging",
            UNIX_EPOCH + Duration::from_secs(FIXED),
        )
        .unwrap(),
    )
    .1;
    assert_eq!(ours["X-Amz-Signature"], boto_sig);
}
