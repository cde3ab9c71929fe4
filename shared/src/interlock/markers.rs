//! The marks snapstage reads and writes on cloud resources: its own tags (who made a resource,
//! for which run), and the production markers that make the interlock refuse a resource.
//! One definition for every layer: EBS tags, FlashArray tags, Kubernetes labels.

use crate::job::contract::Execution;

pub const TAG_MANAGED_BY: &str = "snapstage:managed-by";
pub const TAG_EXECUTION: &str = "snapstage:execution";
pub const TAG_SOURCE: &str = "snapstage:source";
pub const TAG_ROLE: &str = "snapstage:role";
pub const MANAGED_BY: &str = "snapstage";

/// Tag/label names (the part after any `prefix/` or `prefix:`) that mark an environment, and
/// the values that mean production. These always apply: production is refused by default.
pub const ENVIRONMENT_TAG_KEYS: [&str; 4] = ["env", "environment", "stage", "role"];
pub const PRODUCTION_VALUES: [&str; 3] = ["production", "prod", "prd"];
/// More production markers for an organisation's own tagging: `key=value` pairs separated by
/// commas (`value` `*` = any value), e.g. `tier=critical,cost-center=prod-db,pci=*`. They add to
/// the built-in ones, never replace them.
pub const PRODUCTION_MARKERS_ENV: &str = "SNAPSTAGE_PRODUCTION_MARKERS";

/// The tag value for an execution key: keys longer than a tag allows are shortened with a hash
/// so they stay unique and stable.
pub fn execution_tag(execution: &Execution) -> String {
    let key = &execution.key;
    if key.len() <= 200 {
        return key.clone();
    }
    let digest = crate::digest::sha256_hex(key.as_bytes());
    format!(
        "{}…{}",
        &key[..key.char_indices().nth(100).map_or(key.len(), |(i, _)| i)],
        &digest[..32]
    )
}

/// The markers from [`PRODUCTION_MARKERS_ENV`], read once per process.
fn extra_markers() -> &'static [(String, String)] {
    static MARKERS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    MARKERS.get_or_init(|| {
        std::env::var(PRODUCTION_MARKERS_ENV)
            .map(|v| parse_markers(&v))
            .unwrap_or_default()
    })
}

/// `key=value,key2=*` → pairs; an entry without `=` marks any value of that key.
pub fn parse_markers(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
            None => (e.to_string(), "*".to_string()),
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// True when tags/labels mark the resource as production: the built-in markers or the
/// configured ones ([`PRODUCTION_MARKERS_ENV`]).
pub fn is_production<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
    is_production_with(tags, extra_markers())
}

/// [`is_production`] with the extra markers given.
pub fn is_production_with<'a>(
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    extra: &[(String, String)],
) -> bool {
    tags.into_iter().any(|(k, v)| {
        let name = k.rsplit(['/', ':']).next().unwrap_or(k);
        let built_in = ENVIRONMENT_TAG_KEYS
            .iter()
            .any(|e| name.eq_ignore_ascii_case(e))
            && PRODUCTION_VALUES.iter().any(|p| v.eq_ignore_ascii_case(p));
        built_in
            || extra.iter().any(|(ek, ev)| {
                k.eq_ignore_ascii_case(ek) && (ev == "*" || v.eq_ignore_ascii_case(ev))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_markers_are_recognised_case_insensitively() {
        assert!(is_production([("Env", "Production")]));
        assert!(is_production([("stage", "prod")]));
        assert!(!is_production([("env", "staging")]));
        assert!(!is_production([("Name", "production-db")]));
        assert!(is_production([("snapstage:role", "production")]));
        assert!(is_production([("app.kubernetes.io/environment", "PRD")]));
    }

    #[test]
    fn configured_markers_add_to_the_built_in_ones() {
        let extra = parse_markers(" tier=critical, pci , cost-center = prod-db ,=x,");
        assert_eq!(
            extra,
            [
                ("tier".to_string(), "critical".to_string()),
                ("pci".to_string(), "*".to_string()),
                ("cost-center".to_string(), "prod-db".to_string()),
            ]
        );
        assert!(is_production_with([("Tier", "CRITICAL")], &extra));
        assert!(is_production_with([("pci", "anything")], &extra));
        assert!(!is_production_with([("tier", "low")], &extra));
        // The built-in markers still apply.
        assert!(is_production_with([("env", "prod")], &extra));
        assert!(!is_production_with([("tier", "critical")], &[]));
    }

    #[test]
    fn long_execution_keys_are_shortened_stably() {
        let ex = |k: &str| Execution {
            key: k.into(),
            origin: "direct".into(),
            pipeline: None,
            commit: None,
        };
        assert_eq!(execution_tag(&ex("p/e/a")), "p/e/a");
        let long = "x".repeat(500);
        let a = execution_tag(&ex(&long));
        assert!(a.len() < 256);
        assert_eq!(a, execution_tag(&ex(&long)));
        assert_ne!(a, execution_tag(&ex(&format!("{long}y"))));
    }
}
