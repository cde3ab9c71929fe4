//! The CI applications' built-in templates: Jenkins and Sonatype Nexus Repository as staging
//! environments on their restored volumes (engine `jenkins`, `nexus`).
//!
//! Each is a YAML template compiled into the binary and rendered by the same code as a user's
//! `template` ([`crate::staging::render::template`]): the same placeholders, every document
//! checked against its Kubernetes type, snapstage's labels added, the restricted Pod Security
//! Standard of the namespace. A user `template` replaces it (for a custom image with plugins,
//! say); the placeholders then carry the application's port, user and data directory.
//!
//! | engine | objects | mounts the PVC at | user | readiness (HTTP) |
//! | --- | --- | --- | --- | --- |
//! | `jenkins` | ConfigMap `jenkins-quiet-start`, Service `jenkins` (8080 http, 50000 agents), StatefulSet `jenkins` | `/var/jenkins_home` (`JENKINS_HOME`) | 1000 | `GET /login` |
//! | `nexus` | Service `nexus` (8081), StatefulSet `nexus` | `/nexus-data` | 200 | `GET /service/rest/v1/status/writable` |
//!
//! Jenkins starts in quiet-down (an init script, see `apps/jenkins.yaml`): a copy of a
//! production controller runs no job until someone cancels the quiet-down.

use crate::error::Result;
use crate::staging::engine::Engine;
use crate::staging::params::template::TemplateText;

/// The Jenkins controller's template.
pub const JENKINS: &str = include_str!("apps/jenkins.yaml");
/// Nexus Repository's template.
pub const NEXUS: &str = include_str!("apps/nexus.yaml");

