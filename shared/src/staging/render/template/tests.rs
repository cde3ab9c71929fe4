use serde_json::{Value, json};

use super::*;
use crate::kube::names;
use crate::staging::fixtures::{plan_for, try_plan};
use crate::staging::render::Workload;

/// The example shipped in infra/k8s/templates/.
const EXAMPLE: &str = include_str!("../../../../../infra/k8s/templates/postgresql.yaml");

fn request(template: &str) -> Value {
    json!({"volumeId": "vol-0123456789abcdef0", "template": {"inline": template}})
}

fn error(template: &str) -> String {
    try_plan(request(template)).unwrap_err().to_string()
}

/// A minimal valid template with `extra` YAML documents appended.
fn minimal(extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  selector: {{app: db}}
  ports: [{{port: 5432}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: db}}
spec:
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers:
        - name: db
          image: ${{IMAGE}}
          volumeMounts: [{{name: data, mountPath: /data}}]
      volumes:
        - name: data
          persistentVolumeClaim: {{claimName: "${{PVC_NAME}}"}}
{extra}"#
    )
}

#[test]
fn the_example_renders_into_typed_objects_in_the_staging_namespace() {
    let p = plan_for(request(EXAMPLE));
    let ns = names::derived_namespace("direct/fixture");
    let Workload::Template(objects) = &p.rendered.workload else {
        panic!("a template")
    };
    let kinds: Vec<(&str, &str)> = objects.iter().map(|o| (o.kind(), o.name())).collect();
    assert_eq!(
        kinds,
        [("Service", "postgres"), ("StatefulSet", "postgres")]
    );
    let TemplateObject::StatefulSet(sts) = &objects[1] else {
        panic!("a StatefulSet")
    };
    assert_eq!(sts.metadata.namespace.as_deref(), Some(ns.as_str()));
    let labels = sts.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "snapstage");
    assert_eq!(
        labels["snapstage.io/execution"],
        names::execution_label("direct/fixture")
    );
    let template = &sts.spec.as_ref().unwrap().template;
    let pod_labels = template.metadata.clone().unwrap().labels.unwrap();
    assert_eq!(pod_labels["app.kubernetes.io/name"], "postgres-staging");
    assert_eq!(pod_labels["app.kubernetes.io/managed-by"], "snapstage");
    let pod = template.spec.clone().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("postgres:17"));
    assert_eq!(c.ports.clone().unwrap()[0].container_port, 5432);
    let volume = pod.volumes.unwrap()[0]
        .persistent_volume_claim
        .clone()
        .unwrap();
    assert_eq!(volume.claim_name, "staging-db-data");
    let env = c.env.clone().unwrap();
    let pw = env.iter().find(|e| e.name == "POSTGRES_PASSWORD").unwrap();
    let sel = pw.value_from.clone().unwrap().secret_key_ref.unwrap();
    assert_eq!(
        (sel.name.as_str(), sel.key.as_str()),
        ("staging-db-credentials", "password")
    );
    assert_eq!(pod.security_context.unwrap().run_as_user, Some(999));

    // Outputs name the template's Service; the plan applies snapstage's objects, then the template's.
    let o = p.outputs();
    assert_eq!(o["Service"], "postgres");
    assert_eq!(
        o["Endpoint"],
        format!("postgres.{ns}.svc.cluster.local:5432")
    );
    let lines: Vec<String> = p
        .requests
        .iter()
        .map(|r| format!("{} {}", r.kind, r.name))
        .collect();
    assert_eq!(
        lines,
        [
            format!("Namespace {ns}"),
            // A template's pods are the user's: no egress policy for "the database pod".
            "NetworkPolicy staging-db-isolation".into(),
            "Secret staging-db-credentials".into(),
            format!("PersistentVolume {ns}-data"),
            "PersistentVolumeClaim staging-db-data".into(),
            "Service postgres".into(),
            "StatefulSet postgres".into(),
            "NetworkPolicy staging-db-access".into(),
        ]
    );
    assert_eq!(o["ManifestCount"], "8");
    assert!(p.to_yaml().unwrap().contains("claimName: staging-db-data"));
}

