//! The local Kubernetes control plane of real components that `scripts/localkube.sh` starts
//! (kube-apiserver with token authentication and RBAC, etcd, kube-controller-manager,
//! kube-scheduler, KWOK, snapshot-controller, csi-provisioner and csi-snapshotter over
//! snapstage's host-path CSI driver), seen from Rust tests.
//!
//! Setup and inspection go through the real `kubectl` of the same release as the cluster admin:
//! an independent client, so a test never reads back what our own client wrote through our own
//! code. The functions themselves run with their own users (`snapstage:<function>` groups), so
//! `infra/k8s/rbac.yaml` is enforced by the API server.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::testkit::skip;

/// The running control plane: kubeconfig files and the `kubectl` built with it.
#[derive(Debug, Clone)]
pub struct LocalKube {
    admin: PathBuf,
    kubectl: PathBuf,
    /// Where the host-path CSI driver keeps volumes (`volumes/<handle>/`) and snapshots.
    pub csi_root: PathBuf,
}

/// The variable `scripts/localkube.sh env` sets to the admin kubeconfig.
pub const ADMIN_KUBECONFIG_ENV: &str = "SNAPSTAGE_KUBECONFIG";

impl LocalKube {
    /// The control plane from the environment `scripts/with-services.sh` exports, or `None` after
    /// printing `SKIP` (a failure under `CI=true`: see [`skip`]).
    pub fn get(test: &str) -> Option<Self> {
        let var = |n: &str| {
            std::env::var_os(n)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        match (
            var(ADMIN_KUBECONFIG_ENV),
            var("SNAPSTAGE_KUBECTL"),
            var("SNAPSTAGE_KUBE_CSI_ROOT"),
        ) {
            (Some(admin), Some(kubectl), Some(csi_root)) if admin.is_file() => Some(Self {
                admin,
                kubectl,
                csi_root,
            }),
            _ => {
                skip(&format!(
                    "{test}: the local Kubernetes control plane is not running \
                     ({ADMIN_KUBECONFIG_ENV} unset; run `make test`, or scripts/localkube.sh start; \
                     eval \"$(scripts/localkube.sh env)\")"
                ));
                None
            }
        }
    }

    /// The admin kubeconfig (system:masters).
    pub fn admin_kubeconfig(&self) -> String {
        self.admin.display().to_string()
    }

    /// The kubeconfig of `function`'s own user, in group `snapstage:<function>`.
    pub fn kubeconfig(&self, function: &str) -> String {
        let var = format!(
            "SNAPSTAGE_KUBECONFIG_{}",
            function.to_uppercase().replace('-', "_")
        );
        std::env::var(&var).unwrap_or_else(|_| panic!("{var} is not set by localkube.sh env"))
    }

    /// Runs `kubectl` as the admin; its stdout, or the panic of a failed test with its stderr.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.try_kubectl(args, stdin)
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }

    /// Runs `kubectl` as the admin: stdout, or stderr as the error.
    pub fn try_kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.kubectl.display()))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|e| format!("write stdin: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Server-side applies `docs` (JSON or YAML) as the admin.
    pub fn apply(&self, docs: &str) {
        self.kubectl(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                "snapstage-test-admin",
                "-f",
                "-",
            ],
            Some(docs),
        );
    }

    /// One object as JSON, or `None` when it does not exist.
    pub fn get_json(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let mut args = vec!["get", resource, name, "-o", "json", "--ignore-not-found"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        let out = self.kubectl(&args, None);
        if out.trim().is_empty() {
            return None;
        }
        Some(serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl get {name}: {e}")))
    }

    /// The items of a list, as JSON.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let mut args = vec!["get", resource, "-o", "json"];
        match namespace {
            Some(ns) => args.extend(["-n", ns]),
            None => args.push("--all-namespaces"),
        }
        let out: Value = serde_json::from_str(&self.kubectl(&args, None))
            .unwrap_or_else(|e| panic!("kubectl get {resource}: {e}"));
        out["items"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `probe` until it returns `Some`, for at most `limit` (a bounded wait: the panic
    /// names what never happened).
    pub fn eventually<T>(
        &self,
        what: &str,
        limit: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let end = Instant::now() + limit;
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(Instant::now() < end, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The directory the host-path CSI driver keeps the volume of PV `pv` in.
    pub fn volume_dir(&self, pv: &str) -> PathBuf {
        let pv = self
            .get_json("pv", None, pv)
            .unwrap_or_else(|| panic!("PV {pv} does not exist"));
        let handle = pv["spec"]["csi"]["volumeHandle"]
            .as_str()
            .unwrap_or_else(|| panic!("PV is not a CSI volume: {pv}"));
        self.csi_root.join("volumes").join(handle)
    }

    /// The directory of the volume bound to PVC `namespace/name` (waits until it is Bound).
    pub fn pvc_volume_dir(&self, namespace: &str, name: &str) -> PathBuf {
        let pv = self.eventually(
            &format!("PVC {namespace}/{name} Bound"),
            Duration::from_secs(60),
            || {
                let pvc = self.get_json("pvc", Some(namespace), name)?;
                (pvc["status"]["phase"] == "Bound")
                    .then(|| pvc["spec"]["volumeName"].as_str().map(String::from))
                    .flatten()
            },
        );
        self.volume_dir(&pv)
    }
}
