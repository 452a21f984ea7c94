//! Item statistics from a whole log: popularity (overall, per segment, recent), first- and
//! second-order transitions, co-occurrence within a window, and typical delays.
//!
//! Statistics count *starts* (see [`crate::domain::is_start`]): one per use of a service, so an
//! application and its completion do not make a transition from a service to itself, while a
//! real repeat (a renewal, a monthly claim, a re-edited page) does.
//!
//! Built in one streaming pass over the log sorted by (subject, time); subjects are split into
//! chunks counted in parallel (rayon) and merged.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::domain::is_start;
use crate::io::{EventLog, LogEvent};

/// Transition and co-occurrence rows keep their this many largest counts (the tail changes no
/// top-k list and would make every subject's feature preparation slower).
pub const ROW_KEEP: usize = 50;

/// Delay histogram bins: bin 0 is under one day, bin k covers [2^(k-1), 2^k) days.
pub const DELAY_BINS: usize = 14;

/// Parameters of [`ItemStats::build`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsParams {
    /// Two starts of one subject within this many days co-occur.
    pub cooc_window_days: f32,
    /// The recent-popularity window ends at `now` and lasts this many days.
    pub recent_days: f32,
    /// Segment count (segment indices are `0..segments`).
    pub segments: usize,
}

impl Default for StatsParams {
    fn default() -> Self {
        StatsParams { cooc_window_days: 30.0, recent_days: 90.0, segments: 1 }
    }
}

/// One outgoing edge of a sparse row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub to: u32,
    pub count: u32,
}

/// Rows of sparse counts, compressed (CSR): row `i` is `edges[offsets[i]..offsets[i+1]]`,
/// sorted by `to`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sparse {
    offsets: Vec<u32>,
    edges: Vec<Edge>,
    totals: Vec<u32>,
}

impl Sparse {
    /// Rows from pair counts, keeping the `keep` largest counts of each row (ties: smaller
    /// target); totals count every pair, so probabilities stay those of the full data.
    fn from_map(n: usize, map: &FxHashMap<(u32, u32), u32>, keep: usize) -> Sparse {
        let mut pairs: Vec<(u32, u32, u32)> = map.iter().map(|(&(a, b), &c)| (a, b, c)).collect();
        pairs.sort_unstable_by(|x, y| x.0.cmp(&y.0).then(y.2.cmp(&x.2)).then(x.1.cmp(&y.1)));
        let mut offsets = vec![0u32; n + 1];
        let mut totals = vec![0u32; n];
        let mut edges = Vec::with_capacity(pairs.len().min(n * keep));
        for row in pairs.chunk_by(|x, y| x.0 == y.0) {
            let a = row[0].0 as usize;
            totals[a] = row.iter().map(|x| x.2).sum();
            let start = edges.len();
            edges.extend(row.iter().take(keep).map(|&(_, to, count)| Edge { to, count }));
            edges[start..].sort_unstable_by_key(|e| e.to);
            offsets[a + 1] = (edges.len() - start) as u32;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        Sparse { offsets, edges, totals }
    }

    /// The edges leaving `from`, sorted by target.
    pub fn row(&self, from: u32) -> &[Edge] {
        let i = from as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.edges[a as usize..b as usize],
            _ => &[],
        }
    }

    /// Sum of the counts leaving `from`.
    pub fn total(&self, from: u32) -> u32 {
        self.totals.get(from as usize).copied().unwrap_or(0)
    }

    /// Count of `from -> to`.
    pub fn get(&self, from: u32, to: u32) -> u32 {
        let row = self.row(from);
        row.binary_search_by_key(&to, |e| e.to).map_or(0, |i| row[i].count)
    }

    /// `count(from -> to) / total(from)`, 0 when `from` was never seen.
    pub fn prob(&self, from: u32, to: u32) -> f32 {
        let t = self.total(from);
        if t == 0 {
            0.0
        } else {
            self.get(from, to) as f32 / t as f32
        }
    }

