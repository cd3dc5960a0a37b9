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
