//! "Now", for the daemon and the drills: the system's, or a test's.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// Where "now" comes from: the system, or (for tests) a file holding an
/// RFC 3339 time that the test moves forward. A file caught mid-write
/// reads as the last time it held, never as the system's.
#[derive(Debug, Clone)]
pub enum Clock {
    System,
    File(PathBuf, Arc<Mutex<Option<DateTime<Utc>>>>),
}

impl Clock {
    /// `TRESOR_CLOCK_FILE` when set (tests), else the system clock.
    pub fn from_env() -> Clock {
        std::env::var_os("TRESOR_CLOCK_FILE").map_or(Clock::System, |f| Clock::File(f.into(), Arc::default()))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::File(p, last) => {
                let read = std::fs::read_to_string(p).ok().and_then(|t| DateTime::parse_from_rfc3339(t.trim()).ok());
                let mut last = last.lock().expect("not poisoned");
                if let Some(t) = read {
                    *last = Some(t.with_timezone(&Utc));
                }
                last.unwrap_or_else(Utc::now)
            }
        }
    }
}
