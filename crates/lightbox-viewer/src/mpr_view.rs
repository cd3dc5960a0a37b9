//! The 2×2 layout: axial, coronal and sagittal reformations through one point of the patient
//! (the crosshair), and a volume rendering; or 1×3, the three planes alone. A click in a plane moves the crosshair there, the
//! wheel moves that plane along its normal, dragging sets window/level for all (the window is
//! also the volume rendering's transfer-function ramp); dragging in the 3-D pane turns it.

use anyhow::Context;
use lightbox_core::{Volume, WindowLevel};
use lightbox_render::{MprPlane, MprRenderer};

/// The patient direction a vector points to, as the letters radiologists write on image edges
/// (LPS: +x left, +y posterior, +z superior); two letters when it is oblique.
pub fn direction_label(v: [f64; 3]) -> String {
    let letters = [('L', 'R'), ('P', 'A'), ('S', 'I')];
    let mut parts: Vec<(f64, char)> =
        (0..3).map(|a| (v[a].abs(), if v[a] >= 0.0 { letters[a].0 } else { letters[a].1 })).collect();
    parts.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut label: String = parts[0].1.to_string();
    if parts[1].0 > 0.3 {
        label.push(parts[1].1);
    }
    label
}

/// Orientation letters on the four edges of an image of `plane`, and a 1 cm scale bar.
pub fn annotate(painter: &egui::Painter, rect: egui::Rect, plane: &MprPlane) {
    let colour = egui::Color32::from_rgb(230, 200, 90);
    let font = egui::FontId::proportional(14.0);
    let minus = |v: [f64; 3]| v.map(|x| -x);
    for (pos, align, dir) in [
        (rect.left_center() + egui::vec2(4.0, 0.0), egui::Align2::LEFT_CENTER, minus(plane.right)),
        (rect.right_center() - egui::vec2(4.0, 0.0), egui::Align2::RIGHT_CENTER, plane.right),
        (rect.center_top() + egui::vec2(0.0, 4.0), egui::Align2::CENTER_TOP, minus(plane.down)),
        (rect.center_bottom() - egui::vec2(0.0, 4.0), egui::Align2::CENTER_BOTTOM, plane.down),
    ] {
        painter.text(pos, align, direction_label(dir), font.clone(), colour);
    }
    // 10 mm in screen points.
    let per_mm = rect.width() / (f64::from(plane.width) * plane.pixel_mm) as f32;
    let start = rect.left_bottom() + egui::vec2(10.0, -20.0);
    let end = start + egui::vec2(10.0 * per_mm, 0.0);
    painter.line_segment([start, end], egui::Stroke::new(2.0, colour));
    painter.text(
        end + egui::vec2(4.0, 0.0),
        egui::Align2::LEFT_CENTER,
        "1 cm",
        egui::FontId::proportional(11.0),
        colour,
    );
}

/// Makes a pane's plane: (volume geometry, dims, point it passes through, pixel size).
type PlaneFn = fn(&lightbox_core::Affine3, [usize; 3], [f64; 3], f64) -> MprPlane;

struct Pane {
    name: &'static str,
    make: PlaneFn,
    renderer: MprRenderer,
    texture: egui::TextureId,
    plane: MprPlane,
    rendered: Option<(MprPlane, WindowLevel, Option<lightbox_render::LabelStyle>)>,
    /// The colour table generation this pane's renderer has.
    lut_applied: u64,
}

pub struct MprView {
    panes: Vec<Pane>,
    /// The point all three planes pass through, mm (LPS).
    pub crosshair: [f64; 3],
    pub window: WindowLevel,
    patient_from_voxel: lightbox_core::Affine3,
    dims: [usize; 3],
    pixel_mm: f64,
    step_mm: f64,
    /// How the segmentation is drawn (None: hidden, or none loaded).
    pub labels: Option<lightbox_render::LabelStyle>,
    /// The 3-D view's direction (radians).
    azimuth: f64,
    elevation: f64,
    pixel_3d: f64,
    /// Layout 1×3: the three planes only, without the volume rendering.
    pub three_planes: bool,
    /// The colour table (planes) and transfer function (3-D); `None`: grey and the default ramp.
    lut: Option<lightbox_render::Lut>,
    lut_generation: u64,
}

