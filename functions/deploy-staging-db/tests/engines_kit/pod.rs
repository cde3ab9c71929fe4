//! Runs a container that snapstage rendered as the kubelet would: its `command` + `args` (with
//! `$(VAR)` expanded), the image's environment and then the container's `env` in order (literals,
//! `secretKeyRef` values read from the Secret as it was applied), as the pod's or container's
//! `runAsUser`/`runAsGroup`, with no other environment, no stdin, and a time limit.
//!
//! The one liberty: this machine has no mount namespace for the test, so a volume is a directory,
//! and every path under a container's `mountPath` — in its command, arguments and environment
//! values — is rewritten to the directory standing for that volume. And a Service's DNS name is
//! 127.0.0.1, with its port the staging server's loopback port (what cluster DNS and the Service
//! do). Nothing else of the rendered container is touched: its script is the rendered text.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, PodSpec, Secret};

/// What stands for the cluster around the pod.
#[derive(Default)]
pub struct World {
    /// Secrets of the namespace, by name, as applied.
    pub secrets: BTreeMap<String, Secret>,
    /// PVC name → the directory holding the volume's files.
    pub claims: BTreeMap<String, PathBuf>,
    /// ConfigMap name → a directory with one file per key.
    pub config_maps: BTreeMap<String, PathBuf>,
    /// The image's own environment (`ENV` lines), before the container's.
    pub image_env: Vec<(String, String)>,
    /// The Service: its DNS name, its port, and the loopback port the server listens on.
    pub service: Option<(String, String, u16)>,
}

