//! Colour tables over the window: the user-defined look of the planes (a colour map instead of
//! grey) and the transfer function of the volume rendering (colour and opacity).
//!
//! A table has 256 entries from the window's lower edge (0) to its upper edge (255); values
//! between entries are interpolated linearly, on the GPU and in the CPU reference alike.
//! Tables are written as text, one control point a line: `position red green blue [opacity]`,
//! all from 0 to 1, positions rising; `#` starts a comment. Between control points the colour
//! changes linearly.

use crate::RenderError;

pub const ENTRIES: usize = 256;

#[derive(Clone, Debug, PartialEq)]
pub struct Lut {
    pub name: String,
    /// RGBA, 0..1.
    pub entries: Vec<[f32; 4]>,
}

impl Lut {
    /// The table through `points` (position, RGBA), interpolated linearly; before the first and
    /// after the last point the colour stays.
    pub fn from_points(name: &str, points: &[(f32, [f32; 4])]) -> Result<Self, RenderError> {
        let bad = |line: usize, problem: String| RenderError::Lut { name: name.to_owned(), line, problem };
        if points.is_empty() {
            return Err(bad(0, "no control points".into()));
        }
        for (n, w) in points.windows(2).enumerate() {
            if w[1].0 < w[0].0 {
                return Err(bad(n + 2, format!("position {} comes after {}: positions must rise", w[1].0, w[0].0)));
            }
        }
        let (first, last) = (points[0], points[points.len() - 1]);
        let entries = (0..ENTRIES)
            .map(|e| {
                let t = e as f32 / (ENTRIES - 1) as f32;
                if t <= first.0 {
                    return first.1;
                }
                if t >= last.0 {
                    return last.1;
                }
                let segment = points.windows(2).find(|w| w[0].0 <= t && t <= w[1].0);
                let Some(&[(p0, c0), (p1, c1)]) = segment else { return last.1 };
                let f = if p1 > p0 { (t - p0) / (p1 - p0) } else { 1.0 };
                [0, 1, 2, 3].map(|c| c0[c] + (c1[c] - c0[c]) * f)
            })
            .collect();
        Ok(Self { name: name.to_owned(), entries })
    }

