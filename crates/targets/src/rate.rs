//! Rate limits: the built-in defaults per target type and the parser for a target's
//! `rate_limit` (`"20/min"`, `"5/s"`). Enforcing them across consumer processes is the
//! consumer's job; this module only says what the limits are.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// At most `max` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub max: u32,
    pub per: Duration,
}

/// The largest count a `rate_limit` may give (per unit).
pub const MAX_COUNT: u32 = 100_000;

/// A `rate_limit` string that does not parse. The message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate_limit {text:?}: {why}; expected <count>/<unit> such as \"20/min\" or \"5/s\" (units: s, min, h)")]
pub struct RateLimitError {
    text: String,
    why: &'static str,
}

impl RateLimit {
    pub const fn per_second(max: u32) -> RateLimit {
        RateLimit {
            max,
            per: Duration::from_secs(1),
        }
    }

    pub const fn per_minute(max: u32) -> RateLimit {
        RateLimit {
            max,
            per: Duration::from_secs(60),
        }
    }

    /// The shortest spacing between two requests that keeps within the limit.
    pub fn interval(&self) -> Duration {
        self.per / self.max.max(1)
    }
}

impl FromStr for RateLimit {
    type Err = RateLimitError;

    /// `<count>/<unit>`: count 1..=[`MAX_COUNT`]; unit `s`, `sec`, `second`, `m`, `min`,
    /// `minute`, `h`, `hour` (case-insensitive, spaces around the parts allowed).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| RateLimitError {
            text: text.to_owned(),
            why,
        };
        let (count, unit) = text.split_once('/').ok_or_else(|| err("no '/'"))?;
        let max: u32 = count
            .trim()
            .parse()
            .map_err(|_| err("the count is not a whole number"))?;
        if max == 0 || max > MAX_COUNT {
            return Err(err("the count must be between 1 and 100000"));
        }
        let per = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(err("unknown unit")),
        };
        Ok(RateLimit { max, per })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_secs() {
            1 => write!(f, "{}/s", self.max),
            60 => write!(f, "{}/min", self.max),
            3600 => write!(f, "{}/h", self.max),
            _ => write!(f, "{}/{}s", self.max, self.per.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let table = [
            ("20/min", RateLimit::per_minute(20)),
            ("5/s", RateLimit::per_second(5)),
            (" 100 / Minute ", RateLimit::per_minute(100)),
            ("1/sec", RateLimit::per_second(1)),
            (
                "600/h",
                RateLimit {
                    max: 600,
                    per: Duration::from_secs(3600),
                },
            ),
        ];
        for (text, want) in table {
            assert_eq!(text.parse::<RateLimit>(), Ok(want), "{text}");
        }
        assert_eq!(RateLimit::per_minute(20).to_string(), "20/min");
        assert_eq!(RateLimit::per_second(5).to_string(), "5/s");
        assert_eq!(RateLimit::per_minute(20).interval(), Duration::from_secs(3));
    }

    #[test]
    fn refuses_with_clear_messages() {
        let table = [
            ("20", "no '/'"),
            ("x/min", "not a whole number"),
            ("-1/min", "not a whole number"),
            ("0/s", "between 1 and 100000"),
            ("100001/s", "between 1 and 100000"),
            ("5/day", "unknown unit"),
            ("", "no '/'"),
        ];
        for (text, why) in table {
            let err = text.parse::<RateLimit>().unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains("\"20/min\""), "{err}");
        }
    }
}
