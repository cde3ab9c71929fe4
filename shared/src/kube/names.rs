//! Kubernetes naming rules (DNS-1123 / DNS-1035 names, label keys and values, quantities) and the
//! stable hashes that name a run's namespace and label its objects.

/// Longest DNS-1123 label (namespace, service names) and label value.
pub const MAX_LABEL: usize = 63;
/// Longest DNS-1123 subdomain (most object names).
pub const MAX_SUBDOMAIN: usize = 253;

/// Prefix of derived namespaces.
pub const NAMESPACE_PREFIX: &str = "snapstage-";
/// Hex digits of the execution hash in a derived namespace name.
const NAMESPACE_HASH_LEN: usize = 10;
/// Hex digits of the execution hash in the `snapstage.io/execution` label.
const LABEL_HASH_LEN: usize = 20;

fn hash_hex(key: &str) -> String {
    crate::digest::sha256_hex(key.as_bytes())
}

/// `snapstage-` + a short stable hash of the execution key: the same run (retries, duplicates,
/// continuations) always lands in the same namespace.
pub fn derived_namespace(execution_key: &str) -> String {
    format!(
        "{NAMESPACE_PREFIX}{}",
        &hash_hex(execution_key)[..NAMESPACE_HASH_LEN]
    )
}

/// The `snapstage.io/execution` label value: a hash, since execution keys hold `/` and can be long.
pub fn execution_label(execution_key: &str) -> String {
    hash_hex(execution_key)[..LABEL_HASH_LEN].to_string()
}

fn alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (namespaces).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.chars().all(|c| alnum_lower(c) || c == '-')
        && s.starts_with(alnum_lower)
        && s.ends_with(alnum_lower)
}

/// RFC 1035 label: a DNS-1123 label that starts with a letter (Service names).
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// RFC 1123 subdomain as Kubernetes checks it (most object names): dot-separated parts of
/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 253 characters in all. Unlike DNS, a part may be
/// longer than 63 (the API server accepts a 65-character PVC name without a dot, and
/// restore-to-staging makes such names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SUBDOMAIN
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| alnum_lower(c) || c == '-')
                && part.starts_with(alnum_lower)
                && part.ends_with(alnum_lower)
        })
}

fn label_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// A label value: empty, or at most 63 of `[A-Za-z0-9_.-]`, starting and ending alphanumeric.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= MAX_LABEL
            && s.chars().all(label_name_char)
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A label or annotation key: `[prefix/]name`, prefix a DNS-1123 subdomain, name a non-empty label value.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

/// Parses a Kubernetes quantity as used for storage (`20Gi`, `500Mi`, `1.5Ti`, `100G`, or plain
/// bytes) and returns its size in bytes. Exponent forms and milli-units are not storage sizes here.
pub fn quantity_bytes(s: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| s.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((s, 1.0));
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    let digits = |d: &str| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit());
    if !digits(whole) || frac.is_some_and(|f| !digits(f)) {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    Some(value * scale).filter(|b| b.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_namespaces_are_stable_distinct_dns1123_labels() {
        let a = derived_namespace("pipeline/exec-1/DeployStaging");
        assert_eq!(a, derived_namespace("pipeline/exec-1/DeployStaging"));
        assert_ne!(a, derived_namespace("pipeline/exec-2/DeployStaging"));
        assert!(a.starts_with("snapstage-"), "{a}");
        assert_eq!(a.len(), "snapstage-".len() + 10);
        assert!(is_dns1123_label(&a), "{a}");
        // Keys with characters no name allows still give a valid name.
        let odd = derived_namespace("direct/ÄÖ Ü/../x");
        assert!(is_dns1123_label(&odd), "{odd}");
        let label = execution_label("direct/ÄÖ Ü/../x");
        assert!(is_label_value(&label) && label.len() == 20, "{label}");
    }

    #[test]
    fn dns_names() {
        for ok in ["a", "snapstage-ab12", "0db", "a-b-c"] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        assert!(!is_dns1035_label("0db") && is_dns1035_label("db0"));
        assert!(is_dns1123_subdomain("snapstage-ab12.db-data"));
        assert!(!is_dns1123_subdomain("a..b") && !is_dns1123_subdomain(".a"));
        // A part longer than 63 is a valid object name (a PVC restore-to-staging names
        // `<pvc>-staging-<hash>`); only the whole is capped.
        let long = format!("{}-staging-50a3e274cf0840a121e6", "a".repeat(40));
        assert!(long.len() > 63 && is_dns1123_subdomain(&long));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        assert!(!is_dns1123_subdomain("a-") && !is_dns1123_subdomain("A"));
    }

    #[test]
    fn labels() {
        assert!(is_label_value("") && is_label_value("Prod_1.x") && is_label_value("0a"));
        assert!(
            !is_label_value("-a") && !is_label_value("a/b") && !is_label_value(&"x".repeat(64))
        );
        assert!(is_qualified_name("app.kubernetes.io/managed-by"));
        assert!(is_qualified_name("snapstage.io/expires-at") && is_qualified_name("role"));
        assert!(
            !is_qualified_name("Bad_Prefix/x")
                && !is_qualified_name("a/")
                && !is_qualified_name("a/b/c")
        );
    }

    #[test]
    fn storage_quantities() {
        assert_eq!(quantity_bytes("20Gi"), Some(20.0 * 1_073_741_824.0));
        assert_eq!(quantity_bytes("500Mi"), Some(500.0 * 1_048_576.0));
        assert_eq!(quantity_bytes("1.5Ti"), Some(1.5 * 1_099_511_627_776.0));
        assert_eq!(quantity_bytes("100G"), Some(1e11));
        assert_eq!(quantity_bytes("1024"), Some(1024.0));
        for bad in [
            "", "Gi", "ten", "10 Gi", "10GB", "10gi", "-1Gi", "1e3", "5m", ".5Gi", "5.Gi", "1,5Gi",
        ] {
            assert_eq!(quantity_bytes(bad), None, "{bad}");
        }
    }
}