    pub fn nnz(&self) -> usize {
        self.edges.len()
    }
}

/// Counts gathered from one chunk of subjects, merged afterwards.
#[derive(Debug, Default)]
struct Partial {
    pop: Vec<u32>,
    pop_segment: Vec<u32>,
    pop_recent: Vec<u32>,
    pop_season: Vec<u32>,
    trans1: FxHashMap<(u32, u32), u32>,
    trans2: FxHashMap<(u64, u32), u32>,
    cooc: FxHashMap<(u32, u32), u32>,
    delays: FxHashMap<(u32, u32), [u32; DELAY_BINS]>,
    starts: u64,
}

impl Partial {
    fn merge(mut self, o: Partial) -> Partial {
        for (a, b) in [
            (&mut self.pop, o.pop),
            (&mut self.pop_segment, o.pop_segment),
            (&mut self.pop_recent, o.pop_recent),
            (&mut self.pop_season, o.pop_season),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for (k, v) in o.trans1 {
            *self.trans1.entry(k).or_default() += v;
        }
        for (k, v) in o.trans2 {
            *self.trans2.entry(k).or_default() += v;
        }
        for (k, v) in o.cooc {
            *self.cooc.entry(k).or_default() += v;
        }
        for (k, v) in o.delays {
            let h = self.delays.entry(k).or_insert([0; DELAY_BINS]);
            for (x, y) in h.iter_mut().zip(v) {
                *x += y;
            }
        }
        self.starts += o.starts;
        self
    }
}

/// The delay bin of a number of days.
pub fn delay_bin(days: f64) -> usize {
    if days < 1.0 {
        0
    } else {
        ((days.log2().floor() as usize) + 1).min(DELAY_BINS - 1)
    }
}

/// The lower edge, in days, of a delay bin.
pub fn bin_days(bin: usize) -> f64 {
    if bin == 0 {
        0.0
    } else {
        f64::from(1u32 << (bin - 1))
    }
}

/// Item statistics of a log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ItemStats {
    services: usize,
    segments: usize,
    pop: Vec<u32>,
    /// `segments * services`, row-major by segment.
    pop_segment: Vec<u32>,
    segment_totals: Vec<u32>,
    pop_recent: Vec<u32>,
    /// `segments * services`: starts in the same season one year earlier, i.e. in
    /// `[now - 365 d, now - 365 d + recent_days)`.
    pop_season: Vec<u32>,
    season_totals: Vec<u32>,
    pop_max: u32,
    recent_max: u32,
    trans1: Sparse,
    /// (a, b) -> next, keyed by `a * services + b`.
    trans2: FxHashMap<u64, Vec<Edge>>,
    cooc: Sparse,
    delays: FxHashMap<(u32, u32), [u32; DELAY_BINS]>,
    starts: u64,
}

