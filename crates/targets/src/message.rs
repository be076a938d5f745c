//! The facts of an event a chat message needs, read out of a [`RegistryEvent`] once, and the
//! dialect-neutral [`Summary`] every built-in chat message is rendered from.
//!
//! Design constraints:
//! - The layout follows the Harbor→Telegram notifier (seed 002): what happened (an emoji and a
//!   title), the repository, the tag, the digest, the URL, then for scans the status, duration,
//!   top severity, totals, fixable count and the per-severity counts, the scanner, and last who
//!   did it and when. Quota, replication and retention events show their own key figures.
//! - Values are kept raw here. Each vendor escapes every value (and every label taken from the
//!   event, such as a severity name) for its own dialect; nothing in a [`Summary`] is markup.
//! - Every value is capped at [`MAX_VALUE_CHARS`] characters and every list at
//!   [`MAX_LIST_ITEMS`] items, so one huge field cannot crowd out the rest of a message; the
//!   vendors then shorten whole messages to their limits.

use chrono::DateTime;
use regrelay_events::{EventType, RegistryEvent};
use serde_json::Value;

/// The longest value a built-in message shows, in characters; longer ones end with `…`.
pub const MAX_VALUE_CHARS: usize = 512;

/// How many names of a list (deleted artifacts, replicated artifacts) a message shows.
pub const MAX_LIST_ITEMS: usize = 10;

/// What a built-in message says about one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub event_type: EventType,
    /// The Harbor project the event belongs to.
    pub project: String,
    /// The full repository name, when the event is about one.
    pub repository: Option<String>,
    /// Who caused the event; empty when the registry did not say.
    pub operator: String,
    /// When it happened, unix seconds.
    pub occur_at: i64,
    /// The event's resources (artifacts), in the event's order.
    pub artifacts: Vec<Artifact>,
    /// QUOTA_EXCEED and QUOTA_WARNING: Harbor's explanation.
    pub quota: Option<Quota>,
    /// REPLICATION: the job's figures.
    pub replication: Option<Replication>,
    /// TAG_RETENTION: the run's figures.
    pub retention: Option<Retention>,
    /// REGRELAY_TARGET_DISABLED: the target and why.
    pub disabled: Option<Disabled>,
}

/// A REGRELAY_TARGET_DISABLED event's target (`regrelay_events::operational`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disabled {
    pub policy: Option<String>,
    pub target_type: Option<String>,
    /// Redacted by the writer.
    pub address: Option<String>,
    pub open_since: Option<String>,
    pub consecutive_failures: Option<u64>,
    pub last_failure: Option<String>,
    pub disabled_after: Option<String>,
}

/// One resource of an event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Artifact {
    /// The tag; `None` when absent or when Harbor put the digest there (an untagged artifact).
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// Harbor's `resource_url` (no scheme: `host/project/repo:tag`).
    pub resource_url: Option<String>,
    /// The scan report summary, for scan events.
    pub scan: Option<Scan>,
}

/// A scan report summary (`scan_overview` or `sbom_overview`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scan {
    /// `vulnerability` or `sbom` (event_data.scan.scan_type; `vulnerability` when absent).
    pub scan_type: String,
    pub status: Option<String>,
    pub duration_secs: Option<i64>,
    /// The highest severity found ("Critical", ..., "None").
    pub severity: Option<String>,
    pub total: Option<u64>,
    pub fixable: Option<u64>,
    /// Per-severity counts, most severe first, then any other names in the report's order.
    pub counts: Vec<(String, u64)>,
    /// Scanner name and version, `Trivy v0.37.2`.
    pub scanner: Option<String>,
}

/// A quota event's figures.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Quota {
    /// `custom_attributes.Details`, Harbor's sentence with the usage and the limit.
    pub details: Option<String>,
}

/// A replication job's figures.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Replication {
    pub status: Option<String>,
    pub trigger: Option<String>,
    pub policy_creator: Option<String>,
    pub artifact_type: Option<String>,
    /// `registry_name (registry_type) namespace`, or the endpoint.
    pub source: Option<String>,
    pub destination: Option<String>,
    pub succeeded: Vec<String>,
    pub failed: Vec<String>,
}

/// A retention run's figures.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Retention {
    pub result: Option<String>,
    pub total: Option<u64>,
    pub retained: Option<u64>,
    /// `name_tag` of each deleted artifact.
    pub deleted: Vec<String>,
}

/// A built-in message, dialect-neutral: a title line and labelled facts, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// An emoji that tells the kind of event at a glance.
    pub emoji: &'static str,
    /// What happened, "Artifact pushed".
    pub title: &'static str,
    pub facts: Vec<Fact>,
}

