//! EventBridge events from CodeCommit, and which of them start work.
//!
//! Uses `aws_lambda_events`' EventBridge envelope with our own detail struct (the field set AWS
//! documents for "CodeCommit Repository State Change" and "CodeCommit Pull Request State Change").

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const REPOSITORY_STATE_CHANGE: &str = "CodeCommit Repository State Change";
pub const PULL_REQUEST_STATE_CHANGE: &str = "CodeCommit Pull Request State Change";

/// The union of the detail fields of both CodeCommit detail types that we read.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeCommitDetail {
    pub event: Option<String>,
    pub repository_name: Option<String>,
    pub reference_type: Option<String>,
    pub reference_name: Option<String>,
    pub commit_id: Option<String>,
    pub old_commit_id: Option<String>,
    pub source_commit_id: Option<String>,
    pub destination_commit_id: Option<String>,
    pub merge_option: Option<String>,
    // pull request state change
    pub pull_request_id: Option<String>,
    pub is_merged: Option<String>,
    pub pull_request_status: Option<String>,
    pub destination_reference: Option<String>,
    pub repository_names: Option<Vec<String>>,
    pub source_commit: Option<String>,
    pub destination_commit: Option<String>,
    pub merge_metadata: Option<MergeMetadata>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MergeMetadata {
    pub merge_commit_id: Option<String>,
}

/// A CodeCommit change that should start work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub repository: String,
    pub branch: String,
    pub commit_id: String,
    pub kind: &'static str,
}

/// Why an event was recognised but starts nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored(pub String);

/// Which repositories and branches start work (from configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerFilter {
    /// Empty means any repository.
    pub repositories: Vec<String>,
    pub branches: Vec<String>,
}

impl Default for TriggerFilter {
    fn default() -> Self {
        Self {
            repositories: Vec::new(),
            branches: vec!["main".to_string()],
        }
    }
}

impl TriggerFilter {
    /// `SNAPSTAGE_TRIGGER_REPOSITORIES` (comma-separated, empty = any) and
    /// `SNAPSTAGE_TRIGGER_BRANCHES` (comma-separated, default `main`).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        let list = |v: Option<String>| -> Option<Vec<String>> {
            v.map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
        };
        let mut f = Self::default();
        if let Some(r) = list(get("SNAPSTAGE_TRIGGER_REPOSITORIES")) {
            f.repositories = r;
        }
        if let Some(b) = list(get("SNAPSTAGE_TRIGGER_BRANCHES")).filter(|b| !b.is_empty()) {
            f.branches = b;
        }
        f
    }

    fn admits(&self, repo: &str, branch: &str) -> std::result::Result<(), Ignored> {
        if !self.repositories.is_empty() && !self.repositories.iter().any(|r| r == repo) {
            return Err(Ignored(format!(
                "repository {repo:?} is not in SNAPSTAGE_TRIGGER_REPOSITORIES"
            )));
        }
        if !self.branches.iter().any(|b| b == branch) {
            return Err(Ignored(format!(
                "branch {branch:?} is not a trigger branch ({})",
                self.branches.join(", ")
            )));
        }
        Ok(())
    }
}