impl ItemStats {
    /// Builds the statistics of a sorted log. `segments[s]` is the segment of subject `s`
    /// (missing subjects are segment 0); `now` ends the recent-popularity window.
    pub fn build(log: &EventLog, segments: &[u16], now: i64, params: &StatsParams) -> ItemStats {
        use rayon::prelude::*;
        let n = log.services.len();
        let groups: Vec<&[LogEvent]> = log.by_subject().collect();
        let nseg = params.segments.max(1);
        let window = (f64::from(params.cooc_window_days) * 86_400.0) as i64;
        let recent_from = now - (f64::from(params.recent_days) * 86_400.0) as i64;
        let season = (now - 365 * 86_400, now - 365 * 86_400 + (now - recent_from));
        let p = groups
            .par_chunks(4096.max(groups.len() / 64 + 1))
            .map(|chunk| {
                let mut p = Partial {
                    pop: vec![0; n],
                    pop_segment: vec![0; n * nseg],
                    pop_recent: vec![0; n],
                    pop_season: vec![0; n * nseg],
                    ..Partial::default()
                };
                let mut starts: Vec<(i64, u32)> = Vec::new();
                for evs in chunk {
                    let seg = segments.get(evs[0].subject as usize).map_or(0, |&s| (s as usize).min(nseg - 1));
                    starts.clear();
                    starts.extend(evs.iter().filter(|e| is_start(e.kind, e.channel)).map(|e| (e.at.0, e.service)));
                    count_subject(&starts, seg, n, window, (recent_from, now), season, &mut p);
                }
                p
            })
            .reduce_with(Partial::merge)
            .unwrap_or_else(|| Partial {
                pop: vec![0; n],
                pop_segment: vec![0; n * nseg],
                pop_recent: vec![0; n],
                pop_season: vec![0; n * nseg],
                ..Partial::default()
            });
        let mut trans2: FxHashMap<u64, Vec<Edge>> = FxHashMap::default();
        for ((ab, c), count) in p.trans2 {
            trans2.entry(ab).or_default().push(Edge { to: c, count });
        }
        for row in trans2.values_mut() {
            row.sort_unstable_by_key(|e| e.to);
        }
        let segment_totals = (0..nseg).map(|s| p.pop_segment[s * n..(s + 1) * n].iter().sum()).collect();
        let season_totals = (0..nseg).map(|s| p.pop_season[s * n..(s + 1) * n].iter().sum()).collect();
        ItemStats {
            services: n,
            segments: nseg,
            pop_max: p.pop.iter().copied().max().unwrap_or(0),
            recent_max: p.pop_recent.iter().copied().max().unwrap_or(0),
            pop: p.pop,
            pop_segment: p.pop_segment,
            segment_totals,
            season_totals,
            pop_season: p.pop_season,
            pop_recent: p.pop_recent,
            trans1: Sparse::from_map(n, &p.trans1, ROW_KEEP),
            trans2,
            cooc: Sparse::from_map(n, &p.cooc, ROW_KEEP),
            delays: p.delays,
            starts: p.starts,
        }
    }

    /// Segments with their own statistics (a larger segment reads the last one's).
    pub fn segments(&self) -> usize {
        self.segments
    }
    pub fn services(&self) -> usize {
        self.services
    }
    pub fn starts(&self) -> u64 {
        self.starts
    }
    pub fn pop(&self, s: u32) -> u32 {
        self.pop.get(s as usize).copied().unwrap_or(0)
    }
    pub fn pop_max(&self) -> u32 {
        self.pop_max
    }
    pub fn pop_recent(&self, s: u32) -> u32 {
        self.pop_recent.get(s as usize).copied().unwrap_or(0)
    }
    pub fn recent_max(&self) -> u32 {
        self.recent_max
    }
    /// Share of the segment's starts that went to `s`.
    pub fn segment_share(&self, segment: u16, s: u32) -> f32 {
        let seg = (segment as usize).min(self.segments - 1);
        let t = self.segment_totals[seg];
        if t == 0 || s as usize >= self.services {
            return 0.0;
        }
        self.pop_segment[seg * self.services + s as usize] as f32 / t as f32
    }
    /// Share of the segment's starts that went to `s` in the same season one year earlier.
    pub fn season_share(&self, segment: u16, s: u32) -> f32 {
        let seg = (segment as usize).min(self.segments - 1);
        let t = self.season_totals[seg];
        if t == 0 || s as usize >= self.services {
            return 0.0;
        }
        self.pop_season[seg * self.services + s as usize] as f32 / t as f32
    }

