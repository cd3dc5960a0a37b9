//! Small pieces of image interaction shared by the slice view, the prior pane and the MPR panes.

use lightbox_core::WindowLevel;

/// Adds `texture` as large as fits while keeping `aspect` (width / height), centred, and
/// returns its response with the image's own rect: the image is letterboxed inside the widget,
/// so everything drawn over it or picked on it maps through that rect.
pub fn letterboxed_image(ui: &mut egui::Ui, texture: egui::TextureId, aspect: f32) -> (egui::Response, egui::Rect) {
    let available = ui.available_size();
    let size = if available.x / available.y.max(1.0) > aspect {
        egui::vec2(available.y * aspect, available.y)
    } else {
        egui::vec2(available.x, available.x / aspect)
    };
    let response = ui
        .centered_and_justified(|ui| ui.add(egui::Image::new((texture, size)).sense(egui::Sense::click_and_drag())))
        .inner;
    let rect = egui::Rect::from_center_size(response.rect.center(), size);
    (response, rect)
}

/// Window/level by dragging, as on every PACS viewer: right widens, down brightens; the step
/// scales with the current width so narrow and wide windows both move at a usable pace.
pub fn drag_window(window: &mut WindowLevel, delta: egui::Vec2) {
    let scale = window.width.max(1.0) / 200.0;
    window.width = (window.width + delta.x * scale).max(WindowLevel::MIN_WIDTH);
    window.center -= delta.y * scale;
}

/// The mouse wheel's vertical movement this frame (positive: away from the user).
pub fn wheel(ui: &egui::Ui) -> f32 {
    ui.input(|i| {
        i.events
            .iter()
            .filter_map(|e| match e {
                egui::Event::MouseWheel { delta, .. } => Some(delta.y),
                _ => None,
            })
            .sum()
    })
}

/// Zoom and pan of a slice view: the part of the image shown, in texture coordinates (0..1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct View {
    /// 1 = the whole image; 2 = half of it in each direction.
    pub zoom: f32,
    /// The centre of what is shown.
    pub centre: egui::Pos2,
}

impl Default for View {
    fn default() -> Self {
        Self { zoom: 1.0, centre: egui::pos2(0.5, 0.5) }
    }
}

impl View {
    pub const MAX_ZOOM: f32 = 16.0;

    /// The texture rectangle shown.
    pub fn uv(&self) -> egui::Rect {
        egui::Rect::from_center_size(self.centre, egui::vec2(1.0, 1.0) / self.zoom)
    }

    /// Keeps the shown part inside the image.
    fn clamp(&mut self) {
        self.zoom = self.zoom.clamp(1.0, Self::MAX_ZOOM);
        let half = 0.5 / self.zoom;
        self.centre = egui::pos2(self.centre.x.clamp(half, 1.0 - half), self.centre.y.clamp(half, 1.0 - half));
    }

    /// Zooms by `factor` keeping the texture point under `at` (texture coordinates) in place.
    pub fn zoom_at(&mut self, factor: f32, at: egui::Pos2) {
        let old = self.zoom;
        self.zoom = (old * factor).clamp(1.0, Self::MAX_ZOOM);
        let k = old / self.zoom;
        self.centre = at + (self.centre - at) * k;
        self.clamp();
    }

    /// Moves the shown part by a screen drag of `delta` over an image drawn in `rect`.
    pub fn pan(&mut self, delta: egui::Vec2, rect: egui::Rect) {
        let uv = self.uv();
        self.centre -= egui::vec2(delta.x / rect.width() * uv.width(), delta.y / rect.height() * uv.height());
        self.clamp();
    }

    /// Texture coordinates of a screen point over an image drawn in `rect`.
    pub fn uv_of(&self, pos: egui::Pos2, rect: egui::Rect) -> egui::Pos2 {
        let uv = self.uv();
        egui::pos2(
            uv.min.x + (pos.x - rect.left()) / rect.width() * uv.width(),
            uv.min.y + (pos.y - rect.top()) / rect.height() * uv.height(),
        )
    }

    /// The screen point of texture coordinates.
    pub fn screen_of(&self, t: egui::Pos2, rect: egui::Rect) -> egui::Pos2 {
        let uv = self.uv();
        egui::pos2(
            rect.left() + (t.x - uv.min.x) / uv.width() * rect.width(),
            rect.top() + (t.y - uv.min.y) / uv.height() * rect.height(),
        )
    }
}

/// [`letterboxed_image`] showing `view`'s part of the texture; Ctrl + wheel (or a pinch) zooms
/// about the pointer and a right-button drag pans, both changing `view`.
pub fn zoomed_image(
    ui: &mut egui::Ui,
    texture: egui::TextureId,
    aspect: f32,
    view: &mut View,
) -> (egui::Response, egui::Rect) {
    let available = ui.available_size();
    let size = if available.x / available.y.max(1.0) > aspect {
        egui::vec2(available.y * aspect, available.y)
    } else {
        egui::vec2(available.x, available.x / aspect)
    };
    let image = egui::Image::new((texture, size)).uv(view.uv()).sense(egui::Sense::click_and_drag());
    let response = ui.centered_and_justified(|ui| ui.add(image)).inner;
    let rect = egui::Rect::from_center_size(response.rect.center(), size);
    if response.hovered() {
        let zoom = ui.input(|i| i.zoom_delta());
        if (zoom - 1.0).abs() > 1e-3
            && let Some(pos) = response.hover_pos()
        {
            let at = view.uv_of(pos, rect);
            view.zoom_at(zoom, at);
        }
    }
    if response.dragged_by(egui::PointerButton::Secondary) {
        view.pan(response.drag_delta(), rect);
    }
    (response, rect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zooming_keeps_the_point_under_the_pointer_and_stays_inside() {
        let rect = egui::Rect::from_min_size(egui::pos2(100.0, 50.0), egui::vec2(400.0, 400.0));
        let mut view = View::default();
        let pointer = egui::pos2(200.0, 150.0);
        let before = view.uv_of(pointer, rect);
        view.zoom_at(2.0, before);
        let after = view.uv_of(pointer, rect);
        assert!((before - after).length() < 1e-5, "{before:?} moved to {after:?}");
        assert!((view.screen_of(after, rect) - pointer).length() < 1e-3);
        view.pan(egui::vec2(-10_000.0, 0.0), rect);
        assert!(view.uv().max.x <= 1.0 + 1e-6, "panned beyond the image: {:?}", view.uv());
        view.zoom_at(0.01, egui::pos2(0.5, 0.5));
        assert_eq!(view, View { zoom: 1.0, centre: egui::pos2(0.5, 0.5) });
    }
}
