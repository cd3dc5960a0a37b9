// Transport types: the JSON the workstation's Tauri commands return (src-tauri/src/dto.rs).

export interface Series {
  uid: string;
  number: number | null;
  modality: string;
  description: string;
  /** columns, rows, slices, time points */
  dims: [number, number, number, number];
  instances: number;
  transferSyntaxes: string[];
  mosaic: boolean;
  patientId: string;
  patientName: string;
  studyDate: string;
  studyDescription: string;
}

export interface FileIssue {
  path: string;
  reason: string;
}

export interface SeriesList {
  folder: string;
  series: Series[];
  unreadable: FileIssue[];
}

/** Every backend error carries a machine code; the UI never matches on message text. */
export interface BackendError {
  code: string;
  message: string;
}

export interface Backend {
  readonly kind: "tauri" | "browser-mock";
  listSeries(): Promise<SeriesList>;
  openViewer(seriesUid: string): Promise<void>;
  uiReady(rows: number): Promise<void>;
}
