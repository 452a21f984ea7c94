//! Item-item cosine similarity over the sets of subjects that started each service: the
//! long-range collaborative signal (a feature and a candidate source of the model, and the
//! item-kNN baseline of the evaluation).

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tongban_features::domain::is_start;
use tongban_features::io::EventLog;

/// Distinct services per subject counted at most (the most recent ones): a subject with
/// thousands of services would otherwise add millions of pairs and little signal.
pub const MAX_ITEMS_PER_SUBJECT: usize = 200;

/// Each service's most similar services, compressed rows sorted by descending similarity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemSims {
    offsets: Vec<u32>,
    nbrs: Vec<(u32, f32)>,
}

fn distinct_recent(evs: &[tongban_features::io::LogEvent], out: &mut Vec<u32>) {
    out.clear();
    for e in evs.iter().rev().filter(|e| is_start(e.kind, e.channel)) {
        if out.len() == MAX_ITEMS_PER_SUBJECT {
            break;
        }
        if !out.contains(&e.service) {
            out.push(e.service);
        }
    }
    out.sort_unstable();
}

impl ItemSims {
    /// Similarities of `services` services from `log`, keeping `keep` neighbours per service.
    pub fn build(log: &EventLog, services: usize, keep: usize) -> ItemSims {
        let mut users = vec![0u32; services];
        let mut co: FxHashMap<u64, u32> = FxHashMap::default();
        let mut items = Vec::new();
        for evs in log.by_subject() {
            distinct_recent(evs, &mut items);
            for (i, &a) in items.iter().enumerate() {
                if let Some(u) = users.get_mut(a as usize) {
                    *u += 1;
                }
                for &b in &items[i + 1..] {
                    *co.entry(u64::from(a) << 32 | u64::from(b)).or_default() += 1;
                }
            }
        }
        let pairs = co.into_iter().map(|(k, c)| ((k >> 32) as u32, k as u32, c));
        let mut rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); services];
        for (a, b, c) in pairs {
            let (a, b) = (a as usize, b as usize);
            if a >= services || b >= services {
                continue;
            }
            let s = c as f32 / ((users[a] as f32) * (users[b] as f32)).sqrt();
            rows[a].push((b as u32, s));
            rows[b].push((a as u32, s));
        }
        let mut out = ItemSims { offsets: Vec::with_capacity(services + 1), nbrs: Vec::new() };
        out.offsets.push(0);
        for mut row in rows {
            row.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            row.truncate(keep);
            out.nbrs.extend(row);
            out.offsets.push(out.nbrs.len() as u32);
        }
        out
    }

    pub fn services(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// The neighbours of a service, most similar first.
    pub fn row(&self, s: u32) -> &[(u32, f32)] {
        let i = s as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.nbrs[a as usize..b as usize],
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tongban_features::io::{read_log_from, BadRowPolicy, LogFormat};

    #[test]
    fn cosine_over_the_subjects_of_each_service() {
        let text = "1 a b\n2 a b c\n3 c d\n4 a c\n";
        let (log, _) = read_log_from(text.as_bytes(), Path::new("t"), LogFormat::Lines, BadRowPolicy::Fail).unwrap();
        let n = log.services.len();
        let sims = ItemSims::build(&log, n, 10);
        let (a, b) = (log.services.get("a").unwrap(), log.services.get("b").unwrap());
        // a: {1,2,4}, b: {1,2}: 2 / sqrt(3 * 2).
        let ab = sims.row(a).iter().find(|x| x.0 == b).unwrap().1;
        assert!((ab - 2.0 / 6f32.sqrt()).abs() < 1e-6);
        // Rows are sorted best first and never hold the service itself.
        for s in 0..n as u32 {
            let r = sims.row(s);
            assert!(r.windows(2).all(|w| w[0].1 >= w[1].1));
            assert!(r.iter().all(|x| x.0 != s));
        }
        assert_eq!(sims.row(99), &[]);
    }
}
