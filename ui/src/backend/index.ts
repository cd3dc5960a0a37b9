// The only module that knows how the UI reaches the engine. Inside the workstation that is Tauri;
// in a plain browser (tests, design work) it is the mock backend.
import { mockBackend } from "./mock";
import { tauriBackend } from "./tauri";
import type { Backend } from "./types";

export type {
  AnalysisResult,
  Backend,
  BackendError,
  DrainReport,
  FileIssue,
  Job,
  Measurement,
  OutboxRow,
  PacsStatus,
  Progress,
  PushEvent,
  Review,
  Series,
  SeriesList,
  Settings,
  TransferSummary,
  Worklist,
  WorklistQuery,
  WorklistRow,
} from "./types";

export function pickBackend(): Backend {
  const inTauri = typeof window !== "undefined" && "__TAURI_INTERNALS__" in window;
  return inTauri ? tauriBackend : mockBackend();
}

export function errorMessage(e: unknown): string {
  if (e && typeof e === "object" && "message" in e) {
    const err = e as { code?: string; message: unknown };
    return err.code ? `${String(err.message)} (${err.code})` : String(err.message);
  }
  return String(e);
}
