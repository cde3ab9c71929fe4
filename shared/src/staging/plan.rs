//! A deploy's plan: the validated [`Spec`], the rendered and checked objects, and the
//! server-side apply requests that would create them. Plan mode reports it; a deploy applies it.

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::job::contract::{Execution, Outcome};
use crate::staging::apply::{self, ApplyRequest};
use crate::staging::params::Params;
use crate::staging::render::{self, Rendered, network};
use crate::staging::spec::Spec;
use crate::staging::validate;

/// The `Mode` output of plan mode.
pub const MODE_PLAN: &str = "plan";
/// Why a run only plans when no cluster is configured.
pub const NO_CLUSTER: &str =
    "no cluster is configured: set the cluster parameter (e.g. in SNAPSTAGE_DEFAULTS) to apply";
/// Why a run only plans with `dryRun`.
pub const DRY_RUN: &str = "dryRun is true";
/// A validated plan: the objects and the requests that would apply them.
#[derive(Debug, Clone)]
pub struct Plan {
    pub spec: Spec,
    pub rendered: Rendered,
    pub requests: Vec<ApplyRequest>,
    /// RFC 3339, when the namespace may be deleted.
    pub expires_at: String,
}

/// Validates the parameters, renders the objects, checks them and plans their apply requests.
pub fn plan(params: Params, execution: &Execution, now: Timestamp) -> Result<Plan> {
    let spec = params.validate(execution)?;
    let expires = now
        .checked_add(SignedDuration::from_hours(i64::from(spec.ttl_hours)))
        .map_err(|e| {
            Error::parameter("ttlHours", format!("now + ttlHours is out of range: {e}"))
        })?;
    Plan::build(spec, expires.as_second())
}

impl Plan {
    /// Renders, checks and plans `spec` with the namespace expiring at `expires` (Unix seconds).
    pub fn build(spec: Spec, expires: i64) -> Result<Plan> {
        let expires_at = Timestamp::from_second(expires)
            .map_err(|e| Error::Internal(format!("expiry time: {e}")))?
            .to_string();
        let mut rendered = render::render(&spec, &expires_at)?;
        let (_, port) = rendered.endpoint(spec.engine);
        rendered.network = render::NetworkPolicies {
            isolation: network::isolation(&spec),
            access: network::access(&spec, port),
        };
        validate::check(&rendered)?;
        let requests = apply::apply_requests(&rendered, &spec.field_manager)?;
        Ok(Plan {
            spec,
            rendered,
            requests,
            expires_at,
        })
    }

    /// The same plan with another expiry (an earlier invocation of the same run set it).
    pub fn with_expiry(&self, expires: Timestamp) -> Result<Plan> {
        Plan::build(self.spec.clone(), expires.as_second())
    }

    pub fn manifest_count(&self) -> usize {
        self.requests.len()
    }

    pub fn port(&self) -> i32 {
        self.rendered.endpoint(self.spec.engine).1
    }

    /// The published Service: snapstage's, or the template's first.
    pub fn service_name(&self) -> String {
        self.rendered.endpoint(self.spec.engine).0
    }

    /// `<service>.<namespace>.svc.cluster.local:<port>`.
    pub fn endpoint(&self) -> String {
        format!(
            "{}.{}.svc.cluster.local:{}",
            self.service_name(),
            self.spec.namespace,
            self.port()
        )
    }

    /// `http://<service>.<namespace>.svc.cluster.local:<port>/`: where an application answers
    /// (Jenkins, Nexus); `None` for a database.
    pub fn url(&self) -> Option<String> {
        self.spec
            .engine
            .is_app()
            .then(|| format!("http://{}/", self.endpoint()))
    }

    /// The output variables (never credentials): `SecretName` only when there is a Secret (a
    /// database), `Url` only for an application.
    pub fn outputs(&self) -> BTreeMap<String, String> {
        let mut outputs = BTreeMap::from([
            ("Namespace".into(), self.spec.namespace.clone()),
            ("Service".into(), self.service_name()),
            ("Endpoint".into(), self.endpoint()),
            ("Port".into(), self.port().to_string()),
            (
                "SecretName".into(),
                crate::staging::objects::SECRET_NAME.into(),
            ),
            ("Engine".into(), self.spec.engine.as_str().into()),
            ("Mode".into(), MODE_PLAN.into()),
            ("ManifestCount".into(), self.manifest_count().to_string()),
            ("ExpiresAt".into(), self.expires_at.clone()),
        ]);
        if self.rendered.secret.is_none() {
            outputs.remove("SecretName");
        }
        if let Some(url) = self.url() {
            outputs.insert("Url".into(), url);
        }
        outputs
    }

    /// The plan-mode summary; `why` says why nothing is applied.
    pub fn summary(&self, why: &str) -> String {
        format!(
            "PLAN ONLY — no cluster changed: {} manifests rendered and validated ({why}). \
{} from {} {} → {}{} (namespace expires {}).",
            self.manifest_count(),
            self.spec.engine,
            self.spec.volume.backend().as_str(),
            self.spec.volume.source_name(),
            self.endpoint(),
            self.spec
                .template
                .as_ref()
                .map(|t| format!(", workload from {}", t.source))
                .unwrap_or_default(),
            self.expires_at,
        )
    }

    pub fn outcome(&self, why: &str) -> Outcome {
        Outcome::Done {
            summary: self.summary(why),
            outputs: self.outputs(),
        }
    }

    /// Logs the apply requests (method and path only, never bodies).
    pub fn log_requests(&self) {
        for r in &self.requests {
            tracing::info!(kind = %r.kind, name = %r.name, request = %r, "planned server-side apply");
        }
    }

    /// The manifests as one multi-document YAML stream (what `kubectl apply -f` would take).
    pub fn to_yaml(&self) -> Result<String> {
        fn doc<T: Serialize>(out: &mut String, obj: &T) -> Result<()> {
            let y = serde_yaml_ng::to_string(obj)
                .map_err(|e| Error::Internal(format!("rendering YAML: {e}")))?;
            out.push_str("---\n");
            out.push_str(&y);
            Ok(())
        }
        let r = &self.rendered;
        let mut out = String::new();
        doc(&mut out, &r.namespace)?;
        for policy in &r.network.isolation {
            doc(&mut out, policy)?;
        }
        if let Some(secret) = &r.secret {
            doc(&mut out, secret)?;
        }
        if let Some(pv) = &r.persistent_volume {
            doc(&mut out, pv)?;
        }
        if let Some(claim) = &r.claim {
            doc(&mut out, claim)?;
        }
        match &r.workload {
            render::Workload::Builtin(b) => {
                doc(&mut out, &b.service)?;
                doc(&mut out, &b.stateful_set)?;
            }
            render::Workload::Template(objects) => {
                for o in objects {
                    out.push_str("---\n");
                    out.push_str(&o.to_yaml()?);
                }
            }
        }
        // Applied once masking succeeded (at once without masking).
        if let Some(policy) = &r.network.access {
            doc(&mut out, policy)?;
        }
        Ok(out)
    }
}
