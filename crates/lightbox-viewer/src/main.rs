//! `lightbox-viewer`: the diagnostic viewer window.
//!
//! Opens a file or folder, picks a series (the one named by `--series`, or the largest), and shows
//! its slices drawn by `lightbox-render` on the GPU. Mouse drag sets window/level (horizontal:
//! width, vertical: centre), the wheel or the arrow keys step through slices. `--seg FILE`
//! draws a DICOM SEG (ours or anyone's) over its source series, one colour per segment; `O`
//! shows or hides it.

// Doc comments on the arguments are clap's `--help` text ("[opacity]": optional), not rustdoc.
#![allow(rustdoc::broken_intra_doc_links)]

mod compare;
mod measure;
mod mpr_view;
mod protocol;
mod widgets;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::Parser;
use lightbox_core::{SeriesInfo, Volume, WindowLevel};
use lightbox_dicom::LoadWarning;
use lightbox_render::{SliceParams, SliceRenderer};

#[derive(Parser)]
#[command(name = "lightbox-viewer", version, about = "Lightbox diagnostic viewer")]
struct Args {
    /// DICOM file or folder.
    path: PathBuf,
    /// Series Instance UID to show (default: the series the SEG refers to, else the largest).
    #[arg(long)]
    series: Option<String>,
    /// A DICOM SEG to draw over the series.
    #[arg(long)]
    seg: Option<PathBuf>,
    /// An earlier study of the patient (file or folder): shown beside the current one, its slice
    /// following the current slice in patient space ("compare with prior").
    #[arg(long)]
    prior: Option<PathBuf>,
    /// The series of --prior to show (default: its largest).
    #[arg(long)]
    prior_series: Option<String>,
    /// Link the prior by patient coordinates only, without registering it onto the current scan
    /// (for two series of one session, which share a frame of reference).
    #[arg(long)]
    no_register: bool,
    /// Three planes (axial, coronal, sagittal) through one point, linked by a crosshair.
    #[arg(long)]
    mpr: bool,
    /// Save the lengths measured here into this store, for the report the radiologist signs
    /// (needs --as).
    #[arg(long, requires = "author")]
    store: Option<PathBuf>,
    /// The radiologist measuring, as the report names them (e.g. 'Doe^Jane').
    #[arg(long = "as", requires = "store")]
    author: Option<String>,
    /// Take commands from the workstation on stdin, one JSON object a line (see `protocol`).
    #[arg(long)]
    protocol: bool,
    /// A colour table for the MPR planes and the 3-D transfer function: a preset (grey, hot,
    /// bone, tissue) or a file of control points ("position red green blue [opacity]" a line).
    #[arg(long)]
    lut: Option<String>,
    /// Open at this point, patient (LPS) millimetres `X,Y,Z`: the slice through it (and, with
    /// --mpr, the crosshair on it), e.g. a lesion a result lists.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    at: Option<Vec<f64>>,
}

/// Printed on stdout once the first frame has been presented, so tests and the workstation can
/// wait for it instead of sleeping.
const READY_LINE: &str = "lightbox-viewer: first frame presented";

