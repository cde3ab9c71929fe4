use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::*;
use crate::error::FailureKind;

/// A self-signed cluster CA (EC P-256, CN=kubernetes), as an API server's CA looks.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBgTCCASegAwIBAgIUd6feUP4a6wzaVkPUbyPyzHeHuKYwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKa3ViZXJuZXRlczAgFw0yNjExMjEyMzAyMTFaGA8yMTI2MTAy
ODIzMDIxMVowFTETMBEGA1UEAwwKa3ViZXJuZXRlczBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABLy94pEhzVEGa/JfkBTl1S/v8fcQx2wH3Xy/WJ+dZEVS9LwcYejr
qyAnYUU+dtvQpXwrA+SSCwoEfkgxi+f1DwyjUzBRMB0GA1UdDgQWBBSsSQzImdTA
NtwNLbA6Iy2VD46MvjAfBgNVHSMEGDAWgBSsSQzImdTANtwNLbA6Iy2VD46MvjAP
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQC5wTczJXTYNMN5DyOa
rSMCNYzW3vHXm7kJ+v8flswv1wIgcru5YwKeYWN7q/V4L2CQR3xrYI+Hj4irTosa
BbARYgc=
-----END CERTIFICATE-----
";

const ENDPOINT: &str = "https://0123456789ABCDEF0123456789ABCDEF.gr7.us-east-1.eks.amazonaws.com";

fn ca_der() -> Vec<u8> {
    let body: String = CA_PEM.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

fn parse(v: serde_json::Value) -> std::result::Result<ClusterConfig, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

#[test]
fn each_access_mode_parses_from_its_documented_shape() {
    assert_eq!(
        parse(json!({"eks": {"name": "staging", "region": "eu-west-1"}})).unwrap(),
        ClusterConfig::Eks(EksCluster {
            name: "staging".into(),
            region: Some("eu-west-1".into())
        })
    );
    assert_eq!(
        parse(json!({"eks": {"name": "staging"}})).unwrap(),
        ClusterConfig::Eks(EksCluster {
            name: "staging".into(),
            region: None
        })
    );
    assert_eq!(
        parse(json!({"kubeconfigSecret": "arn:aws:secretsmanager:us-east-1:123456789012:secret:onprem-kube"})).unwrap(),
        ClusterConfig::KubeconfigSecret(
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:onprem-kube".into()
        )
    );
    assert_eq!(
        parse(json!({"kubeconfigFile": "/etc/kube/config"})).unwrap(),
        ClusterConfig::KubeconfigFile("/etc/kube/config".into())
    );
    assert_eq!(parse(json!("inCluster")).unwrap(), ClusterConfig::InCluster);

    let e = parse(json!({"gke": {"name": "x"}})).unwrap_err();
    assert!(
        e.contains("unknown variant `gke`") && e.contains("eks") && e.contains("inCluster"),
        "{e}"
    );
    let e = parse(json!({"eks": {"name": "x", "role": "y"}})).unwrap_err();
    assert!(e.contains("unknown field `role`"), "{e}");
}

#[test]
fn summaries_name_the_cluster_never_a_credential() {
    let c = parse(json!({"eks": {"name": "staging", "region": "eu-west-1"}})).unwrap();
    assert_eq!(c.describe(), "EKS cluster staging (eu-west-1)");
    assert_eq!(
        ClusterConfig::InCluster.describe(),
        "the in-cluster service account"
    );
}

fn described(endpoint: Option<&str>, ca: Option<&str>) -> aws_sdk_eks::types::Cluster {
    let mut b = aws_sdk_eks::types::Cluster::builder()
        .name("staging")
        .status(aws_sdk_eks::types::ClusterStatus::Active);
    if let Some(e) = endpoint {
        b = b.endpoint(e);
    }
    if let Some(c) = ca {
        b = b.certificate_authority(aws_sdk_eks::types::Certificate::builder().data(c).build());
    }
    b.build()
}

#[tokio::test]
async fn eks_client_config_is_assembled_from_the_describe_cluster_answer() {
    let ca = STANDARD.encode(CA_PEM);
    let ep = eks::endpoint_of("staging", &described(Some(ENDPOINT), Some(&ca))).unwrap();
    assert_eq!(ep.url, ENDPOINT);
    let token = "k8s-aws-v1.aHR0cHM6Ly9zdHMudXMtZWFzdC0xLmFtYXpvbmF3cy5jb20v";
    let config = eks::config_from(&ep, token).await.unwrap();
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        ENDPOINT
    );
    assert_eq!(
        config.root_cert.clone().unwrap(),
        vec![ca_der()],
        "the CA from DescribeCluster, and only it, is trusted"
    );
    assert!(config.auth_info.token.is_some(), "bearer token set");
    assert!(!config.accept_invalid_certs);
    assert!(
        !format!("{config:?}").contains(token),
        "the token is not in Debug output"
    );
    // Building the client proves the TLS stack: one crypto provider (ring), no panic.
    let client = client(config, &ClusterConfig::InCluster).unwrap();
    assert_eq!(client.default_namespace(), "default");
}

