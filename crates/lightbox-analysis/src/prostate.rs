//! Prostate bpMRI: lesion candidates from a detection model's probability map, the way PI-CAI's
//! dynamic lesion extraction makes them (report_guided_annotation's "dynamic-v2"; Bosma et al.):
//! non-overlapping lesions, one likelihood each.
//!
//! Repeatedly, until `max_lesions` are found or the map is spent:
//! 1. the threshold is the remaining map's maximum over `threshold_factor`;
//! 2. the map above it is split into 26-connected blobs; blobs of `min_voxels` voxels or fewer
//!    are dropped, and each other blob's likelihood is its maximum;
//! 3. the first blob (in memory order) with the highest likelihood is the candidate. It is kept
//!    unless it touches (26-neighbourhood) a lesion kept before, when `remove_adjacent`;
//! 4. its voxels are removed from the map either way. When only small blobs were above the
//!    threshold, everything above it is removed and the search goes on (the "v2" fix).

use lightbox_imaging::morphology::components;

use crate::AnalysisError;

#[derive(Clone, Debug)]
pub struct ExtractionOptions {
    pub min_voxels: usize,
    pub max_lesions: usize,
    pub threshold_factor: f32,
    pub remove_adjacent: bool,
    /// The search stops when the remaining map's maximum is below this.
    pub stop_below: f32,
}

impl Default for ExtractionOptions {
    fn default() -> Self {
        Self { min_voxels: 10, max_lesions: 5, threshold_factor: 2.5, remove_adjacent: true, stop_below: 0.01 }
    }
}

/// One lesion candidate: its index in the label map (1, 2, …), likelihood and size.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub index: u8,
    pub likelihood: f32,
    pub voxels: usize,
}

/// Lesion candidates of `probability` (a grid of `dims` voxels in memory order, slowest axis
/// first): the label map (0 = none) and the candidates in the order they were found.
pub fn extract_lesions(
    probability: &[f32],
    dims: [usize; 3],
    options: &ExtractionOptions,
) -> Result<(Vec<u8>, Vec<Candidate>), AnalysisError> {
    if probability.len() != dims.iter().product::<usize>() {
        return Err(AnalysisError::Input(format!("{} values for a {dims:?} grid", probability.len())));
    }
    if probability.iter().any(|p| !p.is_finite()) {
        return Err(AnalysisError::Input("the probability map holds a value that is not a number".into()));
    }
    let mut working = probability.to_vec();
    let mut labels = vec![0u8; working.len()];
    let mut candidates: Vec<Candidate> = Vec::new();
    while candidates.len() < options.max_lesions.min(usize::from(u8::MAX)) {
        let max = working.iter().copied().fold(0.0f32, f32::max);
        // An empty map ends the search whatever `stop_below` is.
        if max < options.stop_below || max <= 0.0 {
            break;
        }
        let threshold = max / options.threshold_factor;
        let above: Vec<bool> = working.iter().map(|&p| p >= threshold && p != 0.0).collect();
        let (blobs, sizes) = components(&above, dims, 26);
        // Each blob's likelihood, large enough blobs only.
        let mut likelihood = vec![0.0f32; sizes.len()];
        for (at, &b) in blobs.iter().enumerate() {
            if b > 0 && sizes[b as usize - 1] > options.min_voxels {
                likelihood[b as usize - 1] = likelihood[b as usize - 1].max(working[at]);
            }
        }
        let best = likelihood.iter().copied().fold(0.0f32, f32::max);
        if best == 0.0 {
            // Only small blobs: drop everything above the threshold and go on.
            for (w, a) in working.iter_mut().zip(&above) {
                if *a {
                    *w = 0.0;
                }
            }
            continue;
        }
        // The first blob in memory order with that likelihood.
        let chosen = blobs
            .iter()
            .find(|&&b| b > 0 && likelihood[b as usize - 1] == best)
            .copied()
            .unwrap_or_else(|| unreachable!("a blob has the best likelihood"));
        let members: Vec<usize> = (0..blobs.len()).filter(|&at| blobs[at] == chosen).collect();
        let adjacent = options.remove_adjacent && members.iter().any(|&at| touches_label(&labels, dims, at));
        if !adjacent {
            let index = candidates.len() as u8 + 1;
            for &at in &members {
                labels[at] = index;
            }
            candidates.push(Candidate { index, likelihood: best, voxels: members.len() });
        }
        for &at in &members {
            working[at] = 0.0;
        }
    }
    Ok((labels, candidates))
}

/// Whether voxel `at` or one of its 26 neighbours holds a label.
fn touches_label(labels: &[u8], [n0, n1, n2]: [usize; 3], at: usize) -> bool {
    let (i, j, k) = ((at / (n1 * n2)) as i64, ((at / n2) % n1) as i64, (at % n2) as i64);
    for a in -1..=1 {
        for b in -1..=1 {
            for c in -1..=1 {
                let (x, y, z) = (i + a, j + b, k + c);
                if x < 0 || y < 0 || z < 0 || x >= n0 as i64 || y >= n1 as i64 || z >= n2 as i64 {
                    continue;
                }
                if labels[(x as usize * n1 + y as usize) * n2 + z as usize] > 0 {
                    return true;
                }
            }
        }
    }
    false
}