/// How much coarser than the volume a pane draws: `Some(2)` or `Some(4)` where the GPU holds the
/// volume halved for lack of memory and the pane is drawn from it (not on the CPU).
fn reduced(renderer: &MprRenderer) -> Option<u32> {
    (renderer.resolution() > 1 && !renderer.draws_on_cpu()).then(|| renderer.resolution())
}

/// The 3-D pane's plane (its "make" ignores the crosshair; the angles come from the view).
fn view_3d_front(a: &lightbox_core::Affine3, dims: [usize; 3], _at: [f64; 3], pixel_mm: f64) -> MprPlane {
    MprPlane::view_3d(a, dims, 0.0, 0.0, pixel_mm)
}

impl MprView {
    /// With `stored`, the GPU keeps the volume in its stored type (16-bit stays 16-bit).
    pub fn new(
        cc: &eframe::CreationContext<'_>,
        volume: &Volume<f32>,
        stored: Option<&lightbox_core::StoredVolume>,
        labels: Option<&Volume<u8>>,
        window: WindowLevel,
    ) -> anyhow::Result<Self> {
        let state = cc.wgpu_render_state.as_ref().context("eframe started without its wgpu renderer")?;
        let (a, dims) = (volume.patient_from_voxel, volume.dims());
        let spacing = volume.spacing_mm();
        let pixel_mm = spacing.iter().copied().fold(f64::INFINITY, f64::min).max(0.1);
        let centre = a.transform_point(dims.map(|d| 0.5 * (d as f64 - 1.0)));
        let diagonal = (0..3).map(|c| (dims[c] as f64 * spacing[c]).powi(2)).sum::<f64>().sqrt();
        let pixel_3d = (2.0 * pixel_mm).max(diagonal / 256.0);
        let makers: [(&'static str, PlaneFn); 4] = [
            ("Axial", MprPlane::axial),
            ("Coronal", MprPlane::coronal),
            ("Sagittal", MprPlane::sagittal),
            ("3D", view_3d_front),
        ];
        let mut panes: Vec<Pane> = Vec::new();
        for (name, make) in makers {
            // The 3-D view at a coarser pixel: it casts a ray through the whole volume per pixel.
            let plane = if name == "3D" { make(&a, dims, centre, pixel_3d) } else { make(&a, dims, centre, pixel_mm) };
            // One copy of the volume on the GPU, shared by the panes.
            let mut renderer = match (panes.first(), stored) {
                (Some(first), _) => first.renderer.sharing(&state.device, plane.width, plane.height),
                (None, Some(stored)) => {
                    MprRenderer::new_stored(&state.device, &state.queue, stored, labels, plane.width, plane.height)?
                }
                (None, None) => {
                    MprRenderer::new(&state.device, &state.queue, volume, labels, plane.width, plane.height)?
                }
            };
            // Without a GPU (Mesa's lavapipe), the planes are drawn faster on the CPU (the 3-D
            // view is not: below). The panes share the CPU copy.
            if panes.is_empty() {
                println!(
                    "lightbox-viewer: the renderer launches its pixels by {:?} on {}",
                    renderer.launch(),
                    state.adapter.get_info().name
                );
            }
            if panes.is_empty() && MprRenderer::is_software(&state.device) {
                let source = match stored {
                    Some(stored) => lightbox_render::PlaneSource::Stored(stored),
                    None => lightbox_render::PlaneSource::Float(volume),
                };
                renderer.draw_on_cpu(source, labels, None)?;
                println!(
                    "lightbox-viewer: software rasteriser ({}): planes drawn on the CPU, the 3-D view by the shader",
                    state.adapter.get_info().name
                );
            }
            if name == "3D" {
                // With empty-space skipping the shader draws the 3-D view faster than the CPU
                // path even on lavapipe (108 against 200 ms a frame at 480×270 of 512³).
                renderer.draw_on_gpu();
                // The rays jump over bricks with nothing above the transfer function's edge.
                match stored {
                    Some(stored) => renderer.skip_empty_space_stored(&state.queue, stored),
                    None => renderer.skip_empty_space(&state.queue, volume),
                }
            }
            let texture = state.renderer.write().register_native_texture(
                &state.device,
                renderer.target_view(),
                wgpu::FilterMode::Linear,
            );
            println!(
                "lightbox-viewer: MPR {name} {}x{} at {pixel_mm:.2} mm, volume {:.1} MB on the GPU{}{}{}",
                plane.width,
                plane.height,
                renderer.volume_bytes as f64 / 1e6,
                if panes.is_empty() { "" } else { " (shared)" },
                match reduced(&renderer) {
                    Some(r) => format!(", drawn at 1/{r} of its resolution (the GPU's memory)"),
                    None => String::new(),
                },
                match name {
                    "3D" if renderer.quick_look() => ", samples looked at through the texture filter",
                    "3D" => ", every sample exact (the GPU cannot filter this volume's texture)",
                    _ => "",
                }
            );
            panes.push(Pane { name, make, renderer, texture, plane, rendered: None, lut_applied: 0 });
        }
        let labels = labels.map(|_| lightbox_render::LabelStyle { opacity: 0.45, outline: false });
        Ok(Self {
            panes,
            crosshair: centre,
            window,
            patient_from_voxel: a,
            dims,
            pixel_mm,
            step_mm: pixel_mm,
            labels,
            azimuth: 0.0,
            elevation: 0.0,
            pixel_3d,
            three_planes: false,
            lut: None,
            lut_generation: 0,
        })
    }

    /// Draws through `lut` from the next frame on (`None`: grey).
    pub fn set_lut(&mut self, lut: Option<lightbox_render::Lut>) {
        self.lut = lut;
        self.lut_generation += 1;
    }

    pub fn lut_name(&self) -> Option<&str> {
        self.lut.as_ref().map(|l| l.name.as_str())
    }

    /// Moves the crosshair to a point of the patient (LPS mm).
    pub fn move_to(&mut self, p: [f64; 3]) {
        self.crosshair = p;
        self.replan();
    }

    fn replan(&mut self) {
        for pane in &mut self.panes {
            pane.plane = if pane.name == "3D" {
                MprPlane::view_3d(&self.patient_from_voxel, self.dims, self.azimuth, self.elevation, self.pixel_3d)
            } else {
                (pane.make)(&self.patient_from_voxel, self.dims, self.crosshair, self.pixel_mm)
            };
        }
    }

    /// The three panes side by side, with the crosshair drawn in each.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let mut moved_to = None;
        let mut window = self.window;
        let mut turn = egui::Vec2::ZERO;
        let (per_row, shown) = if self.three_planes { (3, 3) } else { (2, self.panes.len()) };
        let row_height = ui.available_height() / if self.three_planes { 1.0 } else { 2.0 };
        let row_width = ui.available_width();
        for row in self.panes[..shown].chunks(per_row) {
            ui.allocate_ui(egui::vec2(row_width, row_height), |ui| {
                ui.columns(per_row, |columns| {
                    for (pane, ui) in row.iter().zip(columns.iter_mut()) {
                        let is_3d = pane.name == "3D";
                        let [x, y, z] = pane.plane.normal().map(|v| v.abs());
                        let position = if z >= x && z >= y {
                            self.crosshair[2]
                        } else if y >= x {
                            self.crosshair[1]
                        } else {
                            self.crosshair[0]
                        };
                        let mut title = if is_3d {
                            "3D (volume rendering; drag turns it)".to_owned()
                        } else {
                            format!("{} · {position:.1} mm", pane.name)
                        };
                        // A coarser image must say so.
                        if let Some(r) = reduced(&pane.renderer) {
                            title.push_str(&format!(" · 1/{r} resolution (GPU memory)"));
                        }
                        ui.label(egui::RichText::new(title).strong());
                        let aspect = pane.plane.width as f32 / pane.plane.height.max(1) as f32;
                        let (response, rect) = crate::widgets::letterboxed_image(ui, pane.texture, aspect);
                        let to_screen = |(i, j): (f64, f64)| {
                            egui::pos2(
                                rect.left() + ((i + 0.5) / f64::from(pane.plane.width)) as f32 * rect.width(),
                                rect.top() + ((j + 0.5) / f64::from(pane.plane.height)) as f32 * rect.height(),
                            )
                        };
                        annotate(ui.painter(), rect, &pane.plane);
                        if is_3d {
                            if response.dragged() {
                                turn += response.drag_delta();
                            }
                            continue;
                        }
                        let at = to_screen(pane.plane.pixel_of(self.crosshair));
                        let stroke = egui::Stroke::new(1.0, egui::Color32::from_rgba_unmultiplied(90, 200, 255, 160));
                        ui.painter()
                            .line_segment([egui::pos2(rect.left(), at.y), egui::pos2(rect.right(), at.y)], stroke);
                        ui.painter()
                            .line_segment([egui::pos2(at.x, rect.top()), egui::pos2(at.x, rect.bottom())], stroke);
                        if response.clicked()
                            && let Some(pos) = response.interact_pointer_pos()
                        {
                            let i = f64::from((pos.x - rect.left()) / rect.width()) * f64::from(pane.plane.width) - 0.5;
                            let j =
                                f64::from((pos.y - rect.top()) / rect.height()) * f64::from(pane.plane.height) - 0.5;
                            moved_to = Some(pane.plane.patient_point(i, j));
                        }
                        if response.dragged() {
                            crate::widgets::drag_window(&mut window, response.drag_delta());
                        }
                        if response.hovered() {
                            let wheel = crate::widgets::wheel(ui);
                            if wheel != 0.0 {
                                let n = pane.plane.normal();
                                let s = if wheel > 0.0 { self.step_mm } else { -self.step_mm };
                                moved_to = Some([0, 1, 2].map(|c| self.crosshair[c] + s * n[c]));
                            }
                        }
                    }
                });
            });
        }
        self.window = window;
        if turn != egui::Vec2::ZERO {
            self.azimuth += f64::from(turn.x) * 0.01;
            self.elevation = (self.elevation + f64::from(turn.y) * 0.01).clamp(-1.5, 1.5);
            self.replan();
        }
        if let Some(p) = moved_to {
            self.crosshair = p;
            self.replan();
        }
    }

