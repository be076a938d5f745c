//! The figures of one scenario, computed from what the sender and the receiver recorded, and how
//! they are shown (a table for people, JSON for scripts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::cluster::ProcessSample;
use super::load::LoadResult;
use super::receiver::Arrivals;
use super::scenario::Settings;

/// One scenario's settings and figures (one element of `scenarios` in the JSON).
#[derive(Debug, Serialize)]
pub struct ScenarioReport {
    #[serde(flatten)]
    pub settings: Settings,
    /// `started` (the bench ran its own processes) or `external` (`--target`).
    pub regrelay: &'static str,
    pub ingest: EventFigures,
    pub deliveries: DeliveryFigures,
    /// From each event's `202` to the receipt of each of its deliveries; `None` with no delivery.
    pub latency_ms: Option<LatencyFigures>,
    /// Empty with `--target`.
    pub processes: Vec<ProcessFigures>,
    /// CPU time of all processes during the load, per delivery completed.
    pub cpu_ms_per_delivery: Option<f64>,
    /// Deliveries per second over the lowest ceiling, with `--ceilings`.
    pub fraction_of_lowest_ceiling: Option<f64>,
    /// The composed ceiling at this scenario's fan-out (deliveries/s), with `--ceilings`.
    pub composed_ceiling_per_sec: Option<f64>,
    /// Deliveries per second over the composed ceiling, with `--ceilings`.
    pub fraction_of_composed_ceiling: Option<f64>,
    /// Why the run counts as failed, if it does (missing deliveries, refused events).
    pub problems: Vec<String>,
    /// Latency samples for the plot; not part of the JSON.
    #[serde(skip)]
    pub latencies: Vec<Duration>,
}

#[derive(Debug, Serialize)]
pub struct EventFigures {
    pub sent: usize,
    pub accepted: usize,
    /// Events not accepted, by the status of their request's answer (`transport`: no answer).
    pub rejected: BTreeMap<String, usize>,
    /// From the first request to the last answer.
    pub ingest_seconds: f64,
    pub accepted_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct DeliveryFigures {
    /// Accepted events × live targets.
    pub expected: usize,
    /// Distinct deliveries received (first successful arrival of each).
    pub delivered: usize,
    pub missing: usize,
    /// Repeated deliveries (at-least-once).
    pub duplicates: usize,
    /// Requests the receiver answered `500` on purpose.
    pub answered_errors: usize,
    /// Requests that were not the bench's (another policy, a malformed body).
    pub unexpected: usize,
    /// From the first `202` to the last expected receipt.
    pub seconds: f64,
    pub per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct LatencyFigures {
    pub samples: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Serialize)]
pub struct ProcessFigures {
    /// `api` or `consumer-<n>`.
    pub name: String,
    /// CPU seconds spent from the first event sent to the last delivery received.
    pub cpu_seconds: f64,
    /// CPU seconds since the process started (start-up and warm-up included).
    pub cpu_seconds_total: f64,
    /// Peak resident set size (`VmHWM`).
    pub peak_rss_bytes: u64,
}

/// Process samples taken just before sending and after the last delivery.
pub struct ProcessWindow {
    pub name: String,
    pub before: ProcessSample,
    pub after: ProcessSample,
}

impl ScenarioReport {
    /// Computes the figures. `live_targets` is the fan-out without the dead target.
    pub fn compute(
        settings: Settings,
        regrelay: &'static str,
        load: &LoadResult,
        arrivals: &Arrivals,
        processes: Vec<ProcessWindow>,
    ) -> Self {
        let accepted = load.accepted();
        let ingest_seconds = load.finished.duration_since(load.started).as_secs_f64();
        let events = settings.events;
        let targets = settings.fanout;

        // Microseconds from 1 µs to an hour, 3 significant digits; `saturating_record` clamps to
        // these bounds (an auto-resizing histogram would clamp to its initial, tiny range).
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).ok();
        let mut latencies = Vec::new();
        let mut last_receipt: Option<Instant> = None;
        let mut delivered = 0;
        let mut missing_examples = Vec::new();
        for target in 0..targets {
            for (event, accepted_at) in load.accepted_at.iter().enumerate() {
                let Some(accepted_at) = accepted_at else {
                    continue;
                };
                let Some(Some(received)) = arrivals.first.get(target * events + event) else {
                    if missing_examples.len() < 5 {
                        missing_examples.push(format!("b{event} to /t/{target}"));
                    }
                    continue;
                };
                delivered += 1;
                let latency = received.saturating_duration_since(*accepted_at);
                latencies.push(latency);
                if let Some(h) = histogram.as_mut() {
                    h.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
                }
                last_receipt = Some(last_receipt.map_or(*received, |l| l.max(*received)));
            }
        }
        let first_accept = load.accepted_at.iter().flatten().min().copied();
        let expected = accepted * targets;
        let delivery_seconds = match (first_accept, last_receipt) {
            (Some(first), Some(last)) => last.saturating_duration_since(first).as_secs_f64(),
            _ => 0.0,
        };
        let ms = |micros: u64| micros as f64 / 1000.0;
        let latency_ms = histogram.filter(|h| !h.is_empty()).map(|h| LatencyFigures {
            samples: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        });

        let processes: Vec<ProcessFigures> = processes
            .into_iter()
            .map(|p| ProcessFigures {
                name: p.name,
                cpu_seconds: (p.after.cpu_seconds - p.before.cpu_seconds).max(0.0),
                cpu_seconds_total: p.after.cpu_seconds,
                peak_rss_bytes: p.after.peak_rss_bytes,
            })
            .collect();
        let cpu_ms_per_delivery = (!processes.is_empty() && delivered > 0).then(|| {
            processes.iter().map(|p| p.cpu_seconds).sum::<f64>() * 1000.0 / delivered as f64
        });

