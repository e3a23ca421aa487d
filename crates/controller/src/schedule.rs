//! Schedules as Kubernetes CronJobs write them (five fields, UTC), with the
//! `@hourly`-style shorthands, and a stable per-source spread.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;

#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    pub text: String,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let pattern = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        if pattern.split_whitespace().count() != 5 {
            return Err(format!(
                "schedule {text:?} is not a cron expression of five fields (or @hourly, @daily, @weekly, @monthly, @yearly)"
            ));
        }
        let cron = Cron::from_str(pattern).map_err(|e| format!("schedule {text:?}: {e}"))?;
        Ok(Schedule { cron, text: text.trim().to_string() })
    }

    /// The first time after `t` the schedule fires.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }

    /// The longest time between two runs over the five weeks after `from`
    /// (covers daily, weekly and most monthly patterns).
    pub fn longest_gap(&self, from: DateTime<Utc>) -> Duration {
        let end = from + chrono::Duration::days(35);
        let mut prev = match self.next_after(from) {
            Some(t) => t,
            None => return Duration::MAX,
        };
        let mut longest = Duration::ZERO;
        for _ in 0..20_000 {
            let Some(next) = self.next_after(prev) else { break };
            longest = longest.max((next - prev).to_std().unwrap_or_default());
            if next > end {
                break;
            }
            prev = next;
        }
        longest
    }
}

/// A source's fixed delay within `spread`: the same every run, different
/// between sources (FNV-1a of the name).
pub fn spread_offset(name: &str, spread: Duration) -> Duration {
    if spread.is_zero() {
        return Duration::ZERO;
    }
    let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    Duration::from_secs(hash % spread.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn schedules_fire_and_measure_their_gaps() {
        let s = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(s.next_after(at("2026-11-21T10:07:00Z")), Some(at("2026-11-21T10:15:00Z")));
        assert_eq!(s.longest_gap(at("2026-11-21T10:07:00Z")), Duration::from_secs(900));
        assert_eq!(Schedule::parse("@hourly").unwrap().longest_gap(at("2026-11-21T10:07:00Z")), Duration::from_secs(3600));
        assert_eq!(Schedule::parse("0 2 * * 1-5").unwrap().longest_gap(at("2026-11-21T10:07:00Z")), Duration::from_secs(3 * 86_400));
        assert!(Schedule::parse("every hour").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
        let d = spread_offset("orders-db", Duration::from_secs(300));
        assert!(d < Duration::from_secs(300) && d == spread_offset("orders-db", Duration::from_secs(300)));
    }
}
