//! The one clock of the server. The policy clock (`now` of suggestions, triggers and
//! deliveries) can be pinned for tests and the demo; queue scheduling always runs on wall time.

/// The policy clock: the system time, or a pinned instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    fixed: Option<i64>,
}

impl Clock {
    /// Reads the system clock.
    pub fn system() -> Clock {
        Clock { fixed: None }
    }

    /// Always answers `at` (Unix seconds); `None` is the system clock.
    pub fn pinned(at: Option<i64>) -> Clock {
        Clock { fixed: at }
    }

    /// Unix seconds.
    pub fn now(&self) -> i64 {
        self.fixed.unwrap_or_else(|| (wall_ms() / 1000) as i64)
    }
}

/// Wall-clock Unix milliseconds.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