/// Bounds what parsing one DICOM file may allocate (see `lightbox_dicom::ParseGuardAllocator`).
#[global_allocator]
static ALLOC: lightbox_dicom::ParseGuardAllocator = lightbox_dicom::ParseGuardAllocator;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LIGHTBOX_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lightbox-viewer: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let report = lightbox_dicom::scan_path(&args.path)?;
    let seg = args.seg.as_deref().map(lightbox_dicom::read_seg).transpose()?;
    let wanted = args.series.clone().or_else(|| {
        seg.as_ref().map(|s| s.referenced_series_uid.clone()).filter(|uid| report.find_series(uid).is_some())
    });
    let series = pick_series(&report, wanted.as_deref())
        .ok_or_else(|| match &args.series {
            Some(uid) => anyhow!("{}: no series {uid}", args.path.display()),
            None => anyhow!("{}: no image series found", args.path.display()),
        })?
        .clone();
    // The scan built the display sets already (largest first); show the first time point.
    let set = report
        .display_sets(&series)
        .first()
        .ok_or_else(|| anyhow!("{}: series {} has no image frames", args.path.display(), series.uid))?;
    let (volume, warnings) = (set.load(0)?, set.warnings.clone());
    for w in &warnings {
        eprintln!("lightbox-viewer: warning: {w}");
    }
    let overlay = match &seg {
        Some(seg) => {
            let placed = lightbox_dicom::seg_overlay(set, 0, seg)?;
            println!(
                "lightbox-viewer: SEG {} ({}): {} segments, {} frames placed, {} not on this series",
                seg.sop_uid,
                seg.kind,
                seg.segments.len(),
                placed.placed,
                placed.unplaced
            );
            Some(Overlay::new(seg, placed.labels))
        }
        None => None,
    };
    let study_date = |r: &lightbox_dicom::ScanReport, uid: &str| {
        r.series().find(|(_, s)| s.uid.as_str() == uid).map(|(study, _)| study.date.clone()).unwrap_or_default()
    };
    let current_date = study_date(&report, series.uid.as_str());
    let prior = match &args.prior {
        Some(path) => {
            let prior_report = lightbox_dicom::scan_path(path)?;
            let prior_series = pick_series(&prior_report, args.prior_series.as_deref())
                .ok_or_else(|| anyhow!("{}: no prior series to compare with", path.display()))?
                .clone();
            let prior_set = prior_report
                .display_sets(&prior_series)
                .first()
                .ok_or_else(|| anyhow!("{}: series {} has no image frames", path.display(), prior_series.uid))?;
            let date = study_date(&prior_report, prior_series.uid.as_str());
            println!(
                "lightbox-viewer: compare: current {} ({}) with prior {} ({}), slices linked in patient space",
                series.uid,
                or_dash(&current_date),
                prior_series.uid,
                or_dash(&date)
            );
            let prior_volume = prior_set.load(0)?;
            let label = format!("Prior {} · {}", format_date(&date), series_title(&prior_series));
            if args.no_register {
                Some((label, prior_volume, prior_series.window, None))
            } else {
                match compare::align(&volume, &prior_volume) {
                    Ok(aligned) => {
                        println!("lightbox-viewer: {}", aligned.summary);
                        let difference = Some((aligned.difference, aligned.difference_window));
                        Some((format!("{label} · registered"), aligned.prior, prior_series.window, difference))
                    }
                    // A localizer, a partial scan or an empty series: still show it, linked by
                    // patient coordinates, and say why it is not registered.
                    Err(e) => {
                        eprintln!(
                            "lightbox-viewer: warning: {}: not registered ({e:#}); slices linked by patient coordinates",
                            path.display()
                        );
                        Some((format!("{label} · not registered"), prior_volume, prior_series.window, None))
                    }
                }
            }
        }
        None => None,
    };
    let mpr = args.mpr;
    let listen = args.protocol;
    let at: Option<[f64; 3]> = match args.at.as_deref() {
        None => None,
        Some(a) => Some(a.try_into().map_err(|_| anyhow!("--at takes three numbers, X,Y,Z in mm (got {})", a.len()))?),
    };
    let user_lut = match &args.lut {
        None => None,
        Some(name) => Some(match lightbox_render::Lut::preset(name) {
            Some(lut) => lut,
            None => {
                let text = std::fs::read_to_string(name).with_context(|| {
                    format!("{name}: not a preset ({}) nor a readable file", lightbox_render::Lut::PRESETS.join(", "))
                })?;
                lightbox_render::Lut::parse(name, &text)?
            }
        }),
    };
    let save_to = args.store.clone().zip(args.author.clone());
    // The GPU keeps the volume in its stored type when the files allow it (16-bit stays 16-bit).
    let stored = set.load_stored(0).ok();
    let title = format!("Lightbox viewer - {}", series_title(&series));
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default().with_title(&title).with_inner_size([900.0, 800.0]),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: wgpu_options(),
        ..Default::default()
    };
    eframe::run_native(
        "lightbox-viewer",
        options,
        Box::new(move |cc| {
            let mpr = if mpr {
                let window = series.window.unwrap_or_else(|| default_window(&volume));
                let labels = overlay.as_ref().map(|o| &o.labels);
                Some(
                    mpr_view::MprView::new(cc, &volume, stored.as_ref(), labels, window)
                        .map_err(|e| format!("{e:#}"))?,
                )
            } else {
                None
            };
            let mpr = mpr.map(|mut view| {
                view.set_lut(user_lut.clone());
                view
            });
            let mut app =
                ViewerApp::new(cc, series, volume, stored.as_ref(), warnings, overlay).map_err(|e| format!("{e:#}"))?;
            app.user_lut = user_lut;
            app.save_to = save_to;
            app.mpr = mpr;
            if listen {
                app.commands = Some(protocol::listen(cc.egui_ctx.clone()));
            }
            if let Some((label, volume, window, difference)) = prior {
                app.add_prior(cc, label, volume, window, difference, &current_date).map_err(|e| format!("{e:#}"))?;
            }
            if let Some(p) = at {
                app.command(protocol::Command::Goto { slice: None, patient_mm: Some(p) }, &cc.egui_ctx);
                println!(
                    "lightbox-viewer: opened at slice {} (patient {:.1}, {:.1}, {:.1} mm)",
                    app.params.slice, p[0], p[1], p[2]
                );
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow!("cannot open the viewer window: {e}"))
}

fn pick_series<'a>(report: &'a lightbox_dicom::ScanReport, uid: Option<&str>) -> Option<&'a SeriesInfo> {
    match uid {
        Some(uid) => report.find_series(uid),
        None => report.series().map(|(_, s)| s).filter(|s| s.rows > 0).max_by_key(|s| s.voxel_count()),
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// DICOM DA as YYYY-MM-DD.
fn format_date(da: &str) -> String {
    if da.len() == 8 { format!("{}-{}-{}", &da[..4], &da[4..6], &da[6..]) } else { or_dash(da).to_owned() }
}

fn series_title(s: &SeriesInfo) -> String {
    let number = s.number.map_or_else(String::new, |n| format!("#{n} "));
    format!("{number}{} {}", s.modality, s.description)
}

/// The windows on keys 1–4: the header's (or automatic), and three from the value distribution.
fn window_presets(volume: &Volume<f32>, header: Option<WindowLevel>) -> [WindowLevel; 4] {
    let step = (volume.voxels().len() / 200_000).max(1);
    let mut sample: Vec<f32> = volume.voxels().iter().step_by(step).copied().filter(|v| v.is_finite()).collect();
    if sample.is_empty() {
        return [WindowLevel { center: 0.0, width: 1.0 }; 4];
    }
    sample.sort_by(f32::total_cmp);
    let at = |q: f64| sample[((sample.len() - 1) as f64 * q).round() as usize];
    let auto = WindowLevel::from_range(at(0.01), at(0.99));
    [
        header.unwrap_or(auto),
        auto,
        WindowLevel::from_range(at(0.005), at(0.999)),
        WindowLevel::from_range(at(0.25), at(0.75)),
    ]
}

/// Without a window in the headers: the 1st to 99th percentile of the values, robust to a few
/// hot voxels.
fn default_window(volume: &Volume<f32>) -> WindowLevel {
    let step = (volume.voxels().len() / 200_000).max(1);
    let mut sample: Vec<f32> = volume.voxels().iter().step_by(step).copied().filter(|v| v.is_finite()).collect();
    if sample.is_empty() {
        return WindowLevel { center: 0.0, width: 1.0 };
    }
    sample.sort_by(f32::total_cmp);
    let at = |q: f64| sample[((sample.len() - 1) as f64 * q).round() as usize];
    WindowLevel::from_range(at(0.01), at(0.99))
}

/// A segmentation drawn over the slices: labels on the series' grid, a colour per segment.
struct Overlay {
    labels: Volume<u8>,
    /// (segment number, label, colour); AI-made segments are marked.
    legend: Vec<(u16, String, egui::Color32)>,
    shown: bool,
    texture: Option<(u32, egui::TextureHandle)>,
}

impl Overlay {
    fn new(seg: &lightbox_dicom::SegReading, labels: Volume<u8>) -> Self {
        let legend = seg
            .segments
            .iter()
            .filter(|s| s.number > 0)
            .map(|s| {
                let ai = if s.algorithm_type == "AUTOMATIC" { " (AI)" } else { "" };
                (s.number, format!("{}{ai}", s.label), segment_colour(s.number))
            })
            .collect();
        Self { labels, legend, shown: true, texture: None }
    }

    /// The overlay texture of slice `z`, made when the slice changes.
    fn texture(&mut self, ctx: &egui::Context, z: u32) -> egui::TextureId {
        if let Some((at, handle)) = &self.texture
            && *at == z
        {
            return handle.id();
        }
        let [nx, ny, _] = self.labels.dims();
        let slice = &self.labels.voxels()[z as usize * nx * ny..(z as usize + 1) * nx * ny];
        let pixels = slice
            .iter()
            .map(
                |&v| if v == 0 { egui::Color32::TRANSPARENT } else { segment_colour(u16::from(v)).gamma_multiply(0.5) },
            )
            .collect();
        let image = egui::ColorImage { size: [nx, ny], source_size: egui::vec2(nx as f32, ny as f32), pixels };
        let handle = ctx.load_texture("seg-overlay", image, egui::TextureOptions::NEAREST);
        let id = handle.id();
        self.texture = Some((z, handle));
        id
    }
}

/// Distinct, saturated colours by segment number (golden-angle hues).
fn segment_colour(number: u16) -> egui::Color32 {
    let hue = (f32::from(number) * 0.618_034).fract();
    egui::ecolor::Hsva::new(hue, 0.85, 1.0, 1.0).into()
}

/// A titled slice pane of its own volume (the prior, the difference).
struct Pane {
    label: String,
    renderer: SliceRenderer,
    texture: egui::TextureId,
    aspect: f32,
    params: SliceParams,
    rendered: Option<SliceParams>,
}

impl Pane {
    fn new(
        state: &egui_wgpu::RenderState,
        label: String,
        volume: &Volume<f32>,
        window: WindowLevel,
    ) -> anyhow::Result<Self> {
        let renderer = SliceRenderer::new(&state.device, &state.queue, volume)?;
        let texture = state.renderer.write().register_native_texture(
            &state.device,
            renderer.target_view(),
            wgpu::FilterMode::Linear,
        );
        let [nx, ny, _] = volume.dims();
        let [sx, sy, _] = volume.spacing_mm();
        let aspect = ((nx as f64 * sx) / (ny as f64 * sy).max(1e-6)) as f32;
        Ok(Self { label, renderer, texture, aspect, params: SliceParams { slice: 0, window }, rendered: None })
    }

    /// Its title and image, zoomed and panned with `view` (shared with the current pane); a drag
    /// sets its own window.
    fn ui(&mut self, ui: &mut egui::Ui, view: &mut widgets::View) {
        ui.label(egui::RichText::new(&self.label).strong());
        let (response, _) = widgets::zoomed_image(ui, self.texture, self.aspect, view);
        if response.dragged_by(egui::PointerButton::Primary) {
            widgets::drag_window(&mut self.params.window, response.drag_delta());
        }
    }

    fn render(&mut self, state: &egui_wgpu::RenderState) {
        if self.rendered == Some(self.params) {
            return;
        }
        match self.renderer.render(&state.device, &state.queue, self.params) {
            Ok(()) => self.rendered = Some(self.params),
            Err(e) => tracing::error!("render of {} failed: {e}", self.label),
        }
    }
}

/// The earlier study beside the current one; its slice follows the current slice through
/// patient space. Registered, it lies on the current grid, with the difference beside it (D).
struct Prior {
    pane: Pane,
    difference: Option<Pane>,
    show_difference: bool,
    /// Layout 1×1 asked for: the current alone.
    hidden: bool,
    /// Current voxel -> patient, and patient -> prior voxel.
    current_to_patient: lightbox_core::Affine3,
    patient_to_prior: lightbox_core::Affine3,
    current_dims: [usize; 3],
}

impl Prior {
    /// The prior's slice through the point at the centre of current slice `z`.
    fn follow(&mut self, z: u32) {
        let [nx, ny, _] = self.current_dims;
        let p =
            self.current_to_patient.transform_point([(nx as f64 - 1.0) / 2.0, (ny as f64 - 1.0) / 2.0, f64::from(z)]);
        let k = self.patient_to_prior.transform_point(p)[2].round();
        let depth = f64::from(self.pane.renderer.dims()[2]);
        self.pane.params.slice = k.clamp(0.0, depth - 1.0) as u32;
        if let Some(difference) = &mut self.difference {
            difference.params.slice = z;
        }
    }
}

/// The viewer's keys and mouse actions, as its help (F1) lists them.
const SHORTCUTS: [(&str, &str); 20] = [
    ("Up / Down, wheel", "next / previous slice (in MPR: move the plane under the pointer)"),
    ("Page Up / Page Down", "ten slices"),
    ("drag", "window / level (horizontal: width, vertical: level)"),
    ("Ctrl + wheel, right drag, Z", "zoom about the pointer, pan, reset (the compare panes follow)"),
    ("click (MPR)", "move the crosshair there; the other planes follow"),
    ("O", "show / hide the segmentation overlay"),
    ("L (MPR)", "segmentation as outlines / filled"),
    ("1 2 3 4", "window presets: the series' own, automatic, wide, narrow"),
    ("C", "cine: slices advance by themselves (again to stop)"),
    ("M, click, click", "measure a length in mm"),
    ("A, click ×3", "measure an angle: arm end, vertex, arm end"),
    ("E, click, click", "ellipse ROI (corners of its box): mean, SD, area, slab volume"),
    ("F, drag", "freehand ROI: mean, SD, area, slab volume"),
    ("Esc", "clear the measurements; M/A/E/F again leaves the tool"),
    ("G (MPR)", "layout 2×2 with 3-D, or the three planes 1×3"),
    ("K (MPR)", "colour table: grey, hot, bone, tissue, your --lut (planes and 3-D transfer function)"),
    ("F1", "this help"),
    ("--mpr", "start in the 2×2 layout: axial, coronal, sagittal and 3-D (drag there turns it)"),
    ("D (compare)", "difference: current − registered prior, beside both"),
    ("--prior PATH", "compare with an earlier study: registered onto the current, slices linked"),
];

struct ViewerApp {
    series: SeriesInfo,
    help: bool,
    /// Cine: slices advance by themselves.
    cine: bool,
    last_cine: std::time::Instant,
    /// Window presets on keys 1–4: the series' own (or automatic), automatic 1–99 %, wide
    /// 0.5–99.9 %, narrow 25–75 %.
    presets: [WindowLevel; 4],
    /// The measuring tool in hand (M, A, E, F), the points placed so far (voxel coordinates on
    /// the slice) and the finished measurements.
    tool: Option<measure::Tool>,
    pending: Vec<[f64; 3]>,
    measurements: Vec<measure::Measurement>,
    /// Where finished measurements are saved (store, radiologist), when given.
    save_to: Option<(PathBuf, String)>,
    /// Commands from the workstation (--protocol).
    commands: Option<std::sync::mpsc::Receiver<Result<protocol::Command, String>>>,
    /// The slice last announced as `position_changed`.
    announced: Option<u32>,
    /// The voxels, for ROI statistics.
    volume: Volume<f32>,
    /// Zoom and pan, shared by the current, prior and difference panes.
    view: widgets::View,
    /// The table given with --lut, which K also cycles through.
    user_lut: Option<lightbox_render::Lut>,
    /// The 1×3 MPR layout, when asked for.
    mpr: Option<mpr_view::MprView>,
    overlay: Option<Overlay>,
    prior: Option<Prior>,
    current_label: String,
    patient_from_voxel: lightbox_core::Affine3,
    dims: [usize; 3],
    warnings: Vec<LoadWarning>,
    renderer: SliceRenderer,
    texture: egui::TextureId,
    /// Width / height of the slice in millimetres.
    aspect: f32,
    params: SliceParams,
    rendered: Option<SliceParams>,
    frames_presented: u32,
}

impl ViewerApp {
    fn new(
        cc: &eframe::CreationContext<'_>,
        series: SeriesInfo,
        volume: Volume<f32>,
        stored: Option<&lightbox_core::StoredVolume>,
        warnings: Vec<LoadWarning>,
        overlay: Option<Overlay>,
    ) -> anyhow::Result<Self> {
        let state = cc.wgpu_render_state.as_ref().context("eframe started without its wgpu renderer")?;
        let renderer = match stored {
            Some(stored) => SliceRenderer::new_stored(&state.device, &state.queue, stored)?,
            None => SliceRenderer::new(&state.device, &state.queue, &volume)?,
        };
        if renderer.draws_on_cpu() {
            // Full resolution still: each slice is drawn on the CPU and uploaded.
            println!("lightbox-viewer: slices drawn on the CPU: the GPU cannot hold this volume");
        }
        let texture = state.renderer.write().register_native_texture(
            &state.device,
            renderer.target_view(),
            wgpu::FilterMode::Linear,
        );
        let [nx, ny, nz] = volume.dims();
        let [sx, sy, _] = volume.spacing_mm();
        let aspect = ((nx as f64 * sx) / (ny as f64 * sy).max(1e-6)) as f32;
        tracing::info!(adapter = %state.adapter.get_info().name, "viewer GPU");
        let window = series.window.unwrap_or_else(|| default_window(&volume));
        let presets = window_presets(&volume, series.window);
        Ok(Self {
            series,
            help: false,
            cine: false,
            last_cine: std::time::Instant::now(),
            presets,
            tool: None,
            pending: Vec::new(),
            measurements: Vec::new(),
            save_to: None,
            commands: None,
            announced: None,
            mpr: None,
            overlay,
            prior: None,
            current_label: String::new(),
            patient_from_voxel: volume.patient_from_voxel,
            dims: volume.dims(),
            warnings,
            renderer,
            texture,
            aspect,
            params: SliceParams { slice: (nz / 2) as u32, window },
            rendered: None,
            frames_presented: 0,
            volume,
            user_lut: None,
            view: widgets::View::default(),
        })
    }

    fn add_prior(
        &mut self,
        cc: &eframe::CreationContext<'_>,
        label: String,
        volume: Volume<f32>,
        window: Option<WindowLevel>,
        difference: Option<(Volume<f32>, WindowLevel)>,
        current_date: &str,
    ) -> anyhow::Result<()> {
        let state = cc.wgpu_render_state.as_ref().context("eframe started without its wgpu renderer")?;
        let patient_to_prior =
            volume.patient_from_voxel.inverse().context("the prior series has a degenerate geometry")?;
        let window = window.unwrap_or_else(|| default_window(&volume));
        let difference = difference
            .map(|(d, w)| Pane::new(state, "Difference: current − prior (white: brighter now)".into(), &d, w))
            .transpose()?;
        let mut prior = Prior {
            pane: Pane::new(state, label, &volume, window)?,
            difference,
            show_difference: false,
            hidden: false,
            current_to_patient: self.patient_from_voxel,
            patient_to_prior,
            current_dims: self.dims,
        };
        prior.follow(self.params.slice);
        self.current_label = format!("Current {} · {}", format_date(current_date), series_title(&self.series));
        self.prior = Some(prior);
        Ok(())
    }

    fn step_slice(&mut self, delta: i64) {
        let depth = i64::from(self.renderer.dims()[2]);
        self.params.slice = (i64::from(self.params.slice) + delta).clamp(0, depth - 1) as u32;
        if let Some(prior) = &mut self.prior {
            prior.follow(self.params.slice);
        }
    }

    /// The current and the prior side by side (1×2), with their difference (1×3), or the
    /// current alone.
    fn panes_ui(&mut self, ui: &mut egui::Ui) {
        let Some(prior) = self.prior.as_ref().filter(|p| !p.hidden) else {
            self.image_ui(ui);
            return;
        };
        let count = if prior.show_difference && prior.difference.is_some() { 3 } else { 2 };
        ui.columns(count, |columns| {
            columns[0].label(egui::RichText::new(&self.current_label).strong());
            self.image_ui(&mut columns[0]);
            if let Some(prior) = &mut self.prior {
                prior.pane.ui(&mut columns[1], &mut self.view);
                if let (Some(difference), Some(column)) = (&mut prior.difference, columns.get_mut(2)) {
                    difference.ui(column, &mut self.view);
                }
            }
        });
    }

    /// Keeps a finished measurement, prints it, saves its values for the report when a store
    /// and a radiologist were given, and announces each value as an event.
    fn finish(&mut self, m: measure::Measurement) {
        let n = self.measurements.len() + 1;
        let a = self.patient_from_voxel;
        let to_mm = |points: &[[f64; 3]]| points.iter().map(|p| a.transform_point(*p)).collect::<Vec<_>>();
        // Mean and SD of CT are in Hounsfield units; MR signal has none.
        let signal_unit = if self.series.modality == "CT" { "[hnsf'U]" } else { "1" };
        // (kind, label, value, UCUM unit) per value, and the defining points in mm.
        type Values = Vec<(&'static str, String, f64, &'static str)>;
        let (values, points): (Values, Vec<[f64; 3]>) = match &m {
            measure::Measurement::Length { a, b, mm } => {
                println!(
                    "lightbox-viewer: length {mm:.2} mm from voxel ({:.2}, {:.2}, {}) to ({:.2}, {:.2}, {})",
                    a[0], a[1], a[2], b[0], b[1], b[2]
                );
                (vec![("length", format!("Length {n} (viewer)"), round2(*mm), "mm")], to_mm(&[*a, *b]))
            }
            measure::Measurement::Angle { a, vertex, b, degrees } => {
                println!(
                    "lightbox-viewer: angle {degrees:.2}° at voxel ({:.2}, {:.2}, {})",
                    vertex[0], vertex[1], vertex[2]
                );
                (vec![("angle", format!("Angle {n} (viewer)"), round2(*degrees), "deg")], to_mm(&[*a, *vertex, *b]))
            }
            measure::Measurement::Roi { outline, stats, freehand } => {
                let shape = if *freehand { "freehand" } else { "ellipse" };
                println!(
                    "lightbox-viewer: {shape} ROI on slice {}: {} (mean {:.3}, SD {:.3}, area {:.3} mm2, volume {:.5} mL)",
                    m.slice(),
                    m.text(),
                    stats.mean,
                    stats.sd,
                    stats.area_mm2,
                    stats.volume_ml
                );
                (
                    vec![
                        ("area", format!("ROI {n} area (viewer)"), round2(stats.area_mm2), "mm2"),
                        ("mean", format!("ROI {n} mean (viewer)"), round2(stats.mean), signal_unit),
                        ("sd", format!("ROI {n} SD (viewer)"), round2(stats.sd), signal_unit),
                    ],
                    to_mm(outline),
                )
            }
        };
        for (kind, label, value, unit) in values {
            // Angles have no measurement concept in the report's vocabulary yet: shown, not saved.
            let saved_as = match &self.save_to {
                Some((store, author)) if kind != "angle" => {
                    match lightbox_workflow::pipeline::add_measurement(
                        store,
                        self.series.uid.as_str(),
                        kind,
                        &label,
                        value,
                        unit,
                        author,
                    ) {
                        Ok(id) => {
                            println!("lightbox-viewer: measurement {id} saved for the report: {label} {value} {unit}");
                            Some(id)
                        }
                        Err(e) => {
                            eprintln!("lightbox-viewer: the measurement was not saved: {e}");
                            None
                        }
                    }
                }
                _ => None,
            };
            protocol::emit(&protocol::Event::MeasurementAdded {
                series_uid: self.series.uid.to_string(),
                kind: kind.to_owned(),
                label,
                value,
                unit: unit.to_owned(),
                slice: m.slice(),
                points_mm: points.clone(),
                saved_as,
            });
        }
        self.measurements.push(m);
    }

    /// Follows one command from the workstation.
    fn command(&mut self, command: protocol::Command, ctx: &egui::Context) {
        use protocol::{Command, Layout};
        match command {
            Command::Goto { slice, patient_mm } => {
                let depth = f64::from(self.renderer.dims()[2].max(1) - 1);
                let target = match (slice, patient_mm) {
                    (Some(k), _) => Some(f64::from(k)),
                    (None, Some(p)) if p.iter().all(|v| v.is_finite()) => {
                        if let Some(mpr) = &mut self.mpr {
                            mpr.move_to(p);
                        }
                        self.patient_from_voxel.inverse().map(|inv| inv.transform_point(p)[2].round())
                    }
                    _ => None,
                };
                match target {
                    // Clamped to the series in floating point: no overflow whatever is asked.
                    Some(k) => self.step_slice(k.clamp(0.0, depth) as i64 - i64::from(self.params.slice)),
                    None => protocol::emit(&protocol::Event::Error {
                        message: "goto needs a slice or a finite patient_mm".into(),
                    }),
                }
            }
            Command::Layout { layout } => match (layout, &mut self.mpr, &mut self.prior) {
                (Layout::Grid | Layout::Three, Some(mpr), _) => mpr.three_planes = layout == Layout::Three,
                (Layout::Pair | Layout::Three, None, Some(prior)) => {
                    prior.hidden = false;
                    prior.show_difference = layout == Layout::Three && prior.difference.is_some();
                }
                (Layout::Single, None, Some(prior)) => prior.hidden = true,
                (Layout::Single, None, None) => {}
                _ => protocol::emit(&protocol::Event::Error {
                    message: format!("layout {layout:?} does not fit what this viewer shows"),
                }),
            },
            Command::ShowLabels { visible } => {
                if let Some(overlay) = &mut self.overlay {
                    overlay.shown = visible;
                }
            }
            // `on_exit` announces `closed`.
            Command::Close => ctx.send_viewport_cmd(egui::ViewportCommand::Close),
        }
    }

    fn image_ui(&mut self, ui: &mut egui::Ui) {
        let before = self.view;
        let (response, rect) = widgets::zoomed_image(ui, self.texture, self.aspect, &mut self.view);
        if self.view != before {
            println!(
                "lightbox-viewer: zoom {:.2}, centre ({:.3}, {:.3})",
                self.view.zoom, self.view.centre.x, self.view.centre.y
            );
        }
        let view = self.view;
        let slice = self.params.slice;
        if let Some(overlay) = self.overlay.as_mut().filter(|o| o.shown) {
            let texture = overlay.texture(ui.ctx(), slice);
            ui.painter().image(texture, rect, view.uv(), egui::Color32::WHITE);
        }
        let [nx, ny, _] = self.dims;
        // Screen ↔ voxel through the zoomed part of the image.
        let to_voxel = |pos: egui::Pos2| {
            let t = view.uv_of(pos, rect);
            [f64::from(t.x) * nx as f64 - 0.5, f64::from(t.y) * ny as f64 - 0.5, f64::from(slice)]
        };
        let to_screen = |v: [f64; 3]| {
            view.screen_of(egui::pos2(((v[0] + 0.5) / nx as f64) as f32, ((v[1] + 0.5) / ny as f64) as f32), rect)
        };
        // Measurements drawn only over the image.
        let painter = ui.painter_at(rect);
        if let Some(tool) = self.tool {
            let finished = if tool == measure::Tool::Freehand {
                if response.drag_started_by(egui::PointerButton::Primary) {
                    self.pending.clear();
                }
                if response.dragged_by(egui::PointerButton::Primary)
                    && let Some(pos) = response.interact_pointer_pos()
                {
                    self.pending.push(to_voxel(pos));
                }
                if response.drag_stopped_by(egui::PointerButton::Primary) {
                    measure::roi(&self.volume, std::mem::take(&mut self.pending), true)
                } else {
                    None
                }
            } else if response.clicked()
                && let Some(pos) = response.interact_pointer_pos()
            {
                self.pending.push(to_voxel(pos));
                if self.pending.len() < tool.clicks() {
                    None
                } else {
                    let p = std::mem::take(&mut self.pending);
                    let a = &self.patient_from_voxel;
                    match tool {
                        measure::Tool::Length => Some(measure::length(a, p[0], p[1])),
                        measure::Tool::Angle => Some(measure::angle(a, p[0], p[1], p[2])),
                        _ => measure::roi(&self.volume, measure::ellipse_outline(p[0], p[1]), false),
                    }
                }
            } else {
                None
            };
            if let Some(m) = finished {
                self.finish(m);
            }
        }
        let ink = egui::Color32::from_rgb(255, 220, 80);
        let stroke = egui::Stroke::new(2.0, ink);
        let font = egui::FontId::proportional(14.0);
        for m in self.measurements.iter().filter(|m| m.slice() == slice) {
            let (points, closed, at) = match m {
                measure::Measurement::Length { a, b, .. } => (vec![*a, *b], false, *b),
                measure::Measurement::Angle { a, vertex, b, .. } => (vec![*a, *vertex, *b], false, *vertex),
                measure::Measurement::Roi { outline, .. } => {
                    let right = outline.iter().copied().fold(outline[0], |r, p| if p[0] > r[0] { p } else { r });
                    (outline.clone(), true, right)
                }
            };
            let mut screen: Vec<egui::Pos2> = points.into_iter().map(to_screen).collect();
            if closed {
                screen.push(screen[0]);
            }
            painter.add(egui::Shape::line(screen, stroke));
            painter.text(to_screen(at) + egui::vec2(8.0, 0.0), egui::Align2::LEFT_CENTER, m.text(), font.clone(), ink);
        }
        let pending: Vec<egui::Pos2> =
            self.pending.iter().filter(|p| p[2] as u32 == slice).map(|p| to_screen(*p)).collect();
        if self.tool == Some(measure::Tool::Freehand) {
            painter.add(egui::Shape::line(pending, stroke));
        } else {
            for p in pending {
                painter.circle_stroke(p, 4.0, stroke);
            }
        }
        if response.dragged_by(egui::PointerButton::Primary) && self.tool.is_none() {
            widgets::drag_window(&mut self.params.window, response.drag_delta());
        }
        // The wheel steps through slices; with Ctrl it zooms (in `zoomed_image`).
        if response.hovered() && !ui.input(|i| i.modifiers.ctrl) {
            let wheel = widgets::wheel(ui);
            if wheel != 0.0 {
                self.step_slice(if wheel > 0.0 { 1 } else { -1 });
            }
        }
    }
}

impl eframe::App for ViewerApp {
    fn on_exit(&mut self) {
        if self.commands.is_some() {
            protocol::emit(&protocol::Event::Closed);
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let keys = ui.input(|i| {
            i64::from(i.key_pressed(egui::Key::ArrowUp)) - i64::from(i.key_pressed(egui::Key::ArrowDown))
                + 10 * (i64::from(i.key_pressed(egui::Key::PageUp)) - i64::from(i.key_pressed(egui::Key::PageDown)))
        });
        if keys != 0 {
            self.step_slice(keys);
        }
        if ui.input(|i| i.key_pressed(egui::Key::F1)) {
            self.help = !self.help;
        }
        if ui.input(|i| i.key_pressed(egui::Key::C)) {
            self.cine = !self.cine;
            self.last_cine = std::time::Instant::now();
        }
        for (key, tool) in [
            (egui::Key::M, measure::Tool::Length),
            (egui::Key::A, measure::Tool::Angle),
            (egui::Key::E, measure::Tool::Ellipse),
            (egui::Key::F, measure::Tool::Freehand),
        ] {
            if ui.input(|i| i.key_pressed(key)) {
                self.tool = if self.tool == Some(tool) { None } else { Some(tool) };
                self.pending.clear();
            }
        }
        if ui.input(|i| i.key_pressed(egui::Key::Escape)) {
            self.measurements.clear();
            self.pending.clear();
        }
        if ui.input(|i| i.key_pressed(egui::Key::Z)) {
            self.view = widgets::View::default();
            println!("lightbox-viewer: zoom reset");
        }
        if ui.input(|i| i.key_pressed(egui::Key::G))
            && let Some(mpr) = &mut self.mpr
        {
            mpr.three_planes = !mpr.three_planes;
        }
        if ui.input(|i| i.key_pressed(egui::Key::K))
            && let Some(mpr) = &mut self.mpr
        {
            // Grey, the presets, the user's own table, grey again.
            let mut cycle: Vec<lightbox_render::Lut> =
                lightbox_render::Lut::PRESETS.iter().skip(1).filter_map(|p| lightbox_render::Lut::preset(p)).collect();
            cycle.extend(self.user_lut.clone());
            let next = match mpr.lut_name() {
                None => cycle.first().cloned(),
                Some(name) => cycle.iter().skip_while(|l| l.name != name).nth(1).cloned(),
            };
            println!("lightbox-viewer: colour table {}", next.as_ref().map_or("grey", |l| l.name.as_str()));
            mpr.set_lut(next);
        }
        let commands: Vec<_> = self.commands.as_ref().map(|rx| rx.try_iter().collect()).unwrap_or_default();
        for command in commands {
            match command {
                Ok(command) => self.command(command, ui.ctx()),
                Err(message) => protocol::emit(&protocol::Event::Error { message }),
            }
        }
        for (k, key) in [egui::Key::Num1, egui::Key::Num2, egui::Key::Num3, egui::Key::Num4].into_iter().enumerate() {
            if ui.input(|i| i.key_pressed(key)) {
                self.params.window = self.presets[k];
                if let Some(mpr) = &mut self.mpr {
                    mpr.window = self.presets[k];
                }
            }
        }
        if self.cine {
            // Ten slices a second, round and round.
            if self.last_cine.elapsed() >= std::time::Duration::from_millis(100) {
                self.last_cine = std::time::Instant::now();
                let depth = self.renderer.dims()[2];
                self.params.slice = (self.params.slice + 1) % depth.max(1);
                if let Some(prior) = &mut self.prior {
                    prior.follow(self.params.slice);
                }
            }
            ui.ctx().request_repaint_after(std::time::Duration::from_millis(100));
        }
        if self.help {
            egui::Window::new("Keyboard and mouse").collapsible(false).show(ui.ctx(), |ui| {
                egui::Grid::new("shortcuts").striped(true).show(ui, |ui| {
                    for (key, what) in SHORTCUTS {
                        ui.strong(key);
                        ui.label(what);
                        ui.end_row();
                    }
                });
            });
        }
        if ui.input(|i| i.key_pressed(egui::Key::D))
            && let Some(prior) = &mut self.prior
        {
            prior.show_difference = !prior.show_difference && prior.difference.is_some();
            println!("lightbox-viewer: difference view {}", if prior.show_difference { "shown" } else { "hidden" });
        }
        if ui.input(|i| i.key_pressed(egui::Key::O))
            && let Some(overlay) = &mut self.overlay
        {
            overlay.shown = !overlay.shown;
        }
        let outline = ui.input(|i| i.key_pressed(egui::Key::L));
        if let (Some(mpr), Some(overlay)) = (&mut self.mpr, &self.overlay) {
            // The MPR panes draw the segmentation on the GPU: filled, or outlines (L).
            let style = mpr.labels.unwrap_or(lightbox_render::LabelStyle { opacity: 0.45, outline: false });
            let style = lightbox_render::LabelStyle { outline: style.outline != outline, ..style };
            mpr.labels = overlay.shown.then_some(style);
        }

        egui::Panel::top("status").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.strong(series_title(&self.series));
                ui.separator();
                match &self.mpr {
                    Some(mpr) => {
                        let [x, y, z] = mpr.crosshair;
                        ui.label(format!("crosshair {x:.1}, {y:.1}, {z:.1} mm (LPS)"));
                        ui.separator();
                        ui.label(format!("W {:.0} L {:.0}", mpr.window.width, mpr.window.center));
                    }
                    None => {
                        ui.label(format!("slice {}/{}", self.params.slice + 1, self.renderer.dims()[2]));
                        if let Some(tool) = self.tool {
                            ui.separator();
                            ui.colored_label(egui::Color32::from_rgb(255, 220, 80), format!("tool: {}", tool.name()));
                        }
                        ui.separator();
                        ui.label(format!("W {:.0} L {:.0}", self.params.window.width, self.params.window.center));
                    }
                }
            });
            if let Some(overlay) = &self.overlay {
                ui.horizontal_wrapped(|ui| {
                    ui.label(if overlay.shown { "SEG (O hides):" } else { "SEG hidden (O shows)" });
                    for (number, label, colour) in &overlay.legend {
                        let (swatch, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
                        ui.painter().rect_filled(swatch, 2.0, *colour);
                        ui.colored_label(*colour, format!("{number} {label}"));
                    }
                });
            }
            for w in &self.warnings {
                ui.colored_label(egui::Color32::from_rgb(230, 180, 60), format!("⚠ {w}"));
            }
        });
        if let Some(mpr) = &mut self.mpr {
            egui::CentralPanel::default().show(ui, |ui| mpr.ui(ui));
            if let Some(state) = frame.wgpu_render_state() {
                mpr.render(state);
            }
        } else {
            egui::CentralPanel::default().show(ui, |ui| self.panes_ui(ui));
        }
        if let Some(prior) = &mut self.prior
            && let Some(state) = frame.wgpu_render_state()
        {
            prior.pane.render(state);
            if let Some(difference) = prior.difference.as_mut().filter(|_| prior.show_difference) {
                difference.render(state);
            }
        }

        if self.rendered != Some(self.params)
            && let Some(state) = frame.wgpu_render_state()
        {
            match self.renderer.render(&state.device, &state.queue, self.params) {
                Ok(()) => self.rendered = Some(self.params),
                Err(e) => tracing::error!("render failed: {e}"),
            }
        }

        // The ui of frame N runs after frame N-1 was presented.
        if self.frames_presented == 1 {
            println!("{READY_LINE}");
            let layout = match (&self.mpr, &self.prior) {
                (Some(mpr), _) if mpr.three_planes => protocol::Layout::Three,
                (Some(_), _) => protocol::Layout::Grid,
                (None, Some(_)) => protocol::Layout::Pair,
                (None, None) => protocol::Layout::Single,
            };
            protocol::emit(&protocol::Event::Ready {
                series_uid: self.series.uid.to_string(),
                slices: self.renderer.dims()[2],
                layout,
            });
            self.announced = Some(self.params.slice);
        }
        if self.frames_presented >= 1 && self.announced != Some(self.params.slice) {
            self.announced = Some(self.params.slice);
            let [nx, ny, _] = self.dims;
            let centre = [(nx as f64 - 1.0) / 2.0, (ny as f64 - 1.0) / 2.0, f64::from(self.params.slice)];
            protocol::emit(&protocol::Event::PositionChanged {
                slice: self.params.slice,
                patient_mm: self.patient_from_voxel.transform_point(centre),
            });
        }
        if self.frames_presented < 2 {
            self.frames_presented += 1;
            ui.ctx().request_repaint();
        }
    }
}

/// egui's wgpu setup, asking the GPU also for the features the renderer uses where the adapter
/// has them (`lightbox_render::VOLUME_FEATURES`: volume textures the texture unit can filter).
fn wgpu_options() -> egui_wgpu::WgpuConfiguration {
    let mut setup = egui_wgpu::WgpuSetupCreateNew::without_display_handle();
    // Out of memory before the device is lost: the renderer then halves a volume too large.
    setup.instance_descriptor.memory_budget_thresholds = lightbox_render::MEMORY_BUDGET;
    let egui_descriptor = setup.device_descriptor.clone();
    setup.device_descriptor = std::sync::Arc::new(move |adapter| {
        let mut descriptor = egui_descriptor(adapter);
        descriptor.required_features |= adapter.features() & lightbox_render::VOLUME_FEATURES;
        descriptor
    });
    egui_wgpu::WgpuConfiguration { wgpu_setup: setup.into(), ..Default::default() }
}
