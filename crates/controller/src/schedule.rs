//! Schedules as Kubernetes CronJobs write them (five fields, UTC), with the
//! `@hourly`-style shorthands, and a stable per-source spread.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
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
        out_of_range(pattern).map_or(Ok(()), |why| Err(format!("schedule {text:?}: {why}")))?;
        let cron = Cron::from_str(pattern).map_err(|e| format!("schedule {text:?} is not a valid cron expression ({e})"))?;
        let schedule = Schedule { cron, text: text.trim().to_string() };
        // A day no month has (31 February) parses, and the job would
        // silently never run.
        if schedule.next_after(DateTime::UNIX_EPOCH).is_none() {
            return Err(format!("schedule {text:?} never fires: no month has that day"));
        }
        Ok(schedule)
    }

    /// The first time after `t` the schedule fires, in whole seconds:
    /// croner keeps `t`'s fraction of a second in the time it finds, which
    /// would move every run by whatever fraction "now" had.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t.trunc_subsecs(0), false).ok()
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

/// The first number of a five-field pattern outside its field's range,
/// named as a person reads it (croner says only "Number out of bounds").
fn out_of_range(pattern: &str) -> Option<String> {
    const FIELDS: [(&str, u32, u32); 5] =
        [("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7)];
    for (field, (name, low, high)) in pattern.split_whitespace().zip(FIELDS) {
        // Steps (`*/90`) are not values of the field.
        let values = field.split(',').map(|part| part.split('/').next().unwrap_or_default());
        for n in values.flat_map(|v| v.split('-')).filter_map(|n| n.parse::<u32>().ok()) {
            if !(low..=high).contains(&n) {
                return Some(format!("{name} {n} is out of range ({low}-{high})"));
            }
        }
    }
    None
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
        assert_eq!(Schedule::parse("61 * * * *").unwrap_err(), "schedule \"61 * * * *\": minute 61 is out of range (0-59)");
        assert_eq!(Schedule::parse("0 3 * 1-13 *").unwrap_err(), "schedule \"0 3 * 1-13 *\": month 13 is out of range (1-12)");
        assert_eq!(Schedule::parse("0 0 0 * *").unwrap_err(), "schedule \"0 0 0 * *\": day of month 0 is out of range (1-31)");
        assert!(Schedule::parse("*/90 * * * *").is_ok_and(|s| s.next_after(at("2026-11-21T10:07:00Z")).is_some()), "a step is no value");
        assert!(Schedule::parse("0 2 * * mon-fri").is_ok());
        // Days no month has: the daemon left them out of its runs, silently.
        for never in ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4 *"] {
            assert_eq!(Schedule::parse(never).unwrap_err(), format!("schedule {never:?} never fires: no month has that day"));
        }
        assert!(Schedule::parse("0 0 29 2 *").is_ok(), "leap days come");
        let d = spread_offset("orders-db", Duration::from_secs(300));
        assert!(d < Duration::from_secs(300) && d == spread_offset("orders-db", Duration::from_secs(300)));
    }
}
