//! Lightbox exporter plugin: a one-page PDF summary of a result, for a referring physician's
//! file or a tumour board. It reads only the plugin manifest (JSON on stdin, see README "The
//! workflow"), writes `$LIGHTBOX_EXPORT_DIR/<study UID>/job-<N>/summary.pdf`, prints a JSON
//! status and exits 0; any other exit code is a failure, with the reason on stderr.
//!
//! The PDF says on every page that AI values are AI output, research only and not a
//! diagnosis, and which values the radiologist made. Text uses the PDF base font Helvetica
//! (nothing embedded), so characters outside Windows-1252 print as `?`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};

#[derive(serde::Deserialize)]
struct Manifest {
    job_id: i64,
    pipeline: String,
    study_uid: String,
    series_uid: String,
    summary: Summary,
}

#[derive(serde::Deserialize)]
struct Summary {
    patient_name: String,
    patient_id: String,
    study_date: String,
    study_description: String,
    series_description: String,
    modality: String,
    institution: String,
    signed_by: Option<String>,
    findings: Vec<Finding>,
    #[serde(default)]
    atrophy_plot: Option<AtrophyPlot>,
}

/// The patient's yearly brain volume change against the healthy band (see the workflow's
/// `AtrophyPlot`).
#[derive(serde::Deserialize)]
struct AtrophyPlot {
    age_years: f64,
    rate_percent_per_year: f64,
    healthy_mean: Vec<[f64; 2]>,
    healthy_band: f64,
    cutoff_percent_per_year: f64,
}

/// The plot's height on the page, with its title and axis labels, in points.
const PLOT_HEIGHT: f32 = 190.0;

#[derive(serde::Deserialize)]
struct Finding {
    label: String,
    value: f64,
    unit: String,
    source: String,
    made_by: String,
}

fn main() {
    match run() {
        Ok(path) => println!("{}", serde_json::json!({ "status": "ok", "files": [path] })),
        Err(e) => {
            eprintln!("lightbox-pdf-summary: {e:#}");
            println!("{}", serde_json::json!({ "status": "failed", "error": format!("{e:#}") }));
            std::process::exit(1);
        }
    }
}

fn run() -> anyhow::Result<PathBuf> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).context("reading the manifest from stdin")?;
    let manifest: Manifest =
        serde_json::from_str(&input).context("the manifest on stdin is not a Lightbox manifest")?;
    let Some(root) = std::env::var_os("LIGHTBOX_EXPORT_DIR") else {
        bail!("set LIGHTBOX_EXPORT_DIR to where summaries should be written");
    };
    let study = if manifest.study_uid.is_empty() { "unknown-study" } else { manifest.study_uid.as_str() };
    if study.contains(['/', '\\']) || study.contains("..") {
        bail!("study UID {study:?} is not a UID");
    }
    let dir = PathBuf::from(root).join(study).join(format!("job-{}", manifest.job_id));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("summary.pdf");
    let tmp = dir.join("summary.pdf.part");
    std::fs::write(&tmp, render(&manifest)).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}

/// Text in the base fonts' WinAnsi encoding: Latin-1 maps one to one, a few typographic marks
/// to their Windows-1252 codes; the rest becomes `?`.
fn win_ansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c {
            '€' => 0x80,
            '…' => 0x85,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '–' => 0x96,
            '—' => 0x97,
            _ => match u32::from(c) {
                0x20..=0x7e | 0xa0..=0xff => u32::from(c) as u8,
                _ => b'?',
            },
        })
        .collect()
}

/// DICOM PN `Family^Given` as "Family, Given"; DA `YYYYMMDD` as `YYYY-MM-DD`.
fn person(name: &str) -> String {
    let parts: Vec<&str> = name.split('^').filter(|p| !p.trim().is_empty()).collect();
    match parts.as_slice() {
        [] => "-".into(),
        [family] => (*family).to_owned(),
        [family, given, ..] => format!("{family}, {given}"),
    }
}

fn date(da: &str) -> String {
    if da.len() == 8 && da.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}-{}-{}", &da[..4], &da[4..6], &da[6..])
    } else if da.is_empty() {
        "-".into()
    } else {
        da.to_owned()
    }
}

