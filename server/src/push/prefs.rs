//! A subject's choices: consent to pushes, categories, quiet hours, language, channels.

use serde::{Deserialize, Serialize};
use tongban_features::catalogue::Stage;

use crate::locale::Locale;

/// A subject's choices about pushes and suggestions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Preferences {
    /// The off switch for every push.
    pub push: bool,
    /// Life stages the subject does not want pushes about.
    #[schema(schema_with = crate::openapi::stages)]
    pub categories_off: Vec<Stage>,
    /// Quiet hours in local time, `[start, end)`, e.g. `[22, 8]`; pushes wait until the end.
    #[schema(schema_with = crate::openapi::quiet_hours)]
    pub quiet_hours: Option<[u8; 2]>,
    /// Offset of the subject's time zone from UTC in minutes (Asia/Shanghai: 480).
    pub utc_offset_minutes: i32,
    /// Suggestions from the subject's history (false: popularity only, PIPL art. 24).
    pub personalised: bool,
    #[schema(schema_with = crate::openapi::locale_tag)]
    pub locale: Locale,
    /// Outbound channels the subject allowed besides the portal inbox (always on). The webhook
    /// gateway receives a push only when this is not empty.
    #[schema(schema_with = crate::openapi::outbound)]
    pub channels: Vec<Outbound>,
}

/// An outbound channel a subject may allow (through the webhook gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outbound {
    Sms,
    App,
}

impl Outbound {
    pub const ALL: [Outbound; 2] = [Outbound::Sms, Outbound::App];

    pub fn as_str(self) -> &'static str {
        match self {
            Outbound::Sms => "sms",
            Outbound::App => "app",
        }
    }

    pub fn parse(s: &str) -> Option<Outbound> {
        Outbound::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            push: true,
            categories_off: Vec::new(),
            quiet_hours: Some([22, 8]),
            utc_offset_minutes: 480,
            personalised: true,
            locale: Locale::ZhCn,
            channels: Vec::new(),
        }
    }
}

impl Preferences {
    /// Checks ranges; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if let Some([a, b]) = self.quiet_hours {
            if a > 23 || b > 23 {
                return Err("quiet_hours: hours must be 0 to 23".into());
            }
        }
        if !(-14 * 60..=14 * 60).contains(&self.utc_offset_minutes) {
            return Err("utc_offset_minutes: expected -840 to 840".into());
        }
        Ok(())
    }

    /// The first instant at or after `at` outside quiet hours.
    pub fn deliverable_at(&self, at: i64) -> i64 {
        let Some([start, end]) = self.quiet_hours else { return at };
        if start == end {
            return at;
        }
        let offset = i64::from(self.utc_offset_minutes) * 60;
        let local = at + offset;
        let hour = (local.rem_euclid(86_400) / 3600) as u8;
        let quiet = if start < end { hour >= start && hour < end } else { hour >= start || hour < end };
        if !quiet {
            return at;
        }
        let day = local.div_euclid(86_400) * 86_400;
        let mut end_local = day + i64::from(end) * 3600;
        if end_local <= local {
            end_local += 86_400;
        }
        end_local - offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tongban_features::time::Timestamp;

    #[test]
    fn quiet_hours_defer_to_their_end_in_the_subjects_time_zone() {
        let p = Preferences::default(); // 22:00-08:00, UTC+8
                                        // 2026-01-01 23:30 Shanghai = 15:30 UTC -> deliver at 08:00 Shanghai = 00:00 UTC next day.
        let at = Timestamp::parse("2026-01-01T15:30:00Z").unwrap().0;
        let want = Timestamp::parse("2026-01-02T00:00:00Z").unwrap().0;
        assert_eq!(p.deliverable_at(at), want);
        // 07:59 Shanghai -> 08:00 the same day.
        let at = Timestamp::parse("2026-01-01T23:59:00Z").unwrap().0;
        assert_eq!(p.deliverable_at(at), want);
        // 12:00 Shanghai: now.
        let noon = Timestamp::parse("2026-01-02T04:00:00Z").unwrap().0;
        assert_eq!(p.deliverable_at(noon), noon);
        let none = Preferences { quiet_hours: None, ..Preferences::default() };
        assert_eq!(none.deliverable_at(at), at);
    }

    #[test]
    fn stored_preferences_keep_their_wire_format() {
        let p = Preferences { channels: vec![Outbound::App], locale: Locale::En, ..Preferences::default() };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["locale"], "en");
        assert_eq!(json["channels"], serde_json::json!(["app"]));
        let back: Preferences = serde_json::from_str(r#"{"locale": "zh", "channels": ["sms"]}"#).unwrap();
        assert_eq!((back.locale, back.channels), (Locale::ZhCn, vec![Outbound::Sms]));
    }
}