    pub fn trans1(&self) -> &Sparse {
        &self.trans1
    }
    pub fn cooc(&self) -> &Sparse {
        &self.cooc
    }
    /// Second-order transitions after `a` then `b`.
    pub fn trans2_row(&self, a: u32, b: u32) -> &[Edge] {
        self.trans2.get(&(u64::from(a) * self.services as u64 + u64::from(b))).map_or(&[], |v| v.as_slice())
    }
    /// Median and spread (interquartile range) in days of the delay from a start of `a` to the
    /// next start being `b`, from the histogram; `None` if never seen.
    pub fn delay(&self, a: u32, b: u32) -> Option<(f64, f64)> {
        let h = self.delays.get(&(a, b))?;
        let total: u32 = h.iter().sum();
        let quantile = |q: f64| {
            let target = q * f64::from(total);
            let mut acc = 0.0;
            for (bin, &c) in h.iter().enumerate() {
                acc += f64::from(c);
                if acc >= target && c > 0 {
                    // Geometric middle of the bin.
                    return if bin == 0 { 0.5 } else { bin_days(bin) * std::f64::consts::SQRT_2 };
                }
            }
            bin_days(DELAY_BINS - 1)
        };
        Some((quantile(0.5), quantile(0.75) - quantile(0.25)))
    }
}

fn count_subject(
    starts: &[(i64, u32)],
    seg: usize,
    n: usize,
    window: i64,
    recent: (i64, i64),
    season: (i64, i64),
    p: &mut Partial,
) {
    p.starts += starts.len() as u64;
    for (k, &(at, s)) in starts.iter().enumerate() {
        p.pop[s as usize] += 1;
        p.pop_segment[seg * n + s as usize] += 1;
        if at >= recent.0 && at < recent.1 {
            p.pop_recent[s as usize] += 1;
        }
        if at >= season.0 && at < season.1 {
            p.pop_season[seg * n + s as usize] += 1;
        }
        if k >= 1 {
            let (prev_at, prev) = starts[k - 1];
            *p.trans1.entry((prev, s)).or_default() += 1;
            let days = (at - prev_at) as f64 / 86_400.0;
            p.delays.entry((prev, s)).or_insert([0; DELAY_BINS])[delay_bin(days)] += 1;
            if k >= 2 {
                let key = u64::from(starts[k - 2].1) * n as u64 + u64::from(prev);
                *p.trans2.entry((key, s)).or_default() += 1;
            }
        }
        // Co-occurrence with earlier starts inside the window, both directions.
        for &(t, o) in starts[..k].iter().rev() {
            if at - t > window {
                break;
            }
            if o != s {
                *p.cooc.entry((o, s)).or_default() += 1;
                *p.cooc.entry((s, o)).or_default() += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{read_log_from, BadRowPolicy, LogFormat};

    fn log(text: &str) -> EventLog {
        read_log_from(text.as_bytes(), std::path::Path::new("t"), LogFormat::Lines, BadRowPolicy::Fail).unwrap().0
    }

    #[test]
    fn transitions_count_consecutive_starts_per_subject() {
        let l = log("u1 a b c\nu2 a b b\nu3 c\n");
        let st = ItemStats::build(&l, &[], 1_000, &StatsParams::default());
        let id = |s: &str| l.services.get(s).unwrap();
        let (a, b, c) = (id("a"), id("b"), id("c"));
        assert_eq!(st.pop(a), 2);
        assert_eq!(st.pop(b), 3);
        assert_eq!(st.trans1().get(a, b), 2);
        assert_eq!(st.trans1().prob(b, c), 0.5);
        assert_eq!(st.trans1().prob(b, b), 0.5);
        // No transition across subjects: u2's last b is not followed by u3's c.
        assert_eq!(st.trans1().total(c), 0);
        assert_eq!(st.trans2_row(a, b).len(), 2);
        // Positions are one second apart, so everything co-occurs within 30 days; never itself.
        assert_eq!(st.cooc().get(a, c), 1);
        assert_eq!(st.cooc().get(b, b), 0);
        assert_eq!(st.delay(a, b).map(|d| d.0), Some(0.5));
    }

    #[test]
    fn delay_bins_double() {
        assert_eq!(delay_bin(0.3), 0);
        assert_eq!(delay_bin(1.0), 1);
        assert_eq!(delay_bin(3.9), 2);
        assert_eq!(delay_bin(4.0), 3);
        assert_eq!(delay_bin(1e9), DELAY_BINS - 1);
    }
}