/// One labelled value of a message. Both the label and the value are raw text.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    pub label: String,
    pub value: String,
    /// Shown as code (a digest, a URL) where the dialect has code spans.
    pub code: bool,
}

/// Severity names in the order a reader wants them, most severe first.
const SEVERITY_ORDER: [&str; 6] = ["Critical", "High", "Medium", "Low", "Negligible", "Unknown"];

impl Message {
    /// The facts of `event`. Never fails: a field that is absent or of an unexpected type is
    /// left out of the message.
    pub fn from_event(event: &RegistryEvent) -> Message {
        let data: Value = serde_json::from_str(event.event_data_json()).unwrap_or(Value::Null);
        let scan_type = str_at(&data, "/scan/scan_type").unwrap_or_else(|| "vulnerability".into());
        let artifacts = data
            .get("resources")
            .and_then(Value::as_array)
            .map(|resources| resources.iter().map(|r| artifact(r, &scan_type)).collect())
            .unwrap_or_default();
        let event_type = event.event_type();
        let quota =
            matches!(event_type, EventType::QuotaExceed | EventType::QuotaWarning).then(|| Quota {
                details: str_at(&data, "/custom_attributes/Details"),
            });
        let replication = data.get("replication").map(replication);
        let retention = data.get("retention").map(retention);
        let disabled = (event_type == EventType::RegrelayTargetDisabled).then(|| Disabled {
            policy: str_at(&data, "/target/policy_name"),
            target_type: str_at(&data, "/target/type"),
            address: str_at(&data, "/target/address"),
            open_since: data
                .pointer("/target/circuit_opened_at")
                .and_then(Value::as_i64)
                .and_then(|t| DateTime::from_timestamp(t, 0))
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
            consecutive_failures: data
                .pointer("/target/consecutive_failures")
                .and_then(Value::as_u64),
            last_failure: str_at(&data, "/target/last_failure"),
            disabled_after: str_at(&data, "/target/disabled_after"),
        });
        Message {
            event_type,
            project: event.project().to_owned(),
            repository: event.repository().map(str::to_owned),
            operator: event.operator().to_owned(),
            occur_at: event.occur_at(),
            artifacts,
            quota,
            replication,
            retention,
            disabled,
        }
    }

    /// The emoji and the title of this event type.
    pub fn headline(event_type: EventType) -> (&'static str, &'static str) {
        match event_type {
            EventType::PushArtifact => ("📦", "Artifact pushed"),
            EventType::PullArtifact => ("⬇️", "Artifact pulled"),
            EventType::DeleteArtifact => ("🗑️", "Artifact deleted"),
            EventType::QuotaExceed => ("🚫", "Quota exceeded"),
            EventType::QuotaWarning => ("⚠️", "Quota warning"),
            EventType::ScanningFailed => ("❌", "Scan failed"),
            EventType::ScanningStopped => ("⏹️", "Scan stopped"),
            EventType::ScanningCompleted => ("🔍", "Scan completed"),
            EventType::Replication => ("🔁", "Replication finished"),
            EventType::TagRetention => ("🧹", "Tag retention finished"),
            EventType::UploadChart => ("📦", "Chart uploaded"),
            EventType::DownloadChart => ("⬇️", "Chart downloaded"),
            EventType::DeleteChart => ("🗑️", "Chart deleted"),
            EventType::RegrelayTargetDisabled => ("⛔", "Delivery target disabled"),
        }
    }

    /// The time of the event for people: `2023-04-03 06:04:53 UTC`.
    pub fn time_text(&self) -> String {
        DateTime::from_timestamp(self.occur_at, 0)
            .unwrap_or_default()
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string()
    }