#[test]
fn placeholders_are_replaced_and_escaped() {
    let p = plan_for(
        json!({"backend": "csi", "pvcName": "restored", "engine": "mysql",
        "template": {"inline": minimal(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata:\n  ns: ${NAMESPACE}\n  engine: ${ENGINE}\n  port: \"${PORT}\"\n  path: ${MOUNT_PATH}\n  run: ${EXECUTION}\n  literal: $${NOT_A_PLACEHOLDER}\n  keys: ${SECRET_USERNAME_KEY}/${SECRET_PASSWORD_KEY}\n")}}),
    );
    let Workload::Template(objects) = &p.rendered.workload else {
        panic!("a template")
    };
    // ConfigMaps are applied first.
    let TemplateObject::ConfigMap(cm) = &objects[0] else {
        panic!("{objects:?}")
    };
    let data = cm.data.clone().unwrap();
    assert_eq!(data["ns"], names::derived_namespace("direct/fixture"));
    assert_eq!(data["engine"], "mysql");
    assert_eq!(data["port"], "3306");
    assert_eq!(data["path"], "/var/lib/mysql");
    assert_eq!(data["run"], names::execution_label("direct/fixture"));
    assert_eq!(data["literal"], "${NOT_A_PLACEHOLDER}");
    assert_eq!(data["keys"], "username/password");
    let Some((_, selector)) = objects[2].workload() else {
        panic!("a workload")
    };
    assert!(selector.match_labels.is_some());
    let (_, port) = endpoint(objects).unwrap();
    assert_eq!(port, 5432, "the template's Service port, not the engine's");
    // The existing PVC is what the pod mounts.
    let yaml = p.to_yaml().unwrap();
    assert!(yaml.contains("claimName: restored"), "{yaml}");
}

#[test]
fn unknown_placeholders_are_named_with_the_known_ones() {
    let e = error(&minimal(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: \"${DB_NAME}\", b: \"${namespace}\", c: \"${DB_NAME}\"}\n",
    ));
    assert!(
        e.starts_with("template: template.inline: unknown placeholder(s) ${DB_NAME}, ${namespace}; the placeholders are ${NAMESPACE}, ${PVC_NAME}"),
        "{e}"
    );
    let e = error(&minimal("---\n# ${NAMESPACE\n"));
    assert!(
        e.contains("line 24: \"${\" does not start a placeholder ${NAME}"),
        "{e}"
    );
}

#[test]
fn a_template_must_mount_the_restored_pvc() {
    let e = error("apiVersion: v1\nkind: Service\nmetadata: {name: db}\n");
    assert!(
        e.starts_with("template: template.inline: does not reference ${PVC_NAME}"),
        "{e}"
    );
    // Referenced, but only in a ConfigMap: no container mounts it.
    let t = minimal("").replace(
        "volumeMounts: [{name: data, mountPath: /data}]",
        "args: [\"x\"]",
    );
    let e = error(&t);
    assert!(
        e.contains("no container mounts the PVC staging-db-data"),
        "{e}"
    );
}

#[test]
fn kinds_outside_the_rbac_and_cluster_scoped_objects_are_refused() {
    let e = error(&minimal(
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: x}\n",
    ));
    assert!(
        e.contains("document 3 (ClusterRole \"x\"): ClusterRole is cluster-scoped"),
        "{e}"
    );
    let e = error(&minimal(
        "---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: x}\n",
    ));
    assert!(
        e.contains("batch/v1 CronJob is not allowed; a template may hold StatefulSet (apps/v1), Deployment (apps/v1), Service (v1), ConfigMap (v1), Secret (v1)"),
        "{e}"
    );
    let e = error(&minimal("---\nkind: ConfigMap\nmetadata: {name: x}\n"));
    assert!(e.contains("document 3 is not a Kubernetes object"), "{e}");
}

#[test]
fn objects_must_land_in_the_staging_namespace() {
    let e = error(&minimal(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: kube-system}\n",
    ));
    assert!(
        e.contains("metadata.namespace is \"kube-system\", not the staging namespace"),
        "{e}"
    );
    plan_for(request(&minimal(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: \"${NAMESPACE}\"}\n",
    )));
}

#[test]
fn documents_are_checked_against_their_kubernetes_type() {
    let e = error(&minimal("").replace(
        "image: ${IMAGE}",
        "image: ${IMAGE}\n          imagePullPolicyy: Always",
    ));
    assert!(
        e.contains("document 2 (Deployment \"db\"): unknown field(s) spec.template.spec.containers[0].imagePullPolicyy"),
        "{e}"
    );
    let e = error(&minimal("").replace("ports: [{port: 5432}]", "ports: [{port: five}]"));
    assert!(
        e.contains("document 1 (Service \"db\") does not match the Kubernetes type v1/Service"),
        "{e}"
    );
    let e = error(&minimal(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: 0db}\n",
    ));
    assert!(e.contains("Dns1035Label"), "{e}");
    let e = error(&minimal(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: db}\n",
    ));
    assert!(e.contains("a second Service named \"db\""), "{e}");
    let e = error(&minimal("---\n: [\n"));
    assert!(e.contains("document 3 is not YAML"), "{e}");
}