fn or_dash(s: &str) -> &str {
    if s.trim().is_empty() { "-" } else { s }
}

/// A value with a sensible number of digits for its size.
fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Lays out one A4 page.
struct Page {
    content: Content,
    y: f32,
}

const REGULAR: Name<'static> = Name(b"F1");
const BOLD: Name<'static> = Name(b"F2");
const LEFT: f32 = 56.0;

impl Page {
    fn line(&mut self, font: Name<'_>, size: f32, x: f32, text: &str) {
        let mut clipped: String = text.chars().take(((595.0 - x - 40.0) / (size * 0.5)) as usize).collect();
        if clipped.len() < text.len() {
            clipped.push('…');
        }
        self.content.begin_text();
        self.content.set_font(font, size);
        self.content.next_line(x, self.y);
        self.content.show(Str(&win_ansi(&clipped)));
        self.content.end_text();
    }

    fn row(&mut self, font: Name<'_>, size: f32, cells: &[(f32, &str)]) {
        for (x, text) in cells {
            self.line(font, size, *x, text);
        }
        self.y -= size * 1.5;
    }

    fn gap(&mut self, points: f32) {
        self.y -= points;
    }

    fn rule(&mut self) {
        self.content.set_line_width(0.5);
        self.content.move_to(LEFT, self.y + 6.0);
        self.content.line_to(595.0 - LEFT, self.y + 6.0);
        self.content.stroke();
        self.gap(8.0);
    }
}

/// Brain volume change per year (y, %/yr) against age (x, years): the healthy mean with its band
/// shaded green, the pathological cut-off dashed red, and the patient's point; values off the
/// chart are drawn at its edge.
fn draw_atrophy_plot(page: &mut Page, p: &AtrophyPlot) {
    page.row(BOLD, 10.0, &[(LEFT, "Brain volume change per year against age (AI output)")]);
    let (x0, width, height) = (LEFT + 40.0, 330.0f32, 130.0f32);
    let y0 = page.y - height - 4.0;
    let (age_lo, age_hi, rate_lo, rate_hi) = (20.0, 90.0, -2.0, 0.5);
    let x = |age: f64| x0 + (((age - age_lo) / (age_hi - age_lo)).clamp(0.0, 1.0) as f32) * width;
    let y = |rate: f64| y0 + (((rate - rate_lo) / (rate_hi - rate_lo)).clamp(0.0, 1.0) as f32) * height;
    let c = &mut page.content;
    // The healthy band: mean ± two SDs.
    c.set_fill_rgb(0.82, 0.93, 0.82);
    if let Some(first) = p.healthy_mean.first() {
        c.move_to(x(first[0]), y(first[1] + p.healthy_band));
        for [age, mean] in &p.healthy_mean {
            c.line_to(x(*age), y(mean + p.healthy_band));
        }
        for [age, mean] in p.healthy_mean.iter().rev() {
            c.line_to(x(*age), y(mean - p.healthy_band));
        }
        c.close_path();
        c.fill_nonzero();
    }
    c.set_stroke_rgb(0.1, 0.5, 0.1);
    c.set_line_width(1.2);
    for (i, [age, mean]) in p.healthy_mean.iter().enumerate() {
        if i == 0 {
            c.move_to(x(*age), y(*mean));
        } else {
            c.line_to(x(*age), y(*mean));
        }
    }
    c.stroke();
    // The pathological cut-off.
    c.set_stroke_rgb(0.75, 0.1, 0.1);
    c.set_line_width(0.8);
    c.set_dash_pattern([4.0, 3.0], 0.0);
    c.move_to(x(age_lo), y(p.cutoff_percent_per_year));
    c.line_to(x(age_hi), y(p.cutoff_percent_per_year));
    c.stroke();
    c.set_dash_pattern([], 0.0);
    // Axes, with ticks every 10 years and every 0.5 %/yr.
    c.set_stroke_rgb(0.0, 0.0, 0.0);
    c.set_line_width(0.6);
    c.rect(x0, y0, width, height);
    c.stroke();
    for age in (2..=9).map(|k| 10.0 * f64::from(k)) {
        c.move_to(x(age), y0);
        c.line_to(x(age), y0 - 3.0);
    }
    for k in 0..=5 {
        let rate = rate_lo + 0.5 * f64::from(k);
        c.move_to(x0, y(rate));
        c.line_to(x0 - 3.0, y(rate));
    }
    c.stroke();
    // The patient.
    let (px, py) = (x(p.age_years), y(p.rate_percent_per_year));
    c.set_fill_rgb(0.6, 0.0, 0.0);
    c.rect(px - 3.0, py - 3.0, 6.0, 6.0);
    c.fill_nonzero();
    c.set_fill_rgb(0.0, 0.0, 0.0);
    let top = page.y;
    for age in (2..=9).map(|k| 10.0 * f64::from(k)) {
        page.y = y0 - 12.0;
        page.line(REGULAR, 7.0, x(age) - 5.0, &format!("{age:.0}"));
    }
    for k in 0..=5 {
        let rate = rate_lo + 0.5 * f64::from(k);
        page.y = y(rate) - 2.5;
        page.line(REGULAR, 7.0, x0 - 26.0, &format!("{rate:+.1}"));
    }
    page.y = y0 - 22.0;
    page.line(REGULAR, 7.0, x0 + width / 2.0 - 20.0, "age, years");
    page.y = top + 4.0;
    page.line(REGULAR, 7.0, x0 - 30.0, "%/yr");
    let legend_x = x0 + width + 12.0;
    let legend = [
        format!("Patient: {:+.2} %/yr at {:.0}", p.rate_percent_per_year, p.age_years),
        "Green: healthy mean and its".to_owned(),
        "range (2 SD; Hedman 2012,".to_owned(),
        "De Stefano 2016)".to_owned(),
        format!("Red dashed: cut-off {:+.2} %/yr", p.cutoff_percent_per_year),
    ];
    page.y = top - 14.0;
    for text in &legend {
        page.line(REGULAR, 7.0, legend_x, text);
        page.y -= 10.0;
    }
    page.y = y0 - 30.0;
}

