import { invoke } from "@tauri-apps/api/core";
import type { Backend, SeriesList } from "./types";

export const tauriBackend: Backend = {
  kind: "tauri",
  listSeries: () => invoke<SeriesList>("list_series"),
  openViewer: (seriesUid) => invoke<void>("open_viewer", { seriesUid }),
  uiReady: (rows) => invoke<void>("ui_ready", { rows }),
};