    /// The dialect-neutral message: the layout every chat target renders.
    pub fn summary(&self) -> Summary {
        let (emoji, title) = Message::headline(self.event_type);
        let mut facts = Vec::new();
        let mut push = |label: &str, value: Option<String>, code: bool| {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                facts.push(Fact {
                    label: cap(label),
                    value: cap(&value),
                    code,
                });
            }
        };
        push("Repository", self.repository.clone(), false);
        if self.repository.is_none() {
            push("Project", Some(self.project.clone()), false);
        }
        for artifact in &self.artifacts {
            push("Tag", artifact.tag.clone(), false);
            push("Digest", artifact.digest.clone(), true);
            push("URL", artifact.resource_url.clone(), true);
            if let Some(scan) = &artifact.scan {
                if scan.scan_type != "vulnerability" {
                    push("Scan type", Some(scan.scan_type.clone()), false);
                }
                push("Scan status", scan.status.clone(), false);
                push(
                    "Duration",
                    scan.duration_secs.map(|d| format!("{d}s")),
                    false,
                );
                push("Top severity", scan.severity.clone(), false);
                push("Total", scan.total.map(|n| n.to_string()), false);
                push("Fixable", scan.fixable.map(|n| n.to_string()), false);
                for (severity, count) in &scan.counts {
                    push(severity, Some(count.to_string()), false);
                }
                push("Scanner", scan.scanner.clone(), false);
            }
        }
        if let Some(quota) = &self.quota {
            push("Details", quota.details.clone(), false);
        }
        if let Some(r) = &self.replication {
            push("Status", r.status.clone(), false);
            push("Trigger", r.trigger.clone(), false);
            push("Source", r.source.clone(), false);
            push("Destination", r.destination.clone(), false);
            push("Artifact type", r.artifact_type.clone(), false);
            push("Succeeded", list(&r.succeeded), false);
            push("Failed", list(&r.failed), false);
            push("Policy creator", r.policy_creator.clone(), false);
        }
        if let Some(r) = &self.retention {
            push("Result", r.result.clone(), false);
            push("Total", r.total.map(|n| n.to_string()), false);
            push("Retained", r.retained.map(|n| n.to_string()), false);
            push("Deleted", list(&r.deleted), false);
        }
        if let Some(d) = &self.disabled {
            push("Policy", d.policy.clone(), false);
            push("Target type", d.target_type.clone(), false);
            push("Target", d.address.clone(), true);
            push("Circuit open since", d.open_since.clone(), false);
            push(
                "Consecutive failures",
                d.consecutive_failures.map(|n| n.to_string()),
                false,
            );
            push("Last failure", d.last_failure.clone(), false);
            push("Disabled after", d.disabled_after.clone(), false);
        }
        push("Operator", Some(self.operator.clone()), false);
        push("Time", Some(self.time_text()), false);
        Summary {
            emoji,
            title,
            facts,
        }
    }
}

impl Summary {
    /// The summary shortened to its first `keep` facts plus a last fact saying how many were
    /// left out, the visible marker every vendor uses when a message is over its limit.
    pub fn shortened(&self, keep: usize) -> Summary {
        let dropped = self.facts.len().saturating_sub(keep);
        let mut facts: Vec<Fact> = self.facts.iter().take(keep).cloned().collect();
        if dropped > 0 {
            facts.push(Fact {
                label: crate::TRUNCATION_LABEL.to_owned(),
                value: format!("{dropped} more line(s) not shown"),
                code: false,
            });
        }
        Summary {
            emoji: self.emoji,
            title: self.title,
            facts,
        }
    }

    /// The title line without markup, "📦 Artifact pushed".
    pub fn headline(&self) -> String {
        format!("{} {}", self.emoji, self.title)
    }
}

/// The longest summary whose rendering `fits`: all of it, or its first facts plus the marker
/// (found by bisection: a few renders even for an event with thousands of facts). The title and
/// the marker alone always fit the vendors' limits.
pub fn fit<T>(summary: &Summary, render: impl Fn(&Summary) -> T, fits: impl Fn(&T) -> bool) -> T {
    let whole = render(summary);
    if fits(&whole) {
        return whole;
    }
    // Invariant: `low` facts fit (0 is taken to), `high` facts do not.
    let (mut low, mut high) = (0, summary.facts.len());
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if fits(&render(&summary.shortened(mid))) {
            low = mid;
        } else {
            high = mid;
        }
    }
    render(&summary.shortened(low))
}

fn artifact(resource: &Value, scan_type: &str) -> Artifact {
    let digest = str_at(resource, "/digest");
    let tag = str_at(resource, "/tag").filter(|tag| Some(tag) != digest.as_ref());
    // `scan_overview` is keyed by report MIME type; `sbom_overview` is the report itself.
    let scan = match resource.get("scan_overview").and_then(Value::as_object) {
        Some(overview) => overview.values().next(),
        None => resource.get("sbom_overview").filter(|o| o.is_object()),
    }
    .map(|report| scan(report, scan_type));
    Artifact {
        tag,
        digest,
        resource_url: str_at(resource, "/resource_url"),
        scan,
    }
}

