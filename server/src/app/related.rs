//! Services related to one service: those that follow it (first-order transitions), then those
//! used around it (co-occurrence, at half weight).

use tongban_model::Model;

/// Up to `k` related services of `idx`, best first, as (score, service).
pub fn related(model: &Model, idx: u32, k: usize) -> Vec<(f32, u32)> {
    let st = model.stats();
    let mut scored: Vec<(f32, u32)> = Vec::new();
    for e in st.trans1().row(idx) {
        scored.push((st.trans1().prob(idx, e.to), e.to));
    }
    let pop = st.pop(idx).max(1) as f32;
    for e in st.cooc().row(idx) {
        let v = e.count as f32 / pop * 0.5;
        match scored.iter_mut().find(|x| x.1 == e.to) {
            Some(x) => x.0 += v,
            None => scored.push((v, e.to)),
        }
    }
    scored.retain(|x| x.1 != idx);
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.truncate(k);
    scored
}
