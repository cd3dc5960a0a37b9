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

export interface Backend extends SiteBackend {
  readonly kind: "tauri" | "browser-mock";
  listSeries(): Promise<SeriesList>;
  openViewer(seriesUid: string): Promise<void>;
  uiReady(rows: number): Promise<void>;
}

export interface WorklistQuery {
  patientName: string;
  patientId: string;
  accessionNumber: string;
  modality: string;
  /** YYYYMMDD */
  dateFrom: string;
  dateTo: string;
}

export interface WorklistRow {
  studyUid: string;
  patientId: string;
  patientName: string;
  date: string;
  description: string;
  accessionNumber: string;
  modalities: string;
  /** Instances in the local store (0: only on the PACS). */
  localInstances: number;
  /** Instances the PACS reports (null: not on the PACS, or not asked). */
  pacsInstances: number | null;
  outboxPending: number;
  /** Finished analyses of its series. */
  analysed: number;
  /** Of those, signed by a radiologist. */
  signed: number;
  /** Results and reports of it the PACS confirmed. */
  sent: number;
}

export interface Worklist {
  rows: WorklistRow[];
  /** Why PACS studies are missing (e.g. unreachable), if they are. */
  warning: string | null;
  /** More studies match than were listed (200 from the store, 200 from the PACS). */
  more: boolean;
  /** Name of the configured PACS, if any. */
  pacs: string | null;
  store: string;
}

export interface Progress {
  done: number;
  /** 0 when unknown */
  total: number;
  bytes: number;
  failed: number;
}

export interface TransferSummary {
  imported: number;
  alreadyStored: number;
  bytes: number;
  failed: FileIssue[];
}

export interface OutboxRow {
  id: number;
  sopUid: string;
  studyUid: string;
  destination: string;
  state: "pending" | "sending" | "sent" | "failed" | "cancelled";
  attempts: number;
  lastError: string | null;
  createdAt: string;
  sentAt: string | null;
}

export interface DrainReport {
  sent: number;
  alreadyThere: number;
  sentByDimse: number;
  deferred: number;
  failed: number;
}

/** The site settings file (snake_case, as stored). Secrets are never part of it. */
export interface Settings {
  pacs: {
    name: string;
    url: string;
    user: string;
    bearer: boolean;
    ca_file: string | null;
    ca_only: boolean;
    client_cert: string | null;
    client_key: string | null;
    dimse_aet: string;
    dimse_host: string;
    dimse_port: number;
    our_aet: string;
  } | null;
  listen: { aet: string; port: number } | null;
  /** The site, as signed reports name the signer's organization. */
  institution?: string | null;
  /** `[serve]` for `lightbox serve`: not edited here, kept as it is. */
  serve?: Record<string, unknown> | null;
}

/** An analysis result: AI output until a radiologist signs it. */
export interface AnalysisResult {
  jobId: number;
  pipeline: string;
  seriesUid: string;
  /** Whose series, when and what (empty when the series has left the store). */
  patientName: string;
  patientId: string;
  studyDate: string;
  seriesDescription: string;
  state: "done" | "failed" | "running" | "queued" | "cancelled" | "waiting" | "superseded";
  volumeMm3: number | null;
  segUid: string | null;
  srUid: string | null;
  signedBy: string | null;
  /** What the radiologist decided about the AI finding: "accepted", "rejected", "edited to … mL". */
  review: string | null;
  error: string | null;
  /** What the analysis found, in words (null for threshold-volume, whose volume says it). */
  summary: string | null;
  details: ResultDetails | null;
}

/** The patient's yearly brain volume change against the healthy band for the age. */
export interface AtrophyPlot {
  age_years: number;
  rate_percent_per_year: number;
  /** (age, healthy mean %/yr) every 5 years. */
  healthy_mean: [number, number][];
  /** "Healthy" is within this many %/yr of the mean. */
  healthy_band: number;
  cutoff_percent_per_year: number;
}

/** A lesion a result lists: where it is (patient LPS mm) and, for DCE, its time-intensity curve. */
export interface LesionRef {
  label: string;
  centre_mm: [number, number, number];
  volume_ml: number;
  /** (seconds, mean signal) per phase. */
  curve?: [number, number][];
}

export interface ResultDetails {
  /** The prostate gland's volume (mL) a prostate model measured, when it has a gland class. */
  gland_ml?: number | null;
  /** [label, value, UCUM unit] */
  findings?: [string, number, string][];
  atrophy_plot?: AtrophyPlot;
  lesions?: LesionRef[];
}

