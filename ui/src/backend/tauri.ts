import { Channel, invoke } from "@tauri-apps/api/core";
import { getCurrentWebview } from "@tauri-apps/api/webview";
import type {
  AnalysisResult,
  Backend,
  DrainReport,
  Job,
  Measurement,
  OutboxRow,
  PacsStatus,
  Progress,
  PushEvent,
  SeriesList,
  Settings,
  TransferSummary,
  Worklist,
} from "./types";

function channel(onProgress: (p: Progress) => void): Channel<Progress> {
  const ch = new Channel<Progress>();
  ch.onmessage = onProgress;
  return ch;
}

export const tauriBackend: Backend = {
  kind: "tauri",
  listSeries: () => invoke<SeriesList>("list_series"),
  openViewer: (seriesUid) => invoke<void>("open_viewer", { seriesUid }),
  uiReady: (rows) => invoke<void>("ui_ready", { rows }),
  worklist: (query) => invoke<Worklist>("worklist", { query }),
  retrieveStudy: (studyUid, total, onProgress) =>
    invoke<TransferSummary>("retrieve_study", { studyUid, total, onProgress: channel(onProgress) }),
  cancelRetrieve: (studyUid) => invoke<void>("cancel_retrieve", { studyUid }),
  importFolder: (onProgress) => invoke<TransferSummary>("import_folder", { onProgress: channel(onProgress) }),
  pickFolder: () => invoke<string | null>("pick_folder"),
  importPaths: (paths, onProgress) =>
    invoke<TransferSummary>("import_paths", { paths, onProgress: channel(onProgress) }),
  onFilesDropped: (handler) =>
    getCurrentWebview().onDragDropEvent((event) => {
      if (event.payload.type === "drop") handler(event.payload.paths);
    }),
  subscribePushes: (handler) => {
    const ch = new Channel<PushEvent>();
    ch.onmessage = handler;
    return invoke<string | null>("subscribe_pushes", { onEvent: ch });
  },
  getSettings: () => invoke<Settings>("get_settings"),
  saveSettings: (settings, secret) => invoke<string>("save_settings", { settings, secret }),
  results: () => invoke<AnalysisResult[]>("results"),
  signResult: (jobId, radiologist, review) =>
    invoke<string>("sign_result", {
      jobId,
      radiologist,
      review: review.kind,
      volumeMl: review.kind === "edit" ? review.volumeMl : null,
    }),
  outbox: () => invoke<OutboxRow[]>("outbox"),
  drainOutbox: () => invoke<DrainReport>("drain_outbox"),
  cancelOutbox: (id) => invoke<boolean>("cancel_outbox", { id }),
  retryOutbox: (id) => invoke<void>("retry_outbox", { id }),
  jobs: () => invoke<Job[]>("jobs"),
  cancelJob: (id) => invoke<boolean>("cancel_job", { id }),
  rerunJob: (id) => invoke<void>("rerun_job", { id }),
  pacsStatus: () => invoke<PacsStatus>("pacs_status"),
  openResult: (jobId, radiologist, at) => invoke<void>("open_result", { jobId, radiologist, at: at ?? null }),
  compareWithPrior: (seriesUid) => invoke<string>("compare_with_prior", { seriesUid }),
  measurements: (seriesUid) => invoke<Measurement[]>("measurements", { seriesUid }),
  addMeasurement: (m) => invoke<number>("add_measurement", { ...m }),
  removeMeasurement: (id) => invoke<boolean>("remove_measurement", { id }),
};
