//! ITK's text transform files ("#Insight Transform File V1.0"), as elastix, ANTs and ITK-SNAP
//! write them: 3-D matrix-offset transforms (`MatrixOffsetTransformBase_double_3_3`,
//! `AffineTransform_double_3_3`). Parameterised rigid kinds (`Euler3DTransform`,
//! `VersorRigid3DTransform`) are refused by name for now.
//!
//! ITK works in LPS like DICOM, and its transforms map a point of the *fixed* image to the
//! *moving* image: `x ↦ A·(x − c) + t + c` with `A` the 9 matrix parameters (row-major), `t` the
//! last 3 and `c` the fixed parameters (the centre).

use lightbox_core::Affine3;

use crate::ImagingError;

/// The first 3-D matrix-offset transform in the file's text, as a fixed → moving map.
pub fn parse_affine(text: &str) -> Result<Affine3, ImagingError> {
    let err = |line: usize, problem: String| ImagingError::TransformFile { line, problem };
    let numbers = |line: usize, rest: &str| -> Result<Vec<f64>, ImagingError> {
        rest.split_whitespace()
            .map(|w| w.parse::<f64>().map_err(|_| err(line, format!("'{w}' is not a number"))))
            .collect()
    };
    let (mut parameters, mut centre) = (None, None);
    for (n, line) in text.lines().enumerate().map(|(n, l)| (n + 1, l.trim())) {
        if let Some(kind) = line.strip_prefix("Transform:") {
            let kind = kind.trim();
            if parameters.is_some() {
                break;
            }
            let matrix_offset = kind.starts_with("MatrixOffsetTransformBase_") || kind.starts_with("AffineTransform_");
            if !(matrix_offset && kind.ends_with("_3_3")) {
                return Err(err(n, format!("'{kind}' is not a 3-D matrix-offset transform")));
            }
        } else if let Some(rest) = line.strip_prefix("Parameters:") {
            let p = numbers(n, rest)?;
            if p.len() != 12 {
                return Err(err(n, format!("expected 12 parameters (matrix and translation), found {}", p.len())));
            }
            parameters = Some(p);
        } else if let Some(rest) = line.strip_prefix("FixedParameters:") {
            let c = numbers(n, rest)?;
            if c.len() != 3 {
                return Err(err(n, format!("expected 3 fixed parameters (the centre), found {}", c.len())));
            }
            centre = Some([c[0], c[1], c[2]]);
        }
    }
    let p = parameters.ok_or_else(|| err(text.lines().count(), "no 'Parameters:' line".into()))?;
    if p.iter().any(|v| !v.is_finite()) {
        return Err(err(0, "a parameter is not finite".into()));
    }
    let c = centre.unwrap_or([0.0; 3]);
    if c.iter().any(|v| !v.is_finite()) {
        return Err(err(0, "a fixed parameter (the centre) is not finite".into()));
    }
    let mut rows = [[0.0; 4]; 3];
    for (r, row) in rows.iter_mut().enumerate() {
        let a = [p[3 * r], p[3 * r + 1], p[3 * r + 2]];
        let ac: f64 = (0..3).map(|k| a[k] * c[k]).sum();
        *row = [a[0], a[1], a[2], p[9 + r] + c[r] - ac];
    }
    Ok(Affine3 { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "#Insight Transform File V1.0\n#Transform 0\nTransform: MatrixOffsetTransformBase_double_3_3\n\
        Parameters: 0 -1 0 1 0 0 0 0 1 1 2 3\nFixedParameters: 10 0 0\n";

    #[test]
    fn applies_matrix_about_the_centre_then_the_translation() -> Result<(), ImagingError> {
        let t = parse_affine(FILE)?;
        // x = c: A·0 + t + c.
        assert_eq!(t.transform_point([10.0, 0.0, 0.0]), [11.0, 2.0, 3.0]);
        // x = c + (1, 0, 0): A·(1,0,0) = (0, 1, 0).
        assert_eq!(t.transform_point([11.0, 0.0, 0.0]), [11.0, 3.0, 3.0]);
        Ok(())
    }

    #[test]
    fn malformed_files_name_the_line_and_the_problem() {
        let short = FILE.replace("1 2 3\n", "1 2\n");
        let message = parse_affine(&short).map(|_| String::new()).unwrap_or_else(|e| e.to_string());
        assert_eq!(message, "ITK transform file, line 4: expected 12 parameters (matrix and translation), found 11");
        let word = FILE.replace("0 -1", "0 x");
        assert!(matches!(parse_affine(&word), Err(ImagingError::TransformFile { line: 4, .. })));
        let bspline = FILE.replace("MatrixOffsetTransformBase_double_3_3", "BSplineTransform_double_3_3");
        assert!(matches!(parse_affine(&bspline), Err(ImagingError::TransformFile { line: 3, .. })));
        assert!(parse_affine("#Insight Transform File V1.0\n").is_err());
        let two_d = FILE.replace("double_3_3", "double_2_2");
        assert!(matches!(parse_affine(&two_d), Err(ImagingError::TransformFile { line: 3, .. })));
    }
}