/** A measurement the radiologist made on a series (it goes into the report they sign). */
export interface Measurement {
  id: number;
  seriesUid: string;
  kind: "length" | "diameter" | "area" | "volume" | "mean" | "sd" | "psa" | "psa-density";
  label: string;
  value: number;
  /** UCUM: mm, cm, mm2, cm2, mm3, cm3, mL, um2/s, {ratio}, ng/mL, ng/mL/mL. */
  unit: string;
  author: string;
  createdAt: string;
}

/** The radiologist's verdict on an AI finding when signing. */
export type Review = { kind: "accept" } | { kind: "reject" } | { kind: "edit"; volumeMl: number };

/** One analysis job (queued, running or ended). */
export interface Job {
  id: number;
  pipeline: string;
  /**
   * `waiting`: its input is incomplete (a dynamic series whose later phases have not arrived;
   * `stage` says what is missing). Not a failure: the rest arriving is a new job, which marks
   * this one `superseded`.
   */
  state: "queued" | "running" | "done" | "failed" | "cancelled" | "waiting" | "superseded";
  device: "cpu" | "gpu" | string;
  /** What it is doing now, or did last. */
  stage: string;
  seriesUid: string;
  /** Seconds the last run took, or has taken so far. */
  seconds: number | null;
  /** How many times it was started (more than one after a crash or a re-run). */
  runs: number;
  error: string | null;
  createdAt: string;
}

/** Whether the PACS answers (the header's indicator). */
export interface PacsStatus {
  configured: boolean;
  name: string;
  url: string;
  reachable: boolean;
  millis: number;
  detail: string;
  code: string;
}

/** What the C-STORE SCP reports as a PACS or modality pushes to the workstation. */
export interface PushEvent {
  kind: "associated" | "echo" | "stored" | "failed" | "released";
  callingAe: string;
  instances: number;
  bytes: number;
  detail: string;
}

/** What the worklist, PACS and outbox screens need. */
export interface SiteBackend {
  worklist(query: WorklistQuery): Promise<Worklist>;
  retrieveStudy(studyUid: string, total: number, onProgress: (p: Progress) => void): Promise<TransferSummary>;
  cancelRetrieve(studyUid: string): Promise<void>;
  importFolder(onProgress: (p: Progress) => void): Promise<TransferSummary>;
  /** The native folder picker; null when closed without a choice. */
  pickFolder(): Promise<string | null>;
  /** Imports files or folders (dropped on the window) into the store. */
  importPaths(paths: string[], onProgress: (p: Progress) => void): Promise<TransferSummary>;
  /** Calls `handler` with the paths of files dropped on the window; returns an unsubscribe. */
  onFilesDropped(handler: (paths: string[]) => void): Promise<() => void>;
  /** Reports incoming DIMSE pushes; resolves to what the SCP listens as, or null when it is off. */
  subscribePushes(handler: (e: PushEvent) => void): Promise<string | null>;
  getSettings(): Promise<Settings>;
  /** Saves the settings; `secret` (password or token) goes to the OS keyring. Resolves to the file's path. */
  saveSettings(settings: Settings, secret: string | null): Promise<string>;
  results(): Promise<AnalysisResult[]>;
  /** Signs a result as `radiologist` with their verdict on the AI finding; resolves to the signed SR's UID. */
  signResult(jobId: number, radiologist: string, review: Review): Promise<string>;
  outbox(): Promise<OutboxRow[]>;
  drainOutbox(): Promise<DrainReport>;
  /** Takes a pending or refused row out of the outbox; false when it is being sent or was sent. */
  cancelOutbox(id: number): Promise<boolean>;
  /** Puts a refused or cancelled row back in the queue. */
  retryOutbox(id: number): Promise<void>;
  jobs(): Promise<Job[]>;
  /** Cancels a queued or running job; false when it had ended. */
  cancelJob(id: number): Promise<boolean>;
  /** Runs a failed or cancelled job again; resolves when it has finished. */
  rerunJob(id: number): Promise<void>;
  pacsStatus(): Promise<PacsStatus>;
  /** Opens the viewer on a result: its series with the segmentation drawn over it; with
   * `radiologist`, lengths measured there are saved for the report they sign. */
  /** `at`: open at this point (patient mm), e.g. a lesion of the result. */
  openResult(jobId: number, radiologist: string | null, at?: [number, number, number] | null): Promise<void>;
  /** Opens the viewer on a series beside the patient's prior; resolves to which prior and why. */
  compareWithPrior(seriesUid: string): Promise<string>;
  measurements(seriesUid: string): Promise<Measurement[]>;
  /** Records a measurement; resolves to its id. */
  addMeasurement(m: Omit<Measurement, "id" | "createdAt">): Promise<number>;
  removeMeasurement(id: number): Promise<boolean>;
}