fn scan(report: &Value, scan_type: &str) -> Scan {
    let counts = report
        .pointer("/summary/summary")
        .and_then(Value::as_object)
        .map(|map| {
            let mut counts: Vec<(String, u64)> = SEVERITY_ORDER
                .iter()
                .filter_map(|s| {
                    map.get(*s)
                        .and_then(Value::as_u64)
                        .map(|n| ((*s).to_owned(), n))
                })
                .collect();
            for (name, n) in map {
                if !SEVERITY_ORDER.contains(&name.as_str()) {
                    if let Some(n) = n.as_u64() {
                        counts.push((name.clone(), n));
                    }
                }
            }
            counts
        })
        .unwrap_or_default();
    let scanner = match (
        str_at(report, "/scanner/name"),
        str_at(report, "/scanner/version"),
    ) {
        (Some(name), Some(version)) => Some(format!("{name} {version}")),
        (name, _) => name,
    };
    Scan {
        scan_type: scan_type.to_owned(),
        status: str_at(report, "/scan_status"),
        duration_secs: report.get("duration").and_then(Value::as_i64),
        severity: str_at(report, "/severity"),
        total: report.pointer("/summary/total").and_then(Value::as_u64),
        fixable: report.pointer("/summary/fixable").and_then(Value::as_u64),
        counts,
        scanner,
    }
}

fn replication(r: &Value) -> Replication {
    let side = |key: &str| {
        let side = r.get(key)?;
        let name = str_at(side, "/registry_name");
        let kind = str_at(side, "/registry_type");
        let endpoint = str_at(side, "/endpoint");
        let namespace = str_at(side, "/namespace");
        let who = match (name, kind, endpoint) {
            (Some(name), Some(kind), _) => format!("{name} ({kind})"),
            (None, Some(kind), Some(endpoint)) => format!("{endpoint} ({kind})"),
            (name, kind, endpoint) => name.or(kind).or(endpoint)?,
        };
        Some(match namespace {
            Some(ns) => format!("{who} {ns}"),
            None => who,
        })
    };
    let names = |key: &str| -> Vec<String> {
        r.get(key)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| str_at(item, "/name_tag"))
                    .collect()
            })
            .unwrap_or_default()
    };
    Replication {
        status: str_at(r, "/job_status"),
        trigger: str_at(r, "/trigger_type"),
        policy_creator: str_at(r, "/policy_creator"),
        artifact_type: str_at(r, "/artifact_type"),
        source: side("src_resource"),
        destination: side("dest_resource"),
        succeeded: names("successful_artifact"),
        failed: names("failed_artifact"),
    }
}