        let missing = expected - delivered.min(expected);
        let mut problems = Vec::new();
        if missing > 0 {
            problems.push(format!(
                "{missing} of {expected} deliveries missing (not received before the timeout), e.g. {}",
                missing_examples.join(", ")
            ));
        }
        let refused = settings.events - accepted;
        if refused > 0 {
            let by_status: Vec<String> = load
                .rejected
                .iter()
                .map(|(status, n)| format!("{n} × {status}"))
                .collect();
            problems.push(format!(
                "{refused} of {} events not accepted ({}); e.g. {}",
                settings.events,
                by_status.join(", "),
                load.rejection_samples.join(" | ")
            ));
        }

        Self {
            regrelay,
            ingest: EventFigures {
                sent: settings.events,
                accepted,
                rejected: load.rejected.clone(),
                ingest_seconds,
                accepted_per_sec: rate(accepted, ingest_seconds),
            },
            deliveries: DeliveryFigures {
                expected,
                delivered,
                missing,
                duplicates: arrivals.duplicates,
                answered_errors: arrivals.answered_errors,
                unexpected: arrivals.unexpected,
                seconds: delivery_seconds,
                per_sec: rate(delivered, delivery_seconds),
            },
            latency_ms,
            processes,
            cpu_ms_per_delivery,
            fraction_of_lowest_ceiling: None,
            composed_ceiling_per_sec: None,
            fraction_of_composed_ceiling: None,
            problems,
            latencies,
            settings,
        }
    }
}

fn rate(count: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// The end-of-run table: one row per scenario.
pub fn table(reports: &[ScenarioReport]) -> String {
    let header = [
        "SCENARIO",
        "EVENTS",
        "FANOUT",
        "CONS",
        "HIST",
        "ACCEPT/S",
        "DELIV/S",
        "P50 MS",
        "P90 MS",
        "P99 MS",
        "MAX MS",
        "CPU MS/DELIV",
        "RSS API",
        "RSS CONS",
        "MISSING",
        "OF LOWEST",
        "OF COMPOSED",
    ];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let s = &r.settings;
            let latency = |f: fn(&LatencyFigures) -> f64| {
                r.latency_ms
                    .as_ref()
                    .map_or("-".to_owned(), |l| format!("{:.1}", f(l)))
            };
            let rss = |consumer: bool| {
                r.processes
                    .iter()
                    .filter(|p| p.name.starts_with("consumer") == consumer)
                    .map(|p| p.peak_rss_bytes)
                    .max()
                    .map_or("-".to_owned(), |b| {
                        format!("{:.0} MiB", b as f64 / 1048576.0)
                    })
            };
            vec![
                s.scenario.clone(),
                if s.batch > 1 {
                    format!("{} ({}/req)", s.events, s.batch)
                } else {
                    s.events.to_string()
                },
                if s.dead_target {
                    format!("{}+1 dead", s.fanout)
                } else {
                    s.fanout.to_string()
                },
                if r.regrelay == "started" {
                    s.consumers.to_string()
                } else {
                    "-".into()
                },
                if r.regrelay == "started" {
                    (if s.history { "on" } else { "off" }).into()
                } else {
                    "-".into()
                },
                format!("{:.0}", r.ingest.accepted_per_sec),
                format!("{:.0}", r.deliveries.per_sec),
                latency(|l| l.p50),
                latency(|l| l.p90),
                latency(|l| l.p99),
                latency(|l| l.max),
                r.cpu_ms_per_delivery
                    .map_or("-".into(), |c| format!("{c:.3}")),
                rss(false),
                rss(true),
                r.deliveries.missing.to_string(),
                r.fraction_of_lowest_ceiling
                    .map_or("-".into(), |f| format!("{:.0}%", f * 100.0)),
                r.fraction_of_composed_ceiling
                    .map_or("-".into(), |f| format!("{:.0}%", f * 100.0)),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            // Names left-aligned, figures right-aligned.
            if i == 0 {
                let _ = write!(out, "{cell:<w$}  ", w = widths[i]);
            } else {
                let _ = write!(out, "{cell:>w$}  ", w = widths[i]);
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{self, Overrides};

    #[test]
    fn figures_come_from_accepts_and_receipts() {
        let mut settings = scenario::settings("baseline", &Overrides::default()).unwrap();
        settings.events = 3;
        settings.fanout = 2;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let load = LoadResult {
            accepted_at: vec![Some(at(0)), Some(at(10)), None],
            started: t0,
            finished: at(20),
            rejected: BTreeMap::from([("503".to_owned(), 1)]),
            rejection_samples: vec!["event b2: 503: busy".into()],
        };
        let arrivals = Arrivals {
            // target 0: events 0 and 1; target 1: event 0 only.
            first: vec![Some(at(5)), Some(at(30)), None, Some(at(40)), None, None],
            delivered: 3,
            ..Arrivals::default()
        };
        let report = ScenarioReport::compute(settings, "started", &load, &arrivals, Vec::new());
        assert_eq!(report.ingest.accepted, 2);
        assert_eq!(report.deliveries.expected, 4);
        assert_eq!(report.deliveries.delivered, 3);
        assert_eq!(report.deliveries.missing, 1);
        assert!((report.deliveries.seconds - 0.040).abs() < 1e-9);
        let latency = report.latency_ms.as_ref().unwrap();
        assert_eq!(latency.samples, 3);
        assert!(latency.p50 <= latency.p99 && latency.p99 <= latency.max);
        assert!((latency.max - 40.0).abs() < 0.1);
        assert_eq!(report.problems.len(), 2);
        assert!(table(&[report]).contains("baseline"));
    }
}