    /// Renders the panes whose plane or window changed.
    pub fn render(&mut self, state: &egui_wgpu::RenderState) {
        let shown = if self.three_planes { 3 } else { self.panes.len() };
        for pane in &mut self.panes[..shown] {
            // The volume rendering draws no labels: toggling them must not re-cast its rays.
            let labels = if pane.name == "3D" { None } else { self.labels };
            let wanted = (pane.plane, self.window, labels);
            if pane.lut_applied != self.lut_generation {
                pane.renderer.set_lut(&state.queue, self.lut.as_ref());
                pane.lut_applied = self.lut_generation;
                pane.rendered = None;
            }
            if pane.rendered != Some(wanted) {
                match pane.renderer.render(&state.device, &state.queue, &pane.plane, self.window, labels) {
                    Ok(()) => pane.rendered = Some(wanted),
                    Err(e) => tracing::error!("MPR {} failed: {e}", pane.name),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::direction_label;

    #[test]
    fn directions_read_as_radiologists_write_them() {
        assert_eq!(direction_label([1.0, 0.0, 0.0]), "L");
        assert_eq!(direction_label([-1.0, 0.0, 0.0]), "R");
        assert_eq!(direction_label([0.0, -1.0, 0.0]), "A");
        assert_eq!(direction_label([0.0, 0.0, -1.0]), "I");
        assert_eq!(direction_label([0.0, 0.98, 0.17]), "P");
        assert_eq!(direction_label([0.0, 0.8, -0.6]), "PI");
    }
}