fn retention(r: &Value) -> Retention {
    Retention {
        result: str_at(r, "/result"),
        total: r.get("total").and_then(Value::as_u64),
        retained: r.get("retained").and_then(Value::as_u64),
        deleted: r
            .get("deleted_artifact")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| str_at(item, "/name_tag"))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A non-empty string at `pointer`.
fn str_at(value: &Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// At most [`MAX_LIST_ITEMS`] names, then how many more.
fn list(items: &[String]) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    let shown: Vec<&str> = items
        .iter()
        .take(MAX_LIST_ITEMS)
        .map(String::as_str)
        .collect();
    let mut out = shown.join(", ");
    if items.len() > MAX_LIST_ITEMS {
        out.push_str(&format!(" and {} more", items.len() - MAX_LIST_ITEMS));
    }
    Some(out)
}

/// `text` capped at [`MAX_VALUE_CHARS`] characters.
fn cap(text: &str) -> String {
    crate::shorten::chars(text, MAX_VALUE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use regrelay_events::samples::harbor_example;

    fn message(event_type: EventType) -> Message {
        let raw = harbor_example(event_type).unwrap();
        Message::from_event(&RegistryEvent::from_json(raw).unwrap())
    }

    fn facts(summary: &Summary) -> Vec<(String, String)> {
        summary
            .facts
            .iter()
            .map(|f| (f.label.clone(), f.value.clone()))
            .collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(l, v)| ((*l).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn push_names_the_repository_digest_url_operator_and_time() {
        let summary = message(EventType::PushArtifact).summary();
        assert_eq!(summary.headline(), "📦 Artifact pushed");
        let digest = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4";
        assert_eq!(
            facts(&summary),
            pairs(&[
                ("Repository", "harbor/alpine"),
                // The tag holds the digest (an untagged push): shown once, as the digest.
                ("Digest", digest),
                ("URL", &format!("localhost/harbor/alpine@{digest}")),
                ("Operator", "harbor-jobservice"),
                ("Time", "2023-04-03 06:04:53 UTC"),
            ])
        );
    }

    #[test]
    fn seed_scan_completed_has_every_figure_of_the_notifier() {
        // The notifier article's own SCANNING_COMPLETED payload (seed 002).
        let raw = r#"{"type":"SCANNING_COMPLETED","occur_at":1746597860,"operator":"auto","event_data":{"resources":[{"digest":"sha256:280b","tag":"1.1.1","resource_url":"127.0.0.1/repo/repo_image:1.1.1","scan_overview":{"application/vnd.security.vulnerability.report; version=1.1":{"report_id":"39ba","scan_status":"Success","severity":"Critical","duration":12,"summary":{"total":1005,"fixable":7,"summary":{"Critical":2,"High":73,"Low":422,"Medium":506,"Unknown":2}},"scanner":{"name":"Trivy","vendor":"Aqua Security","version":"v0.45.0"},"complete_percent":100}}}],"repository":{"name":"repo_image","namespace":"repo","repo_full_name":"repo/repo_image","repo_type":"public"}}}"#;
        let summary = Message::from_event(&RegistryEvent::from_json(raw).unwrap()).summary();
        assert_eq!(
            facts(&summary),
            pairs(&[
                ("Repository", "repo/repo_image"),
                ("Tag", "1.1.1"),
                ("Digest", "sha256:280b"),
                ("URL", "127.0.0.1/repo/repo_image:1.1.1"),
                ("Scan status", "Success"),
                ("Duration", "12s"),
                ("Top severity", "Critical"),
                ("Total", "1005"),
                ("Fixable", "7"),
                ("Critical", "2"),
                ("High", "73"),
                ("Medium", "506"),
                ("Low", "422"),
                ("Unknown", "2"),
                ("Scanner", "Trivy v0.45.0"),
                ("Operator", "auto"),
                ("Time", "2025-05-07 06:04:20 UTC"),
            ])
        );
    }

    #[test]
    fn quota_replication_and_retention_show_their_figures() {
        let quota = facts(&message(EventType::QuotaWarning).summary());
        assert!(quota.contains(&(
            "Details".into(),
            "quota usage reach 85%: resource storage used 12.6 MiB of 14.0 MiB".into()
        )));
        // Harbor sends no operator for quota events: no empty line.
        assert!(!quota.iter().any(|(l, _)| l == "Operator"));

        let replication = facts(&message(EventType::Replication).summary());
        for want in [
            ("Project", "harbor"),
            ("Status", "Success"),
            ("Trigger", "MANUAL"),
            ("Source", "hub (docker-hub) library"),
            ("Destination", "http://localhost (harbor) harbor"),
            ("Succeeded", "alpine [1 item(s) in total]"),
            ("Policy creator", "admin"),
        ] {
            assert!(
                replication.contains(&(want.0.into(), want.1.into())),
                "{want:?} in {replication:?}"
            );
        }

        let retention = facts(&message(EventType::TagRetention).summary());
        for want in [
            ("Result", "SUCCESS"),
            ("Total", "1"),
            ("Retained", "0"),
            ("Deleted", "alpine:3.8"),
        ] {
            assert!(
                retention.contains(&(want.0.into(), want.1.into())),
                "{want:?}"
            );
        }
    }

    #[test]
    fn scan_failed_and_stopped_show_status_and_duration() {
        for (t, status) in [
            (EventType::ScanningFailed, "Error"),
            (EventType::ScanningStopped, "Stopped"),
        ] {
            let f = facts(&message(t).summary());
            assert!(f.contains(&("Scan status".into(), status.into())), "{f:?}");
            assert!(f.iter().any(|(l, _)| l == "Duration"));
            assert!(
                !f.iter().any(|(l, _)| l == "Top severity"),
                "empty severity"
            );
        }
    }

    #[test]
    fn lists_and_values_are_capped() {
        let deleted: Vec<String> = (0..25).map(|i| format!("a:{i}")).collect();
        let shown = list(&deleted).unwrap();
        assert!(shown.ends_with("a:9 and 15 more"), "{shown}");
        let long = "x".repeat(MAX_VALUE_CHARS * 2);
        assert_eq!(cap(&long).chars().count(), MAX_VALUE_CHARS);
    }

    #[test]
    fn shortening_keeps_the_first_facts_and_says_how_many_were_dropped() {
        let summary = message(EventType::PushArtifact).summary();
        let short = summary.shortened(2);
        assert_eq!(short.facts.len(), 3);
        assert_eq!(short.facts[2].value, "3 more line(s) not shown");
        assert_eq!(summary.shortened(99), summary);
        let rendered = fit(&summary, |s| s.facts.len(), |n| *n <= 3);
        assert_eq!(rendered, 3);
    }
}