/// What a container did.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The termination message the kubelet writes for `FallbackToLogsOnError` after a failure:
    /// the log's last 80 lines, at most 2048 bytes.
    pub fn termination_message(&self) -> String {
        let log = format!("{}{}", self.stdout, self.stderr);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let start = tail.len().saturating_sub(2048);
        let start = (start..=tail.len())
            .find(|i| tail.is_char_boundary(*i))
            .unwrap_or(tail.len());
        tail[start..].to_string()
    }

    pub fn output(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `$(NAME)` → the value defined so far; `$$(` is a literal `$(`; an unknown name stays as it
/// is (Kubernetes' rules).
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(r) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = r;
        } else if let Some(r) = after.strip_prefix('(')
            && let Some(end) = r.find(')')
        {
            let name = &r[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Rewrites each `mountPath` (followed by `/`, the end, or a character that ends a path) to its
/// directory.
fn remount(s: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut out = s.to_string();
    for (path, dir) in mounts {
        let dir = dir.display().to_string();
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(path.as_str()) {
            let end = at + path.len();
            let boundary = rest[end..]
                .chars()
                .next()
                .is_none_or(|c| c == '/' || c.is_whitespace() || "'\";:)".contains(c));
            let before_ok = rest[..at]
                .chars()
                .last()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '/' || c == '_' || c == '-'));
            result.push_str(&rest[..at]);
            result.push_str(if boundary && before_ok { &dir } else { path });
            rest = &rest[end..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// The container's mounts: `mountPath` → directory, longest first.
fn mounts(pod: &PodSpec, c: &Container, world: &World) -> Vec<(String, PathBuf)> {
    let mut m: Vec<(String, PathBuf)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|vm| {
            let v = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == vm.name)
                .unwrap_or_else(|| panic!("volumeMount {} names no volume of the pod", vm.name));
            let base = if let Some(pvc) = &v.persistent_volume_claim {
                world
                    .claims
                    .get(&pvc.claim_name)
                    .unwrap_or_else(|| panic!("PVC {} is not there", pvc.claim_name))
                    .clone()
            } else if let Some(cm) = &v.config_map {
                world
                    .config_maps
                    .get(&cm.name)
                    .unwrap_or_else(|| panic!("ConfigMap {} is not there", cm.name))
                    .clone()
            } else {
                panic!(
                    "volume {}: only PVC and ConfigMap volumes are emulated",
                    v.name
                )
            };
            let dir = match vm.sub_path.as_deref() {
                Some(sub) if !sub.is_empty() => base.join(sub),
                _ => base,
            };
            (vm.mount_path.trim_end_matches('/').to_string(), dir)
        })
        .collect();
    m.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    m
}

/// The container's environment, as the kubelet builds it.
fn environment(
    c: &Container,
    world: &World,
    mounts: &[(String, PathBuf)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = world.image_env.clone();
    assert!(c.env_from.is_none(), "envFrom is not emulated");
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (v, None) => expand(v.as_deref().unwrap_or_default(), &env),
            (None, Some(from)) => {
                let r = from
                    .secret_key_ref
                    .as_ref()
                    .unwrap_or_else(|| panic!("{}: only secretKeyRef is emulated", e.name));
                let secret = world.secrets.get(&r.name).unwrap_or_else(|| {
                    panic!(
                        "{}: Secret {} does not exist (CreateContainerConfigError)",
                        e.name, r.name
                    )
                });
                let bytes = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .unwrap_or_else(|| {
                        panic!("{}: Secret {} has no key {}", e.name, r.name, r.key)
                    });
                String::from_utf8(bytes.0.clone()).unwrap()
            }
            (Some(_), Some(_)) => panic!("{}: value and valueFrom", e.name),
        };
        let mut value = remount(&value, mounts);
        if let Some((host, port, local)) = &world.service {
            if &value == host {
                value = "127.0.0.1".into();
            } else if e.name.ends_with("PORT") && &value == port {
                value = local.to_string();
            }
        }
        env.retain(|(k, _)| k != &e.name);
        env.push((e.name.clone(), value));
    }
    env
}

/// Runs container `c` of `pod`; at most `limit`, then its process group is killed and the test
/// fails.
pub fn run(pod: &PodSpec, c: &Container, world: &World, limit: Duration) -> Ran {
    let mounts = mounts(pod, c, world);
    let env = environment(c, world, &mounts);
    let mut argv: Vec<String> = c.command.clone().unwrap_or_else(|| {
        panic!(
            "container {}: no command (the image's entrypoint is not emulated)",
            c.name
        )
    });
    argv.extend(c.args.clone().unwrap_or_default());
    let argv: Vec<String> = argv
        .iter()
        .map(|a| remount(&expand(a, &env), &mounts))
        .collect();
    let sc = c.security_context.as_ref();
    let psc = pod.security_context.as_ref();
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user))
        .unwrap_or_else(|| {
            panic!(
                "container {}: no runAsUser (restricted needs non-root)",
                c.name
            )
        });
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| psc.and_then(|s| s.run_as_group))
        .unwrap_or(uid);
    let mut child = super::contained(
        &argv,
        u32::try_from(uid).unwrap(),
        u32::try_from(gid).unwrap(),
        &env,
    )
    .current_dir(c.working_dir.as_deref().unwrap_or("/"))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap_or_else(|e| panic!("container {}: cannot run {:?}: {e}", c.name, argv[0]));
    let pgid = child.id();
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pgid}")])
                .status();
            let _ = child.wait();
            panic!(
                "container {} did not finish in {limit:?}\n--- stdout\n{}\n--- stderr\n{}",
                c.name,
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The container's process 1 is gone: the kernel has ended the rest of its PID namespace.
    Ran {
        code: status.code().unwrap_or(128),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

#[test]
fn expansion_and_mounts_follow_kubernetes() {
    let env = vec![("A".to_string(), "x".to_string())];
    assert_eq!(expand("$(A)/$(B)/$$(A)/$", &env), "x/$(B)/$(A)/$");
    let m = vec![("/scripts".to_string(), PathBuf::from("/tmp/cm"))];
    assert_eq!(
        remount(
            "psql -f /scripts/mask.sql < '/scripts' /scriptsx a/scripts",
            &m
        ),
        "psql -f /tmp/cm/mask.sql < '/tmp/cm' /scriptsx a/scripts"
    );
}