/// Parses a CodeCommit EventBridge event and decides whether it starts work.
/// `Ok(Err(Ignored))` is a recognised event that starts nothing; `Err` is a malformed one.
pub fn evaluate(
    raw: &serde_json::Value,
    filter: &TriggerFilter,
) -> Result<std::result::Result<Trigger, Ignored>> {
    let ev: EventBridgeEvent<CodeCommitDetail> = serde_path_to_error::deserialize(raw)
        .map_err(|e| Error::Event(format!("EventBridge event: {}: {}", e.path(), e.inner())))?;
    if ev.source != "aws.codecommit" {
        return Err(Error::Event(format!(
            "EventBridge event from source {:?}: expected \"aws.codecommit\"",
            ev.source
        )));
    }
    let d = ev.detail;
    let need = |v: Option<String>, name: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| Error::Event(format!("EventBridge event: detail.{name} is missing")))
    };
    match ev.detail_type.as_str() {
        REPOSITORY_STATE_CHANGE => {
            let event = need(d.event, "event")?;
            let repo = need(d.repository_name, "repositoryName")?;
            let reference_type = d.reference_type.unwrap_or_default();
            if reference_type != "branch" {
                return Ok(Err(Ignored(format!(
                    "{event} on a {reference_type:?} reference; only branches start work"
                ))));
            }
            let branch = need(d.reference_name, "referenceName")?;
            match event.as_str() {
                "referenceCreated" | "referenceUpdated" => {}
                "referenceDeleted" => {
                    return Ok(Err(Ignored(format!("branch {branch:?} was deleted"))));
                }
                other => {
                    return Ok(Err(Ignored(format!(
                        "repository event {other:?} starts nothing"
                    ))));
                }
            }
            let commit = need(d.commit_id, "commitId")?;
            if let Err(i) = filter.admits(&repo, &branch) {
                return Ok(Err(i));
            }
            let kind = if d.source_commit_id.is_some() {
                "merge"
            } else {
                "push"
            };
            Ok(Ok(Trigger {
                repository: repo,
                branch,
                commit_id: commit,
                kind,
            }))
        }
        PULL_REQUEST_STATE_CHANGE => {
            let event = need(d.event, "event")?;
            if event != "pullRequestMergeStatusUpdated" || d.is_merged.as_deref() != Some("True") {
                return Ok(Err(Ignored(format!(
                    "pull request event {event:?} (isMerged={:?}) is not a merge",
                    d.is_merged.unwrap_or_default()
                ))));
            }
            let repo = match d.repository_names.and_then(|r| r.into_iter().next()) {
                Some(r) => r,
                None => need(d.repository_name, "repositoryNames")?,
            };
            let dest = need(d.destination_reference, "destinationReference")?;
            let branch = dest
                .strip_prefix("refs/heads/")
                .unwrap_or(&dest)
                .to_string();
            // The merged tip: the merge commit when the event names it, else the source commit
            // (a fast-forward merge moves the destination to it).
            let merged = d.merge_metadata.and_then(|m| m.merge_commit_id);
            let commit = need(merged.or(d.source_commit), "sourceCommit")?;
            if let Err(i) = filter.admits(&repo, &branch) {
                return Ok(Err(i));
            }
            Ok(Ok(Trigger {
                repository: repo,
                branch,
                commit_id: commit,
                kind: "pull-request-merge",
            }))
        }
        other => Err(Error::Event(format!(
            "EventBridge detail-type {other:?}: expected \"{REPOSITORY_STATE_CHANGE}\" or \"{PULL_REQUEST_STATE_CHANGE}\""
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(branches: &[&str]) -> TriggerFilter {
        TriggerFilter {
            repositories: vec![],
            branches: branches.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn documented_merge_event_triggers_on_its_branch() {
        let raw: serde_json::Value = serde_json::from_str(include_str!(
            "../../../events/codecommit/reference-merge.json"
        ))
        .unwrap();
        let t = evaluate(&raw, &filter(&["myBranch"])).unwrap().unwrap();
        assert_eq!(t.repository, "MyDemoRepo");
        assert_eq!(t.commit_id, "7f0103fMERGE");
        assert_eq!(t.kind, "merge");
        let ignored = evaluate(&raw, &filter(&["main"])).unwrap().unwrap_err();
        assert!(ignored.0.contains("myBranch"), "{ignored:?}");
    }

    #[test]
    fn deleted_branches_and_tags_are_ignored_with_a_reason() {
        let mut raw: serde_json::Value = serde_json::from_str(include_str!(
            "../../../events/codecommit/branch-deleted.json"
        ))
        .unwrap();
        let i = evaluate(&raw, &filter(&["main"])).unwrap().unwrap_err();
        assert!(i.0.contains("deleted"), "{i:?}");
        raw["detail"]["referenceType"] = json!("tag");
        raw["detail"]["event"] = json!("referenceCreated");
        let i = evaluate(&raw, &filter(&["main"])).unwrap().unwrap_err();
        assert!(i.0.contains("tag"), "{i:?}");
    }

    #[test]
    fn merged_pull_request_triggers_unmerged_does_not() {
        let mut raw: serde_json::Value = serde_json::from_str(include_str!(
            "../../../events/codecommit/pull-request-merged.json"
        ))
        .unwrap();
        let t = evaluate(&raw, &filter(&["main"])).unwrap().unwrap();
        assert_eq!(t.branch, "main");
        assert_eq!(t.kind, "pull-request-merge");
        raw["detail"]["isMerged"] = json!("False");
        assert!(evaluate(&raw, &filter(&["main"])).unwrap().is_err());
    }

    #[test]
    fn other_sources_are_errors_naming_the_expected_source() {
        let raw = json!({"version":"0","id":"x","detail-type":"EC2 Instance State-change Notification",
            "source":"aws.ec2","account":"1","time":"2024-01-01T00:00:00Z","region":"us-east-1","resources":[],"detail":{}});
        let e = evaluate(&raw, &TriggerFilter::default()).unwrap_err();
        assert!(e.to_string().contains("aws.codecommit"), "{e}");
    }

    #[test]
    fn filter_reads_env_lists() {
        let f = TriggerFilter::from_env(|k| match k {
            "SNAPSTAGE_TRIGGER_BRANCHES" => Some("main, release".into()),
            "SNAPSTAGE_TRIGGER_REPOSITORIES" => Some("app".into()),
            _ => None,
        });
        assert_eq!(f.branches, vec!["main", "release"]);
        assert_eq!(f.repositories, vec!["app"]);
        assert!(f.admits("other", "main").is_err());
    }
}