/// The built-in template of an application engine; `None` for a database (snapstage's own
/// Service and StatefulSet).
pub fn template(engine: Engine) -> Result<Option<TemplateText>> {
    let text = match engine {
        Engine::Jenkins => JENKINS,
        Engine::Nexus => NEXUS,
        Engine::Postgresql | Engine::Mysql | Engine::Mongodb => return Ok(None),
    };
    TemplateText::new(text.to_string(), format!("built-in {engine} template")).map(Some)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use serde_json::{Value, json};

    use crate::staging::fixtures::{plan_for, try_plan};
    use crate::staging::plan::Plan;
    use crate::staging::render::Workload;
    use crate::staging::render::template::TemplateObject;

    fn stateful_set(p: &Plan) -> StatefulSet {
        let Workload::Template(objects) = &p.rendered.workload else {
            panic!("an application is a built-in template")
        };
        objects
            .iter()
            .find_map(|o| match o {
                TemplateObject::StatefulSet(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap()
    }

    fn err(v: Value) -> String {
        try_plan(v).unwrap_err().to_string()
    }

    #[test]
    fn jenkins_runs_on_its_home_probed_on_login_and_quiet() {
        let p = plan_for(json!({"engine": "jenkins", "volumeId": "vol-0123456789abcdef0"}));
        let Workload::Template(objects) = &p.rendered.workload else {
            panic!("a template")
        };
        let kinds: Vec<(&str, &str)> = objects.iter().map(|o| (o.kind(), o.name())).collect();
        assert_eq!(
            kinds,
            [
                ("ConfigMap", "jenkins-quiet-start"),
                ("Service", "jenkins"),
                ("StatefulSet", "jenkins")
            ]
        );
        let sts = stateful_set(&p);
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(
            (psc.run_as_user, psc.run_as_group, psc.fs_group),
            (Some(1000), Some(1000), Some(1000))
        );
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("jenkins/jenkins:2.479.3-lts-jdk17")
        );
        let sc = c.security_context.clone().unwrap();
        assert_eq!(
            (sc.allow_privilege_escalation, sc.capabilities.unwrap().drop),
            (Some(false), Some(vec!["ALL".to_string()]))
        );
        for probe in [&c.startup_probe, &c.readiness_probe, &c.liveness_probe] {
            let get = probe.clone().unwrap().http_get.unwrap();
            assert_eq!(get.path.as_deref(), Some("/login"));
        }
        let startup = c.startup_probe.clone().unwrap();
        assert!(
            startup.period_seconds.unwrap() * startup.failure_threshold.unwrap() >= 20 * 60,
            "a large home gets 20 minutes"
        );
        let env = c.env.clone().unwrap();
        assert!(
            env.iter().any(
                |e| e.name == "JENKINS_HOME" && e.value.as_deref() == Some("/var/jenkins_home")
            )
        );
        assert!(env.iter().any(|e| e.name == "JAVA_OPTS"
            && e.value.as_deref() == Some("-Djenkins.install.runSetupWizard=false")));
        let mounts = c.volume_mounts.clone().unwrap();
        assert_eq!(mounts[0].mount_path, "/var/jenkins_home");
        assert_eq!(
            mounts[1].mount_path,
            "/usr/share/jenkins/ref/init.groovy.d/snapstage-quiet-start.groovy.override"
        );
        let claim = pod.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap();
        assert_eq!(claim.claim_name, "staging-db-data");
        let TemplateObject::ConfigMap(cm) = &objects[0] else {
            panic!()
        };
        let script = &cm.data.as_ref().unwrap()["snapstage-quiet-start.groovy.override"];
        assert!(script.contains("Jenkins.get().doQuietDown()"), "{script}");
        // snapstage's labels, as on a user template.
        let labels = sts.metadata.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "snapstage");
        assert_eq!(labels["app.kubernetes.io/component"], "application");
    }

    #[test]
    fn nexus_is_ready_when_it_can_write() {
        let p =
            plan_for(json!({"engine": "nexus", "backend": "pure-csi", "volumeId": "nexus-blobs"}));
        let pod = stateful_set(&p).spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.security_context.unwrap().run_as_user, Some(200));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("sonatype/nexus3:3.75.1"));
        let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.clone().unwrap().http_get.unwrap().path.unwrap()
        };
        assert_eq!(path(&c.readiness_probe), "/service/rest/v1/status/writable");
        assert_eq!(path(&c.startup_probe), "/service/rest/v1/status");
        assert_eq!(path(&c.liveness_probe), "/service/rest/v1/status");
        assert_eq!(
            c.volume_mounts.clone().unwrap()[0].mount_path,
            "/nexus-data"
        );
    }

    #[test]
    fn an_application_publishes_its_url_and_no_credentials() {
        let p = plan_for(json!({"engine": "nexus", "volumeId": "vol-0123456789abcdef0"}));
        let ns = crate::kube::names::derived_namespace("direct/fixture");
        let o = p.outputs();
        assert_eq!(o["Service"], "nexus");
        assert_eq!(o["Endpoint"], format!("nexus.{ns}.svc.cluster.local:8081"));
        assert_eq!(
            o["Url"],
            format!("http://nexus.{ns}.svc.cluster.local:8081/")
        );
        assert_eq!(
            (o["Port"].as_str(), o["Engine"].as_str()),
            ("8081", "nexus")
        );
        assert!(!o.contains_key("SecretName"), "{o:?}");
        assert!(p.rendered.secret.is_none());
        assert!(p.requests.iter().all(|r| r.kind != "Secret"));
        crate::job::codepipeline::validate_output_variables(&o).unwrap();
        let db = plan_for(json!({"volumeId": "vol-0123456789abcdef0"})).outputs();
        assert!(db.contains_key("SecretName") && !db.contains_key("Url"));
    }

    #[test]
    fn an_application_lives_two_weeks_unless_told_and_waits_longer() {
        let p = plan_for(json!({"engine": "jenkins", "volumeId": "vol-0123456789abcdef0"}));
        assert_eq!(p.expires_at, "2025-06-15T12:00:00Z");
        assert_eq!(p.spec.ready_timeout_minutes, 30);
        assert!(!p.spec.reset_credentials);
        let p = plan_for(
            json!({"engine": "jenkins", "volumeId": "vol-0123456789abcdef0", "ttlDays": 90}),
        );
        assert_eq!(p.expires_at, "2025-08-30T12:00:00Z");
        assert_eq!(p.spec.ttl_hours, 2160);
        let p = plan_for(json!({"volumeId": "vol-0123456789abcdef0", "ttlDays": 3}));
        assert_eq!(
            p.expires_at, "2025-06-04T12:00:00Z",
            "days for a database too"
        );
        let db = plan_for(json!({"volumeId": "vol-0123456789abcdef0"}));
        assert_eq!((db.spec.ttl_hours, db.spec.ready_timeout_minutes), (24, 15));
    }

    #[test]
    fn lifetime_takes_hours_or_days_never_both() {
        let base = json!({"engine": "nexus", "volumeId": "vol-0123456789abcdef0"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        let mut both = with("ttlHours", json!(48));
        both["ttlDays"] = json!(2);
        let e = err(both);
        assert!(
            e.starts_with("ttlDays: give exactly one of ttlHours and ttlDays, got both: ttlHours 48, ttlDays 2"),
            "{e}"
        );
        for bad in [json!(0), json!(91)] {
            let e = err(with("ttlDays", bad.clone()));
            assert!(
                e.starts_with("request.ttlDays: expected a whole number of days from 1 to 90"),
                "{e}"
            );
        }
        assert_eq!(plan_for(with("ttlHours", json!(2160))).spec.ttl_hours, 2160);
    }

    #[test]
    fn an_application_refuses_what_only_a_database_has() {
        let base = || json!({"engine": "jenkins", "volumeId": "vol-0123456789abcdef0"});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            err(b)
        };
        let e = with("resetCredentials", json!(true));
        assert!(
            e.starts_with("resetCredentials: engine jenkins keeps its own users"),
            "{e}"
        );
        let mut off = base();
        off["resetCredentials"] = json!(false);
        assert!(!plan_for(off).spec.reset_credentials);
        let e = with("databaseUser", json!("admin"));
        assert!(
            e.starts_with("databaseUser: engine jenkins has no database user"),
            "{e}"
        );
        let e = with("masking", json!({"image": "alpine", "command": ["true"]}));
        assert!(
            e.starts_with("masking: a masking Job connects to a database"),
            "{e}"
        );
        let e = with("migration", json!({"image": "alpine", "command": ["true"]}));
        assert!(e.starts_with("migration: "), "{e}");
    }

    #[test]
    fn every_import_style_serves_both_applications() {
        for engine in ["jenkins", "nexus"] {
            for (source, claim_pv) in [
                (
                    json!({"backend": "ebs", "volumeId": "vol-0123456789abcdef0"}),
                    (true, true),
                ),
                (
                    json!({"backend": "pure-csi", "volumeId": "pod1::ci-home"}),
                    (true, true),
                ),
                (
                    json!({"backend": "px-csi", "volumeId": "realm::pod::ci-home"}),
                    (true, false),
                ),
                (
                    json!({"backend": "csi", "snapshotName": "ci-snap"}),
                    (true, false),
                ),
                (
                    json!({"backend": "csi", "pvcName": "restored-ci"}),
                    (false, false),
                ),
            ] {
                let mut req = source.clone();
                req["engine"] = json!(engine);
                let p = plan_for(req);
                let r = &p.rendered;
                assert_eq!(
                    (r.claim.is_some(), r.persistent_volume.is_some()),
                    claim_pv,
                    "{engine} {source}"
                );
                let pod = stateful_set(&p).spec.unwrap().template.spec.unwrap();
                let claim = pod
                    .volumes
                    .unwrap()
                    .into_iter()
                    .find_map(|v| v.persistent_volume_claim)
                    .unwrap();
                assert_eq!(claim.claim_name, r.claim_name, "{engine} {source}");
            }
        }
    }

    #[test]
    fn an_application_is_isolated_as_a_database_is() {
        let p = plan_for(json!({"engine": "jenkins", "volumeId": "vol-0123456789abcdef0"}));
        let n = &p.rendered.network;
        let names: Vec<&str> = n
            .isolation
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["staging-db-isolation", "staging-db-egress"]);
        let egress = n.isolation[1].spec.clone().unwrap();
        let sel = egress.pod_selector.unwrap().match_labels.unwrap();
        // The egress policy selects exactly the Jenkins pod: its template's labels.
        let pod_labels = stateful_set(&p)
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        assert!(!sel.is_empty());
        for (k, v) in &sel {
            assert_eq!(pod_labels.get(k), Some(v), "{k}");
        }
        let rule = &egress.egress.unwrap()[0];
        assert!(rule.to.is_none(), "DNS only, to anywhere");
        let ports: Vec<i32> = rule
            .ports
            .iter()
            .flatten()
            .map(|p| match p.port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i)) => i,
                _ => 0,
            })
            .collect();
        assert_eq!(ports, [53, 53]);
        let access = n.access.clone().unwrap().spec.unwrap();
        assert_eq!(access.pod_selector.unwrap().match_labels.unwrap(), sel);
        let port = access.ingress.unwrap()[0].ports.clone().unwrap()[0].clone();
        assert_eq!(
            port.port,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080))
        );
    }

    #[test]
    fn a_request_s_ttl_days_replaces_the_stack_default_ttl_hours() {
        use crate::job::params::{Layer, merge};
        use crate::staging::fixtures::{NOW, execution};
        let layer = |source, v: Value| Layer {
            source,
            values: v.as_object().unwrap().clone(),
        };
        let defaults = layer(
            "SNAPSTAGE_DEFAULTS",
            json!({"ttlHours": 24, "engine": "postgresql"}),
        );
        let request = layer(
            "request",
            json!({"engine": "jenkins", "volumeId": "vol-0123456789abcdef0", "ttlDays": 21}),
        );
        let params = merge(&[defaults.clone(), request]).unwrap();
        let p = crate::staging::plan(params, &execution("direct/fixture"), NOW.parse().unwrap())
            .unwrap();
        assert_eq!(p.spec.ttl_hours, 21 * 24);
        // Both in one request stay both, and are refused.
        let both = layer(
            "request",
            json!({"volumeId": "vol-0123456789abcdef0", "ttlDays": 2, "ttlHours": 5}),
        );
        let params = merge(&[defaults, both]).unwrap();
        let e = crate::staging::plan(params, &execution("direct/fixture"), NOW.parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ttlDays: give exactly one"), "{e}");
    }
}
