//! The languages of answers, messages and templates.

use serde::{Deserialize, Serialize};

/// A response language: zh-CN (the default) or en.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Locale {
    #[default]
    ZhCn,
    En,
}

impl Locale {
    pub const ALL: [Locale; 2] = [Locale::ZhCn, Locale::En];

    /// `zh-CN` (default, also `zh`, `zh-cn`) or `en` (also `en-US`, `en-GB`).
    pub fn parse(s: Option<&str>) -> Option<Locale> {
        match s {
            None | Some("zh-CN") | Some("zh") | Some("zh-cn") => Some(Locale::ZhCn),
            Some("en") | Some("en-US") | Some("en-GB") => Some(Locale::En),
            _ => None,
        }
    }

    pub fn tag(self) -> &'static str {
        match self {
            Locale::ZhCn => "zh-CN",
            Locale::En => "en",
        }
    }

    /// The longest SMS in characters (one segment): 70 for Chinese (UCS-2), 160 for English
    /// (GSM-7).
    pub fn sms_max_chars(self) -> usize {
        match self {
            Locale::ZhCn => 70,
            Locale::En => 160,
        }
    }
}

impl Serialize for Locale {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.tag())
    }
}

impl<'de> Deserialize<'de> for Locale {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Locale::parse(Some(&s)).ok_or_else(|| serde::de::Error::custom(format!("locale {s:?}: expected zh-CN or en")))
    }
}