#[test]
fn snapstage_secret_workload_and_service_rules() {
    let e = error(&minimal(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {name: \"${SECRET_NAME}\"}\nstringData: {password: x}\n",
    ));
    assert!(
        e.contains("the Secret staging-db-credentials is snapstage's"),
        "{e}"
    );
    let no_service = minimal("").split_once("---\n").unwrap().1.to_string();
    let e = error(&no_service);
    assert!(e.contains("holds no Service with a port"), "{e}");
    let e = error(&minimal("").replace("matchLabels: {app: db}", "matchLabels: {app: other}"));
    assert!(
        e.contains("Deployment db: spec.selector.matchLabels must be set and match"),
        "{e}"
    );
}

#[test]
fn a_template_file_is_read_and_a_missing_one_named() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../infra/k8s/templates/postgresql.yaml"
    );
    let p = plan_for(json!({"volumeId": "vol-0123456789abcdef0", "template": {"file": path}}));
    assert_eq!(p.outputs()["Service"], "postgres");
    let e = try_plan(
        json!({"volumeId": "vol-0123456789abcdef0", "template": {"file": "/nonexistent/db.yaml"}}),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("template.file: cannot read \"/nonexistent/db.yaml\""),
        "{e}"
    );
    let e = try_plan(
        json!({"volumeId": "vol-0123456789abcdef0", "template": {"artifact": {"path": "db.yaml"}}}),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("template.artifact: a file inside an input artifact can only be read in a CodePipeline job"), "{e}");
    let e = try_plan(json!({"volumeId": "vol-0123456789abcdef0", "template": {"url": "x"}}))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("request.template: unknown variant `url`"),
        "{e}"
    );
}

#[test]
fn the_reset_is_the_last_init_container_of_the_workload_that_mounts_the_pvc() {
    let p = plan_for(request(EXAMPLE));
    let Workload::Template(objects) = &p.rendered.workload else {
        panic!("a template")
    };
    let TemplateObject::StatefulSet(sts) = &objects[1] else {
        panic!("a StatefulSet")
    };
    let pod = sts.spec.clone().unwrap().template.spec.unwrap();
    let db = &pod.containers[0];
    let init = pod.init_containers.clone().unwrap();
    let reset = init.last().unwrap();
    assert_eq!(reset.name, "credentials-reset");
    // The container that mounts the PVC: its image, mount, security context and PGDATA.
    assert_eq!(reset.image, db.image);
    assert_eq!(reset.volume_mounts, db.volume_mounts);
    assert_eq!(reset.security_context, db.security_context);
    assert_eq!(reset.resources, db.resources);
    let env = reset.env.clone().unwrap();
    let dir = env.iter().find(|e| e.name == "DB_DATA_DIR").unwrap();
    assert_eq!(
        dir.value.as_deref(),
        Some("/var/lib/postgresql/data/pgdata")
    );

    // A user's own init containers run first; a name clash is refused.
    let with_init = minimal("").replace(
        "      containers:\n",
        "      initContainers:\n        - {name: wait, image: busybox}\n      containers:\n",
    );
    let p = plan_for(request(&with_init));
    let Workload::Template(objects) = &p.rendered.workload else {
        panic!("a template")
    };
    let pod = objects
        .iter()
        .find_map(|o| o.workload())
        .and_then(|(t, _)| t.spec.clone())
        .unwrap();
    let names: Vec<String> = pod
        .init_containers
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["wait", "credentials-reset"]);
    let e = error(&with_init.replace("name: wait", "name: credentials-reset"));
    assert!(
        e.contains("an init container is already named credentials-reset"),
        "{e}"
    );

    // Off: nothing is added.
    let mut off = request(EXAMPLE);
    off["resetCredentials"] = json!(false);
    let Workload::Template(objects) = plan_for(off).rendered.workload else {
        panic!("a template")
    };
    let pod = objects
        .iter()
        .find_map(|o| o.workload())
        .and_then(|(t, _)| t.spec.clone())
        .unwrap();
    assert_eq!(pod.init_containers, None);
}
