//! Time without a clock: seconds since the Unix epoch, and civil dates.
//!
//! `features` never reads the clock; callers pass `now`. Dates are proleptic Gregorian, computed
//! with the days-from-civil arithmetic (era of 400 years = 146,097 days) so that no date library
//! is needed on the hot path of log parsing. Portal times are Asia/Shanghai (UTC+8, no DST).

use std::fmt;

/// Seconds in a day.
pub const DAY: i64 = 86_400;
/// Asia/Shanghai offset from UTC in seconds (no daylight saving time since 1991).
pub const SHANGHAI_OFFSET: i64 = 8 * 3600;

/// A point in time: whole seconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

/// A civil date (year, month 1-12, day 1-31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number (days since 1970-01-01).
pub fn civil_from_days(z: i64) -> Date {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    Date { year, month, day }
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

impl Date {
    /// A checked date.
    pub fn new(year: i32, month: u8, day: u8) -> Option<Date> {
        ((1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month)).then_some(Date {
            year,
            month,
            day,
        })
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<Date> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        Date::new(digits(&b[0..4])? as i32, digits(&b[5..7])? as u8, digits(&b[8..10])? as u8)
    }

    /// Days since 1970-01-01.
    pub fn day_number(self) -> i64 {
        days_from_civil(self.year, self.month, self.day)
    }

    /// Midnight of this date in Asia/Shanghai.
    pub fn start_shanghai(self) -> Timestamp {
        Timestamp(self.day_number() * DAY - SHANGHAI_OFFSET)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')))
}

impl Timestamp {
    /// Parses `YYYY-MM-DDTHH:MM:SSZ`, `YYYY-MM-DDTHH:MM:SS+08:00` (any `±HH:MM` offset) or plain
    /// integer seconds since the epoch.
    pub fn parse(s: &str) -> Option<Timestamp> {
        let b = s.as_bytes();
        if b.len() >= 19 && b[4] == b'-' && b[10] == b'T' {
            let date = Date::parse(&s[..10])?;
            if b[13] != b':' || b[16] != b':' {
                return None;
            }
            let (h, mi, se) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
            if h > 23 || mi > 59 || se > 60 {
                return None;
            }
            // Fractional seconds (as JavaScript's toISOString writes them) are accepted and dropped.
            let mut rest = &b[19..];
            if let [b'.', tail @ ..] = rest {
                let digits_len = tail.iter().take_while(|c| c.is_ascii_digit()).count();
                if digits_len == 0 || digits_len > 9 {
                    return None;
                }
                rest = &tail[digits_len..];
            }
            let offset = match rest {
                b"Z" => 0,
                [sign @ (b'+' | b'-'), oh @ .., b':', om1, om2] if oh.len() == 2 => {
                    let o = i64::from(digits(oh)? * 3600 + digits(&[*om1, *om2])? * 60);
                    if o > 14 * 3600 {
                        return None;
                    }
                    if *sign == b'+' {
                        o
                    } else {
                        -o
                    }
                }
                _ => return None,
            };
            let secs = date.day_number() * DAY + i64::from(h * 3600 + mi * 60 + se) - offset;
            return Some(Timestamp(secs));
        }
        let (neg, rest) = match b.first() {
            Some(b'-') => (true, &b[1..]),
            _ => (false, b),
        };
        if rest.is_empty() || rest.len() > 18 {
            return None;
        }
        let v = rest.iter().try_fold(0i64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))?;
        Some(Timestamp(if neg { -v } else { v }))
    }

    /// The civil date in Asia/Shanghai.
    pub fn date_shanghai(self) -> Date {
        civil_from_days((self.0 + SHANGHAI_OFFSET).div_euclid(DAY))
    }

    /// Whole days from `self` to `later` (may be negative).
    pub fn days_until(self, later: Timestamp) -> f64 {
        (later.0 - self.0) as f64 / DAY as f64
    }

    pub fn plus_days(self, days: f64) -> Timestamp {
        Timestamp(self.0 + (days * DAY as f64) as i64)
    }

    /// Working days from `self` to `later` in Asia/Shanghai, as a fraction: the part of each
    /// Monday-Friday that lies between them (negative when `later` is earlier). Statutory
    /// holidays and the weekend days made working days around them (调休) are not known here:
    /// the State Council publishes them a year at a time, and a catalogue of them would need
    /// yearly upkeep; counts across such days are off by those days.
    pub fn working_days_until(self, later: Timestamp) -> f64 {
        (working_seconds(later) - working_seconds(self)) as f64 / DAY as f64
    }

    /// Adds `days` working days (Monday-Friday, Asia/Shanghai): the inverse of
    /// `working_days_until` for days >= 0 (from a weekend, the days count from Monday 00:00).
    pub fn plus_working_days(self, days: f64) -> Timestamp {
        let target = working_seconds(self) + (days.max(0.0) * DAY as f64) as i64;
        // working_seconds is monotone; search the first instant that reaches the target.
        let (mut lo, mut hi) = (self.0, self.0 + ((days.max(0.0) / 5.0 * 7.0 + 4.0) * DAY as f64) as i64);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if working_seconds(Timestamp(mid)) < target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Timestamp(lo)
    }
}

/// Working seconds (Monday-Friday, Asia/Shanghai) from a fixed Monday to `t`; only
/// differences mean anything.
fn working_seconds(t: Timestamp) -> i64 {
    let local = t.0 + SHANGHAI_OFFSET;
    // Day 0 (1970-01-01) was a Thursday: shift by 3 so weeks start on Monday.
    let day = local.div_euclid(DAY) + 3;
    let (weeks, weekday) = (day.div_euclid(7), day.rem_euclid(7));
    let within = if weekday < 5 { local.rem_euclid(DAY) } else { 0 };
    weeks * 5 * DAY + weekday.min(5) * DAY + within
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC: `2024-03-01T01:15:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(DAY);
        let secs = self.0.rem_euclid(DAY);
        let d = civil_from_days(days);
        write!(f, "{d}T{:02}:{:02}:{:02}Z", secs / 3600, (secs / 60) % 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn working_days_skip_weekends_in_shanghai() {
        use super::*;
        // Friday 2025-11-28 09:00 Shanghai to Monday 2025-12-01 09:00: one working day.
        let fri = Timestamp::parse("2025-11-28T01:00:00Z").unwrap();
        let mon = Timestamp::parse("2025-12-01T01:00:00Z").unwrap();
        assert!((fri.working_days_until(mon) - 1.0).abs() < 1e-9);
        assert!((mon.working_days_until(fri) + 1.0).abs() < 1e-9);
        // Saturday to Sunday: none; a whole week: five.
        let sat = Timestamp::parse("2025-11-29T04:00:00Z").unwrap();
        assert_eq!(sat.working_days_until(sat.plus_days(1.0)), 0.0);
        assert!((mon.working_days_until(mon.plus_days(7.0)) - 5.0).abs() < 1e-9);
        // plus_working_days inverts it, and from a weekend counts from Monday 00:00.
        let later = fri.plus_working_days(3.5);
        assert!((fri.working_days_until(later) - 3.5).abs() < 1e-4);
        assert_eq!(sat.plus_working_days(0.5), Timestamp::parse("2025-12-01T04:00:00Z").unwrap());
        assert_eq!(sat.plus_working_days(0.0), sat);
    }

    use super::*;

    #[test]
    fn civil_round_trip_covers_leap_years_and_eras() {
        for z in -800_000..800_000i64 {
            if z % 37 != 0 && !(-1000..1000).contains(&z) {
                continue;
            }
            let d = civil_from_days(z);
            assert_eq!(days_from_civil(d.year, d.month, d.day), z);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(Date::new(2024, 2, 29).map(|d| d.day_number()), Some(19_782));
        assert_eq!(Date::new(2023, 2, 29), None);
    }

    #[test]
    fn timestamps_parse_and_print_in_rfc3339() {
        let t = Timestamp::parse("2024-03-01T09:15:00+08:00").unwrap();
        assert_eq!(t.to_string(), "2024-03-01T01:15:00Z");
        assert_eq!(Timestamp::parse("2024-03-01T01:15:00Z"), Some(t));
        assert_eq!(Timestamp::parse("2024-03-01T01:15:00.123Z"), Some(t));
        assert_eq!(Timestamp::parse("2024-03-01T09:15:00.5+08:00"), Some(t));
        assert_eq!(Timestamp::parse("2024-03-01T01:15:00.Z"), None);
        assert_eq!(Timestamp::parse("2024-03-01T01:15:00+15:00"), None);
        assert_eq!(Timestamp::parse(&t.0.to_string()), Some(t));
        assert_eq!(t.date_shanghai(), Date::new(2024, 3, 1).unwrap());
        assert_eq!(Timestamp::parse("2024-13-01T00:00:00Z"), None);
        assert_eq!(Timestamp::parse("yesterday"), None);
        assert_eq!(Timestamp::parse(""), None);
    }
}
