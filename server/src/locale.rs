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

    /// The values a `locale` parameter accepts.
    pub const ACCEPTED: [(&'static str, Locale); 6] = [
        ("zh-CN", Locale::ZhCn),
        ("zh", Locale::ZhCn),
        ("zh-cn", Locale::ZhCn),
        ("en", Locale::En),
        ("en-US", Locale::En),
        ("en-GB", Locale::En),
    ];

    /// `zh-CN` (default, also `zh`, `zh-cn`) or `en` (also `en-US`, `en-GB`).
    pub fn parse(s: Option<&str>) -> Option<Locale> {
        match s {
            None => Some(Locale::ZhCn),
            Some(s) => Locale::ACCEPTED.iter().find(|(tag, _)| *tag == s).map(|&(_, l)| l),
        }
    }

    /// The language an `Accept-Language` header prefers among ours: the highest weight whose
    /// primary subtag is `zh` or `en` (so zh-TW or en-AU still get Chinese or English; `*` or
    /// nothing we have: `None`). Hand-written: the crates for this match whole tags only, and
    /// a portal serving zh-CN must answer a zh-HK browser in Chinese.
    pub fn from_accept_language(header: &str) -> Option<Locale> {
        let mut best: Option<(f32, usize, Locale)> = None;
        for (i, part) in header.split(',').enumerate().take(32) {
            let mut fields = part.split(';');
            let tag = fields.next().unwrap_or("").trim();
            let q = fields
                .find_map(|f| f.trim().strip_prefix("q="))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)));
            let primary = tag.split('-').next().unwrap_or("").to_ascii_lowercase();
            let locale = match primary.as_str() {
                "zh" => Locale::ZhCn,
                "en" => Locale::En,
                _ => continue,
            };
            let Some(q) = q.filter(|&q| q > 0.0) else { continue };
            // The first listed wins among equal weights.
            if best.is_none_or(|(bq, bi, _)| q > bq || (q == bq && i < bi)) {
                best = Some((q, i, locale));
            }
        }
        best.map(|(_, _, l)| l)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_heaviest_of_our_languages() {
        assert_eq!(Locale::from_accept_language("en-US,en;q=0.9,zh-CN;q=0.8"), Some(Locale::En));
        assert_eq!(Locale::from_accept_language("fr;q=1, zh-HK;q=0.7, en;q=0.5"), Some(Locale::ZhCn));
        assert_eq!(Locale::from_accept_language("zh;q=0.2, EN-gb;q=0.3"), Some(Locale::En));
        assert_eq!(Locale::from_accept_language("en;q=0, fr"), None);
        assert_eq!(Locale::from_accept_language("*"), None);
        assert_eq!(Locale::from_accept_language("en;q=abc, zh"), Some(Locale::ZhCn));
        assert_eq!(Locale::from_accept_language(""), None);
    }
}