    /// Reads a table's text (see the module's description); `name` names it in errors.
    pub fn parse(name: &str, text: &str) -> Result<Self, RenderError> {
        let bad = |line: usize, problem: String| RenderError::Lut { name: name.to_owned(), line, problem };
        let mut points = Vec::new();
        for (n, line) in text.lines().enumerate().map(|(n, l)| (n + 1, l)) {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let numbers: Vec<f32> = line
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|w| !w.is_empty())
                .map(|w| w.parse::<f32>().map_err(|_| bad(n, format!("'{w}' is not a number"))))
                .collect::<Result<_, _>>()?;
            if !(4..=5).contains(&numbers.len()) {
                return Err(bad(
                    n,
                    format!("expected position, red, green, blue [, opacity]; found {} numbers", numbers.len()),
                ));
            }
            if let Some(v) = numbers.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                return Err(bad(n, format!("{v} is outside 0..1")));
            }
            if let Some(&(previous, _)) = points.last()
                && numbers[0] < previous
            {
                return Err(bad(n, format!("position {} comes after {previous}: positions must rise", numbers[0])));
            }
            points.push((numbers[0], [numbers[1], numbers[2], numbers[3], numbers.get(4).copied().unwrap_or(1.0)]));
        }
        Self::from_points(name, &points)
    }

    /// The built-in tables: `grey`, `hot`, `bone` (bluish grey) and, for volume rendering,
    /// `tissue` (soft tissue translucent red, bright structures opaque ivory).
    pub fn preset(name: &str) -> Option<Self> {
        let points: &[(f32, [f32; 4])] = match name {
            "grey" => &[(0.0, [0.0, 0.0, 0.0, 0.0]), (1.0, [1.0, 1.0, 1.0, 1.0])],
            "hot" => &[
                (0.0, [0.0, 0.0, 0.0, 0.0]),
                (1.0 / 3.0, [1.0, 0.0, 0.0, 1.0 / 3.0]),
                (2.0 / 3.0, [1.0, 1.0, 0.0, 2.0 / 3.0]),
                (1.0, [1.0, 1.0, 1.0, 1.0]),
            ],
            "bone" => &[
                (0.0, [0.0, 0.0, 0.0, 0.0]),
                (0.375, [0.32, 0.32, 0.45, 0.375]),
                (0.75, [0.65, 0.78, 0.78, 0.75]),
                (1.0, [1.0, 1.0, 1.0, 1.0]),
            ],
            "tissue" => &[
                (0.0, [0.0, 0.0, 0.0, 0.0]),
                (0.3, [0.7, 0.25, 0.2, 0.05]),
                (0.6, [0.9, 0.55, 0.45, 0.3]),
                (1.0, [1.0, 0.97, 0.9, 1.0]),
            ],
            _ => return None,
        };
        Self::from_points(name, points).ok()
    }

    pub const PRESETS: [&'static str; 4] = ["grey", "hot", "bone", "tissue"];

    /// The colour at `t` (0..1 over the window), interpolated between entries as the shader does.
    pub fn at(&self, t: f32) -> [f32; 4] {
        let x = t.clamp(0.0, 1.0) * (ENTRIES - 1) as f32;
        let i = (x.floor() as usize).min(ENTRIES - 2);
        let f = x - i as f32;
        let (a, b) = (self.entries[i], self.entries[i + 1]);
        [0, 1, 2, 3].map(|c| a[c] + (b[c] - a[c]) * f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_points_interpolate_and_presets_exist() -> Result<(), RenderError> {
        let grey = Lut::preset("grey").ok_or(RenderError::Readback("no grey".into()))?;
        assert_eq!(grey.entries[0], [0.0; 4]);
        assert_eq!(grey.entries[255], [1.0; 4]);
        assert!((grey.at(0.5)[0] - 0.5).abs() < 1e-6);
        let hot = Lut::preset("hot").ok_or(RenderError::Readback("no hot".into()))?;
        assert!((hot.at(0.5)[0] - 1.0).abs() < 1e-6 && (hot.at(0.5)[1] - 0.5).abs() < 0.01, "{:?}", hot.at(0.5));
        assert!(Lut::PRESETS.iter().all(|p| Lut::preset(p).is_some()));
        Ok(())
    }

    #[test]
    fn text_tables_read_and_bad_ones_name_the_line() -> Result<(), RenderError> {
        let lut = Lut::parse("mine.lut", "# a ramp to red\n0 0 0 0 0\n0.5, 1, 0, 0\n1 1 1 1 0.5\n")?;
        assert_eq!(lut.entries[0], [0.0, 0.0, 0.0, 0.0]);
        assert!((lut.at(0.25)[0] - 0.5).abs() < 0.01);
        assert!((lut.at(1.0)[3] - 0.5).abs() < 1e-6);
        let err = |text: &str| Lut::parse("bad.lut", text).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err("0 0 0 0\nred 1 0 0\n"), "colour table bad.lut, line 2: 'red' is not a number");
        assert_eq!(
            err("0 0 0\n"),
            "colour table bad.lut, line 1: expected position, red, green, blue [, opacity]; found 3 numbers"
        );
        assert_eq!(err("0 0 0 2\n"), "colour table bad.lut, line 1: 2 is outside 0..1");
        assert_eq!(
            err("0.5 0 0 0\n# a note\n0.2 1 1 1\n"),
            "colour table bad.lut, line 3: position 0.2 comes after 0.5: positions must rise"
        );
        assert_eq!(err("# nothing\n"), "colour table bad.lut, line 0: no control points");
        Ok(())
    }
}