fn render(m: &Manifest) -> Vec<u8> {
    let s = &m.summary;
    let mut page = Page { content: Content::new(), y: 790.0 };
    page.row(BOLD, 16.0, &[(LEFT, "Lightbox analysis summary")]);
    page.gap(4.0);
    // The banner: never mistaken for a diagnosis.
    page.content.set_fill_rgb(0.75, 0.1, 0.1);
    page.row(BOLD, 10.0, &[(LEFT, "AI OUTPUT - research use only, not for clinical use. This is not a diagnosis.")]);
    page.content.set_fill_rgb(0.0, 0.0, 0.0);
    page.rule();
    let facts = [
        ("Patient", format!("{} ({})", person(&s.patient_name), or_dash(&s.patient_id))),
        ("Study", format!("{} {}", date(&s.study_date), or_dash(&s.study_description))),
        ("Series", format!("{} {}", or_dash(&s.modality), or_dash(&s.series_description))),
        ("Institution", or_dash(&s.institution).to_owned()),
        ("Analysis", format!("{} (job {})", m.pipeline, m.job_id)),
        (
            "Review",
            match &s.signed_by {
                Some(who) => format!("reviewed and signed by {}", person(who)),
                None => "AWAITING RADIOLOGIST REVIEW - unsigned".to_owned(),
            },
        ),
    ];
    for (key, value) in &facts {
        page.row(BOLD, 10.0, &[(LEFT, key)]);
        page.y += 15.0;
        page.row(REGULAR, 10.0, &[(LEFT + 80.0, value)]);
    }
    page.gap(8.0);
    page.row(BOLD, 12.0, &[(LEFT, "Findings")]);
    page.rule();
    let (value_x, unit_x, by_x) = (LEFT + 230.0, LEFT + 300.0, LEFT + 345.0);
    page.row(BOLD, 9.0, &[(LEFT, "Finding"), (value_x, "Value"), (unit_x, "Unit"), (by_x, "Made by")]);
    if s.findings.is_empty() {
        page.row(REGULAR, 9.0, &[(LEFT, "No findings.")]);
    }
    let reserved = if s.atrophy_plot.is_some() { PLOT_HEIGHT } else { 0.0 };
    for f in &s.findings {
        if page.y < 90.0 + reserved {
            page.row(REGULAR, 9.0, &[(LEFT, "(more findings in the DICOM SR)")]);
            break;
        }
        let by = if f.source == "ai" {
            format!("AI: {}", f.made_by)
        } else {
            format!("Radiologist: {}", person(&f.made_by))
        };
        page.row(REGULAR, 9.0, &[(LEFT, &f.label), (value_x, &number(f.value)), (unit_x, &f.unit), (by_x, &by)]);
    }
    if let Some(plot) = &s.atrophy_plot {
        page.gap(10.0);
        draw_atrophy_plot(&mut page, plot);
    }
    page.y = 70.0;
    page.rule();
    page.row(REGULAR, 7.0, &[(LEFT, &format!("Study {}, series {}", m.study_uid, m.series_uid))]);
    page.row(REGULAR, 7.0, &[(LEFT, "The DICOM SEG and SR in the PACS are the record; this page summarises them.")]);
    page.row(REGULAR, 7.0, &[(LEFT, "Values marked AI were computed by software and are not a diagnosis.")]);

    let (catalog, tree, page_id, regular, bold, content, info) =
        (Ref::new(1), Ref::new(2), Ref::new(3), Ref::new(4), Ref::new(5), Ref::new(6), Ref::new(7));
    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree).kids([page_id]).count(1);
    let mut p = pdf.page(page_id);
    p.media_box(Rect::new(0.0, 0.0, 595.0, 842.0));
    p.parent(tree);
    p.contents(content);
    let mut resources = p.resources();
    let mut fonts = resources.fonts();
    fonts.pair(REGULAR, regular);
    fonts.pair(BOLD, bold);
    fonts.finish();
    resources.finish();
    p.finish();
    for (id, name) in [(regular, Name(b"Helvetica")), (bold, Name(b"Helvetica-Bold"))] {
        pdf.type1_font(id).base_font(name).encoding_predefined(Name(b"WinAnsiEncoding"));
    }
    pdf.stream(content, &page.content.finish());
    pdf.document_info(info).title(pdf_writer::TextStr("Lightbox analysis summary (AI output, not a diagnosis)"));
    pdf.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_dates_and_text_are_printable() {
        assert_eq!(person("Doe^Jane"), "Doe, Jane");
        assert_eq!(person(""), "-");
        assert_eq!(date("20230115"), "2023-01-15");
        assert_eq!(win_ansi("Müller Ω…"), b"M\xfcller ?\x85".to_vec());
        assert_eq!(number(1234.56), "1235");
        assert_eq!(number(12.345), "12.3");
    }

    #[test]
    fn a_summary_renders_as_a_pdf() {
        let m = Manifest {
            job_id: 3,
            pipeline: "threshold-volume".into(),
            study_uid: "1.2.3".into(),
            series_uid: "1.2.3.4".into(),
            summary: Summary {
                patient_name: "Doe^John".into(),
                patient_id: "P1".into(),
                study_date: "20240102".into(),
                study_description: "MR prostate".into(),
                series_description: "ADC".into(),
                modality: "MR".into(),
                institution: "Example".into(),
                signed_by: None,
                findings: vec![Finding {
                    label: "Volume".into(),
                    value: 1.5,
                    unit: "mm3".into(),
                    source: "ai".into(),
                    made_by: "x".into(),
                }],
                atrophy_plot: None,
            },
        };
        let pdf = render(&m);
        assert!(pdf.starts_with(b"%PDF-"));
        // With the atrophy plot: still one valid page.
        let mut m = m;
        m.summary.atrophy_plot = Some(AtrophyPlot {
            age_years: 68.0,
            rate_percent_per_year: -3.5,
            healthy_mean: vec![[20.0, -0.2], [60.0, -0.5], [90.0, -0.65]],
            healthy_band: 0.3,
            cutoff_percent_per_year: -0.37,
        });
        let pdf = render(&m);
        assert!(pdf.starts_with(b"%PDF-"));
        assert!(pdf.windows(5).any(|w| w == b"%%EOF"));
    }
}
