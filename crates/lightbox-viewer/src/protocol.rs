//! The narrow message protocol between the workstation and a viewer window: JSON, one message a
//! line. Pixels never cross it; the viewer reads its series itself.
//!
//! - Which series to open, and the prior to link it with, are the viewer's arguments
//!   (`PATH --series UID --prior PRIOR --seg SEG`): a workstation opens a viewer per study.
//! - With `--protocol`, the viewer reads commands on stdin:
//!   `{"cmd":"goto","slice":12}`, `{"cmd":"goto","patient_mm":[x,y,z]}`,
//!   `{"cmd":"layout","layout":"1x1"|"1x2"|"1x3"|"2x2"}`, `{"cmd":"show_labels","visible":true}`,
//!   `{"cmd":"close"}`.
//! - It always writes events on stdout, each a JSON object on its own line (other stdout lines are
//!   human-readable and start with `lightbox-viewer:`): `ready`, `measurement_added`,
//!   `position_changed`, `closed`; and `error` for a command it cannot follow.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Layout {
    /// The current series alone.
    #[serde(rename = "1x1")]
    Single,
    /// Current and prior (compare), or current alone.
    #[serde(rename = "1x2")]
    Pair,
    /// Compare with the difference; or the three MPR planes.
    #[serde(rename = "1x3")]
    Three,
    /// The three MPR planes and the volume rendering.
    #[serde(rename = "2x2")]
    Grid,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Goto {
        #[serde(default)]
        slice: Option<u32>,
        #[serde(default)]
        patient_mm: Option<[f64; 3]>,
    },
    Layout {
        layout: Layout,
    },
    ShowLabels {
        visible: bool,
    },
    Close,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Ready {
        series_uid: String,
        slices: u32,
        layout: Layout,
    },
    /// A measurement finished on screen; `saved_as` is its id in the store when it was saved
    /// for the report.
    MeasurementAdded {
        series_uid: String,
        kind: String,
        label: String,
        value: f64,
        unit: String,
        slice: u32,
        /// The points that define it, in patient space (LPS mm).
        points_mm: Vec<[f64; 3]>,
        saved_as: Option<i64>,
    },
    PositionChanged {
        slice: u32,
        /// The centre of the slice (or the MPR crosshair), LPS mm.
        patient_mm: [f64; 3],
    },
    Error {
        message: String,
    },
    Closed,
}

/// Writes the event as one line on stdout.
pub fn emit(event: &Event) {
    match serde_json::to_string(event) {
        Ok(line) => println!("{line}"),
        Err(e) => tracing::error!("cannot encode event {event:?}: {e}"),
    }
}

/// Parses one line of stdin.
pub fn parse(line: &str) -> Result<Command, String> {
    serde_json::from_str(line.trim()).map_err(|e| format!("cannot read command {:?}: {e}", line.trim()))
}

/// Reads commands from stdin on a thread of its own, waking the window for each.
pub fn listen(ctx: egui::Context) -> std::sync::mpsc::Receiver<Result<Command, String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            if tx.send(parse(&line)).is_err() {
                break;
            }
            ctx.request_repaint();
        }
        // The workstation closed our stdin: it is gone, so we go too.
        let _ = tx.send(Ok(Command::Close));
        ctx.request_repaint();
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_as_documented_and_bad_ones_say_why() {
        assert_eq!(parse(r#"{"cmd":"goto","slice":12}"#), Ok(Command::Goto { slice: Some(12), patient_mm: None }));
        assert_eq!(parse(r#"{"cmd":"layout","layout":"1x3"}"#), Ok(Command::Layout { layout: Layout::Three }));
        assert_eq!(parse(r#" {"cmd":"close"} "#), Ok(Command::Close));
        let bad = parse(r#"{"cmd":"layout","layout":"3x3"}"#).err().unwrap_or_default();
        assert!(bad.contains("3x3"), "{bad}");
        assert!(parse(r#"{"cmd":"delete_everything"}"#).is_err());
        assert!(parse("not json").is_err());
    }

    #[test]
    fn events_are_one_json_object_a_line() -> anyhow::Result<()> {
        let line = serde_json::to_string(&Event::PositionChanged { slice: 3, patient_mm: [1.0, 2.0, 3.5] })?;
        assert_eq!(line, r#"{"event":"position_changed","slice":3,"patient_mm":[1.0,2.0,3.5]}"#);
        let ready = serde_json::to_string(&Event::Ready { series_uid: "1.2".into(), slices: 4, layout: Layout::Grid })?;
        assert_eq!(ready, r#"{"event":"ready","series_uid":"1.2","slices":4,"layout":"2x2"}"#);
        Ok(())
    }
}