#[test]
fn describe_cluster_answers_without_endpoint_or_ca_are_explained() {
    let ca = STANDARD.encode(CA_PEM);
    let e = eks::endpoint_of("staging", &described(None, Some(&ca))).unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::SystemUnavailable);
    assert!(e.to_string().contains("no API endpoint yet"), "{e}");
    let e = eks::endpoint_of("staging", &described(Some(ENDPOINT), None)).unwrap_err();
    assert!(
        e.to_string().contains("no certificateAuthority.data"),
        "{e}"
    );
    let e =
        eks::endpoint_of("staging", &described(Some("http://10.0.0.1"), Some(&ca))).unwrap_err();
    assert!(
        e.to_string().contains("expected an https:// endpoint"),
        "{e}"
    );
}

#[tokio::test]
async fn a_bad_ca_is_a_configuration_error() {
    let ep = eks::Endpoint {
        name: "staging".into(),
        url: ENDPOINT.into(),
        certificate_authority: "not base64!".into(),
    };
    let e = eks::config_from(&ep, "k8s-aws-v1.x").await.unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    assert!(e.to_string().contains("EKS cluster staging"), "{e}");
}

#[tokio::test]
async fn kubeconfig_text_gives_its_current_context() {
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: onprem
  cluster:
    server: https://k8s.onprem.example:6443
    certificate-authority-data: {}
users:
- name: deployer
  user:
    token: sekret-token-value
contexts:
- name: staging
  context: {{cluster: onprem, user: deployer, namespace: staging}}
current-context: staging
",
        STANDARD.encode(CA_PEM)
    );
    let config = kubeconfig::from_yaml(&yaml, "test").await.unwrap();
    assert_eq!(config.cluster_url.host(), Some("k8s.onprem.example"));
    assert_eq!(config.default_namespace, "staging");
    assert_eq!(config.root_cert.clone().unwrap(), vec![ca_der()]);
    client(config, &ClusterConfig::KubeconfigFile("test".into())).unwrap();

    let e = kubeconfig::from_yaml(
        "clusters: [sekret-token-value",
        "cluster.kubeconfigSecret s",
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("cluster.kubeconfigSecret s: not a kubeconfig"),
        "{msg}"
    );
    assert!(!msg.contains("sekret"), "never echoes the content: {msg}");
}

#[tokio::test]
async fn a_missing_kubeconfig_file_is_named() {
    let e = kubeconfig::from_file("/nonexistent/snapstage/kubeconfig")
        .await
        .unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    assert!(
        e.to_string().starts_with(
            "cluster.kubeconfigFile /nonexistent/snapstage/kubeconfig: cannot read it"
        ),
        "{e}"
    );
}

fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
    kube::Error::Api(
        kube::core::Status::failure(message, reason)
            .with_code(code)
            .boxed(),
    )
}

#[test]
fn api_errors_map_to_failure_types_and_say_what_to_do() {
    let e = kube_error(
        "reading Namespace x",
        api_error(401, "Unauthorized", "Unauthorized"),
    );
    assert_eq!(e.failure_kind(), FailureKind::PermissionError);
    assert!(
        e.to_string()
            .starts_with("kubernetes: permission denied: reading Namespace x: 401 Unauthorized"),
        "{e}"
    );
    let e = kube_error(
        "applying Secret x/y",
        api_error(
            403,
            "Forbidden",
            "secrets \"y\" is forbidden: User \"arn:aws:sts::1:assumed-role/r\" cannot patch resource \"secrets\"",
        ),
    );
    assert_eq!(e.failure_kind(), FailureKind::PermissionError);
    assert!(e.to_string().contains("infra/k8s/rbac.yaml"), "{e}");
    let kind = |code, reason| kube_error("x", api_error(code, reason, "m")).failure_kind();
    assert_eq!(kind(404, "NotFound"), FailureKind::ConfigurationError);
    assert_eq!(kind(409, "Conflict"), FailureKind::JobFailed);
    assert_eq!(kind(422, "Invalid"), FailureKind::ConfigurationError);
    assert_eq!(kind(429, "TooManyRequests"), FailureKind::SystemUnavailable);
    assert_eq!(
        kind(503, "ServiceUnavailable"),
        FailureKind::SystemUnavailable
    );
    assert!(
        kube_error("applying StatefulSet a/b", api_error(409, "Conflict", "m"))
            .to_string()
            .contains("conflict")
    );
}

#[test]
fn an_api_error_keeps_the_clients_error_as_its_cause() {
    let e = kube_error(
        "reading Namespace x",
        api_error(404, "NotFound", "namespaces \"x\" not found"),
    );
    let cause = std::error::Error::source(&e).expect("the kube client's error is kept");
    assert!(cause.is::<kube::Error>(), "{cause}");
    assert!(
        e.chain().contains("namespaces \"x\" not found"),
        "{}",
        e.chain()
    );
}

#[test]
fn the_crypto_provider_is_ring_and_installing_twice_is_harmless() {
    install_crypto_provider();
    install_crypto_provider();
    let p = rustls::crypto::CryptoProvider::get_default().unwrap();
    let ring = rustls::crypto::ring::default_provider();
    assert_eq!(p.cipher_suites.len(), ring.cipher_suites.len());
}

#[test]
fn clients_have_bounded_timeouts_and_no_unbounded_retry_layer() {
    let c = tuned(kube::Config::new("https://127.0.0.1:6443".parse().unwrap()));
    assert_eq!(c.connect_timeout, Some(CONNECT_TIMEOUT));
    assert_eq!(c.read_timeout, Some(READ_TIMEOUT));
    assert!(
        !c.default_retry,
        "kube's default retry waits up to 1000 s per try; api::retrying is bounded"
    );
}
