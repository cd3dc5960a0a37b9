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

/// A prostate zone, as a gland/zone model labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    Peripheral,
    Transition,
    Central,
    AnteriorStroma,
    /// The gland, without a zone.
    Gland,
}

impl Zone {
    /// The zone a model's label names (`peripheral zone`, `PZ`, `transition zone`, `TZ`,
    /// `central zone`, `CZ`, `anterior fibromuscular stroma`, `AFS`, `gland`, `prostate`,
    /// `whole gland`); none for anything else (background, lesion, …).
    pub fn from_label(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase();
        let words: Vec<&str> = n.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
        let has = |w: &str| words.contains(&w);
        if has("pz") || n.contains("peripheral") {
            Some(Self::Peripheral)
        } else if has("tz") || n.contains("transition") {
            Some(Self::Transition)
        } else if has("cz") || n.contains("central") {
            Some(Self::Central)
        } else if has("afs") || n.contains("stroma") {
            Some(Self::AnteriorStroma)
        } else if has("gland") || has("prostate") || has("wg") {
            Some(Self::Gland)
        } else {
            None
        }
    }

    pub fn abbreviation(self) -> &'static str {
        match self {
            Self::Peripheral => "PZ",
            Self::Transition => "TZ",
            Self::Central => "CZ",
            Self::AnteriorStroma => "AFS",
            Self::Gland => "gland",
        }
    }

    pub fn meaning(self) -> &'static str {
        match self {
            Self::Peripheral => "Peripheral zone",
            Self::Transition => "Transition zone",
            Self::Central => "Central zone",
            Self::AnteriorStroma => "Anterior fibromuscular stroma",
            Self::Gland => "Prostate gland",
        }
    }
}

/// Where a lesion lies in the gland: its zone (the most common among its voxels that are in
/// the gland), and a coarse sector in the spirit of PI-RADS's map: side (the patient's left or
/// right of the gland's centre), level (base, mid or apex: thirds of the gland's
/// superior–inferior extent) and anterior or posterior (of the gland's centre).
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    pub zone: Option<Zone>,
    pub side: &'static str,
    pub level: &'static str,
    pub half: &'static str,
}

impl Site {
    /// E.g. "PZ, left mid posterior".
    pub fn describe(&self) -> String {
        let zone = self.zone.map_or("outside the gland", Zone::abbreviation);
        format!("{zone}, {} {} {}", self.side, self.level, self.half)
    }
}

/// The site of the lesion made of `lesion` (voxel indices) given each voxel's `zones` (`None`
/// outside the gland) and each voxel's patient position (LPS mm: +x left, +y posterior, +z
/// superior); none when no voxel is in the gland.
pub fn lesion_site(lesion: &[usize], zones: &[Option<Zone>], position: &dyn Fn(usize) -> [f64; 3]) -> Option<Site> {
    let gland: Vec<usize> = (0..zones.len()).filter(|&i| zones[i].is_some()).collect();
    if gland.is_empty() || lesion.is_empty() {
        return None;
    }
    let mean = |voxels: &[usize]| {
        let n = voxels.len() as f64;
        voxels.iter().fold([0.0; 3], |acc, &i| {
            let p = position(i);
            [acc[0] + p[0] / n, acc[1] + p[1] / n, acc[2] + p[2] / n]
        })
    };
    let (gland_centre, centre) = (mean(&gland), mean(lesion));
    let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
    for &i in &gland {
        let z = position(i)[2];
        low = low.min(z);
        high = high.max(z);
    }
    let mut counts: Vec<(Zone, usize)> = Vec::new();
    for z in lesion.iter().filter_map(|&i| zones.get(i).copied().flatten()) {
        match counts.iter_mut().find(|(k, _)| *k == z) {
            Some((_, n)) => *n += 1,
            None => counts.push((z, 1)),
        }
    }
    let zone = counts.iter().max_by_key(|(_, n)| *n).map(|(z, _)| *z);
    let third = (high - low) / 3.0;
    Some(Site {
        zone,
        side: if centre[0] >= gland_centre[0] { "left" } else { "right" },
        level: if centre[2] >= high - third {
            "base"
        } else if centre[2] >= low + third {
            "mid"
        } else {
            "apex"
        },
        half: if centre[1] >= gland_centre[1] { "posterior" } else { "anterior" },
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_come_from_label_names() {
        assert_eq!(Zone::from_label("peripheral zone"), Some(Zone::Peripheral));
        assert_eq!(Zone::from_label("PZ"), Some(Zone::Peripheral));
        assert_eq!(Zone::from_label("TZ"), Some(Zone::Transition));
        assert_eq!(Zone::from_label("whole gland"), Some(Zone::Gland));
        assert_eq!(Zone::from_label("lesion"), None);
        assert_eq!(Zone::from_label("background"), None);
        // "tz" inside a word is not the transition zone.
        assert_eq!(Zone::from_label("blitz"), None);
    }

    #[test]
    fn a_lesion_gets_its_zone_side_level_and_half() {
        // A 10 × 10 × 9 gland of 1 mm voxels: PZ in the posterior half (y ≥ 5), TZ in front.
        let (nx, ny, nz) = (10, 10, 9);
        let position = |i: usize| [(i % nx) as f64, ((i / nx) % ny) as f64, (i / (nx * ny)) as f64];
        let zones: Vec<Option<Zone>> = (0..nx * ny * nz)
            .map(|i| Some(if position(i)[1] >= 5.0 { Zone::Peripheral } else { Zone::Transition }))
            .collect();
        let select = |keep: &dyn Fn([f64; 3]) -> bool| -> Vec<usize> {
            (0..nx * ny * nz).filter(|&i| keep(position(i))).collect()
        };
        // Patient-left (x high), posterior (y high), in the top slices (base).
        let lesion = select(&|p| p[0] >= 7.0 && p[1] >= 7.0 && p[2] >= 7.0);
        let site = lesion_site(&lesion, &zones, &position).map(|s| s.describe());
        assert_eq!(site.as_deref(), Some("PZ, left base posterior"));
        let front = select(&|p| p[0] <= 2.0 && p[1] <= 2.0 && p[2] <= 1.0);
        let site = lesion_site(&front, &zones, &position).map(|s| s.describe());
        assert_eq!(site.as_deref(), Some("TZ, right apex anterior"));
        assert_eq!(lesion_site(&lesion, &vec![None; zones.len()], &position), None);
    }
}
