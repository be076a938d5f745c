//! The named scenarios of issue 5 and how command-line flags override them.

use std::time::Duration;

use serde::Serialize;

/// Everything one scenario run is made of.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The scenario's name (`baseline`, ...).
    pub scenario: String,
    /// Events sent.
    pub events: usize,
    /// Events per ingest request (a Harbor JSON array when more than one).
    pub batch: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Events per second, or `None` for as fast as accepted.
    pub rate: Option<f64>,
    /// Live targets in the policy.
    pub fanout: usize,
    /// One more target on a port nothing listens on (its deliveries are not expected).
    pub dead_target: bool,
    /// Consumer processes (started by the bench; unknown with `--target`).
    pub consumers: usize,
    /// `REGRELAY_HISTORY_ENABLED` of the started processes.
    pub history: bool,
    /// The receiver's delay before answering.
    #[serde(serialize_with = "millis")]
    pub receiver_delay: Duration,
    /// Fraction of receiver answers that are `500`.
    pub receiver_errors: f64,
    /// Each event padded to about this many bytes of JSON (0: the plain ~400-byte push).
    pub event_bytes: usize,
}

/// Flags given on the command line; each one set overrides every scenario's value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub events: Option<usize>,
    pub batch: Option<usize>,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub fanout: Option<usize>,
    pub dead_target: Option<bool>,
    pub consumers: Option<usize>,
    pub history: Option<bool>,
    pub receiver_delay: Option<Duration>,
    pub receiver_errors: Option<f64>,
    pub event_bytes: Option<usize>,
}

/// The scenarios in the order `--scenario all` runs them.
pub const NAMES: &[&str] = &[
    "baseline",
    "history-off",
    "two-consumers",
    "fanout-10",
    "fanout-100",
    "slow-receiver",
    "dead-target",
    "batched-ingest",
];

/// The scenario `name` with `overrides` applied, or `None` for an unknown name.
///
/// Default event counts keep each scenario at a few thousand to ten thousand deliveries: enough for
/// stable rates and a meaningful p99 on a 2-core machine, short enough to run all of them in minutes.
pub fn settings(name: &str, overrides: &Overrides) -> Option<Settings> {
    let baseline = Settings {
        scenario: name.to_owned(),
        events: 5000,
        batch: 1,
        concurrency: 16,
        rate: None,
        fanout: 1,
        dead_target: false,
        consumers: 1,
        history: true,
        receiver_delay: Duration::ZERO,
        receiver_errors: 0.0,
        event_bytes: 0,
    };
    let mut s = match name {
        "baseline" => baseline,
        "history-off" => Settings {
            history: false,
            ..baseline
        },
        "two-consumers" => Settings {
            consumers: 2,
            ..baseline
        },
        "fanout-10" => Settings {
            events: 1000,
            fanout: 10,
            ..baseline
        },
        "fanout-100" => Settings {
            events: 100,
            fanout: 100,
            ..baseline
        },
        "slow-receiver" => Settings {
            events: 3000,
            receiver_delay: Duration::from_millis(50),
            ..baseline
        },
        "dead-target" => Settings {
            events: 1000,
            fanout: 10,
            dead_target: true,
            ..baseline
        },
        // Fan-out 1 without the ingest request's cost on every event: ten events per request.
        "batched-ingest" => Settings {
            events: 20000,
            batch: 10,
            ..baseline
        },
        _ => return None,
    };
    let o = overrides;
    s.events = o.events.unwrap_or(s.events);
    s.batch = o.batch.unwrap_or(s.batch);
    s.concurrency = o.concurrency.unwrap_or(s.concurrency);
    s.rate = o.rate.or(s.rate);
    s.fanout = o.fanout.unwrap_or(s.fanout);
    s.dead_target = o.dead_target.unwrap_or(s.dead_target);
    s.consumers = o.consumers.unwrap_or(s.consumers);
    s.history = o.history.unwrap_or(s.history);
    s.receiver_delay = o.receiver_delay.unwrap_or(s.receiver_delay);
    s.receiver_errors = o.receiver_errors.unwrap_or(s.receiver_errors);
    s.event_bytes = o.event_bytes.unwrap_or(s.event_bytes);
    Some(s)
}

fn millis<S: serde::Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_scenario_and_flags_override() {
        for name in NAMES {
            assert!(settings(name, &Overrides::default()).is_some(), "{name}");
        }
        assert!(settings("nope", &Overrides::default()).is_none());
        let dead = settings("dead-target", &Overrides::default()).unwrap();
        assert!(dead.dead_target && dead.fanout == 10);
        let batched = settings("batched-ingest", &Overrides::default()).unwrap();
        assert_eq!((batched.batch, batched.fanout), (10, 1));
        assert_eq!(
            settings("baseline", &Overrides::default()).unwrap().batch,
            1
        );
        let small = settings(
            "fanout-100",
            &Overrides {
                events: Some(7),
                history: Some(false),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!((small.events, small.fanout, small.history), (7, 100, false));
    }
}
