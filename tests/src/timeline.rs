//! What happened in a pipeline run, one entry per invocation, and a table printer.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// What one invocation ended with, as CodePipeline shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    /// Succeeded with a continuation token: the action goes on in a new job.
    InProgress,
    Failed,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Succeeded => "Succeeded",
            Self::InProgress => "InProgress",
            Self::Failed => "Failed",
        })
    }
}

/// One invocation of one action.
#[derive(Debug, Clone)]
pub struct Entry {
    pub action: String,
    pub function: String,
    pub job_id: String,
    /// 1 for the first job of an action, 2 for its first continuation, ...
    pub round: u32,
    pub status: Status,
    pub summary: String,
    pub duration: Duration,
    /// Output variables (only on the invocation that completed the action).
    pub variables: BTreeMap<String, String>,
}

/// The entries of one run, in order.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub entries: Vec<Entry>,
}

impl Timeline {
    /// The last entry of each action, in pipeline order.
    pub fn final_status(&self, action: &str) -> Option<Status> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.action == action)
            .map(|e| e.status)
    }

    /// Renders the table:
    ///
    /// ```text
    /// #  ACTION     FUNCTION             ROUND  STATUS      TIME    JOB       SUMMARY
    /// 1  Snapshot   snapshot-production  1      InProgress  0.21s   1a2b3c4d  creating snap-…
    ///                                                                         SnapshotId = snap-…
    /// ```
    pub fn render(&self) -> String {
        const SUMMARY_WIDTH: usize = 72;
        let headers = ["#", "ACTION", "FUNCTION", "ROUND", "STATUS", "TIME", "JOB"];
        let rows: Vec<[String; 7]> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                [
                    (i + 1).to_string(),
                    e.action.clone(),
                    e.function.clone(),
                    e.round.to_string(),
                    e.status.to_string(),
                    format!("{:.2}s", e.duration.as_secs_f64()),
                    e.job_id.chars().take(8).collect(),
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let indent: usize = widths.iter().map(|w| w + 2).sum();
        let mut out = String::new();
        let line = |cells: &[&str], last: &str| {
            let mut s = String::new();
            for (c, w) in cells.iter().zip(widths) {
                s.push_str(&format!("{c:<w$}  "));
            }
            s.push_str(last);
            s.trim_end().to_string() + "\n"
        };
        out.push_str(&line(&headers, "SUMMARY"));
        for (r, e) in rows.iter().zip(&self.entries) {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            out.push_str(&line(
                &cells,
                &snapstage::job::codepipeline::truncate(&one_line(&e.summary), SUMMARY_WIDTH),
            ));
            for (k, v) in &e.variables {
                out.push_str(&format!(
                    "{:indent$}{k} = {}\n",
                    "",
                    snapstage::job::codepipeline::truncate(v, SUMMARY_WIDTH)
                ));
            }
        }
        out
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_each_invocation_and_the_variables() {
        let mut vars = BTreeMap::new();
        vars.insert("SnapshotId".to_string(), "snap-0123".to_string());
        let t = Timeline {
            entries: vec![
                Entry {
                    action: "Snapshot".into(),
                    function: "snapshot-production".into(),
                    job_id: "0123456789abcdef".into(),
                    round: 1,
                    status: Status::InProgress,
                    summary: "creating\nsnapshot".into(),
                    duration: Duration::from_millis(1250),
                    variables: BTreeMap::new(),
                },
                Entry {
                    action: "Snapshot".into(),
                    function: "snapshot-production".into(),
                    job_id: "fedcba9876543210".into(),
                    round: 2,
                    status: Status::Succeeded,
                    summary: "done".into(),
                    duration: Duration::from_millis(20),
                    variables: vars,
                },
            ],
        };
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 4, "{s}");
        assert!(lines[0].starts_with("#  ACTION"), "{s}");
        assert!(lines[1].contains("InProgress") && lines[1].contains("1.25s"));
        assert!(lines[1].contains("creating snapshot"), "{s}");
        assert!(lines[1].contains("01234567") && !lines[1].contains("0123456789"));
        assert!(lines[3].trim() == "SnapshotId = snap-0123", "{s}");
        assert_eq!(t.final_status("Snapshot"), Some(Status::Succeeded));
        assert_eq!(t.final_status("Deploy"), None);
    }
}
