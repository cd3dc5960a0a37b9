import type { AnalysisResult, Backend, Job, Measurement, OutboxRow, Settings, Progress, PushEvent, SeriesList, WorklistQuery, WorklistRow } from "./types";

/** DICOM-style wildcard match (`*`, `?`), case-insensitive, as the store and PACS do. */
export function wildcardMatch(pattern: string, value: string): boolean {
  if (!pattern) return true;
  const escaped = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${escaped}$`, "i").test(value);
}

/** Worklist rows matching a query (the mock's stand-in for the store + QIDO). */
export function filterWorklist(rows: WorklistRow[], q: WorklistQuery): WorklistRow[] {
  return rows.filter(
    (r) =>
      wildcardMatch(q.patientName, r.patientName) &&
      wildcardMatch(q.patientId, r.patientId) &&
      wildcardMatch(q.accessionNumber, r.accessionNumber) &&
      (!q.modality || r.modalities.split("\\").includes(q.modality.toUpperCase())) &&
      (!q.dateFrom || r.date >= q.dateFrom) &&
      (!q.dateTo || r.date <= q.dateTo),
  );
}

/** A browser-only backend with fixed data, so the UI runs and is tested without Tauri. */
export function mockBackend(list: SeriesList = demoList): Backend & { opened: string[] } {
  const opened: string[] = [];
  const rows = structuredClone(demoWorklist);
  const outbox = structuredClone(demoOutbox);
  const cancelled = new Set<string>();
  const results = structuredClone(demoResults);
  const jobs = structuredClone(demoJobs);
  const measurements: Measurement[] = [];
  let settings: Settings = { pacs: null, listen: null };
  return {
    kind: "browser-mock",
    opened,
    listSeries: async () => structuredClone(list),
    openViewer: async (uid) => {
      if (!list.series.some((s) => s.uid === uid)) {
        throw { code: "unknown_series", message: `no series ${uid}` };
      }
      opened.push(uid);
    },
    uiReady: async () => {},
    worklist: async (query) => {
      // Tests add studies with `window.lightboxMockStudies = N`. At most 200 are listed, as
      // the workstation lists at most 200 from each side.
      const all = filterWorklist([...rows, ...extraStudies((globalThis as { lightboxMockStudies?: number }).lightboxMockStudies ?? 0)], query);
      return { rows: all.slice(0, 200), warning: null, more: all.length > 200, pacs: "mock-pacs", store: "/mock/store" };
    },
    retrieveStudy: async (studyUid, total, onProgress) => {
      const row = rows.find((r) => r.studyUid === studyUid);
      if (!row || row.pacsInstances === null) throw { code: "pacs-http-error", message: `study ${studyUid} not on the PACS` };
      cancelled.delete(studyUid);
      const bytesEach = 133_000;
      for (let done = 1; done <= total; done++) {
        await new Promise((ok) => setTimeout(ok, 40));
        if (cancelled.has(studyUid)) throw { code: "cancelled", message: "cancelled" };
        onProgress({ done, total, bytes: done * bytesEach, failed: 0 } satisfies Progress);
      }
      // Tests make the PACS refuse one series (8 instances) with `window.lightboxMockMissingSeries = UID`.
      const missing = (globalThis as { lightboxMockMissingSeries?: string }).lightboxMockMissingSeries;
      const got = missing ? total - 8 : total;
      row.localInstances = got;
      const failed = missing ? [{ path: `series ${missing} (8 instances)`, reason: `GET /studies/${studyUid}/series/${missing}: HTTP 404: Not Found` }] : [];
      return { imported: got, alreadyStored: 0, bytes: got * bytesEach, failed };
    },
    cancelRetrieve: async (studyUid) => {
      cancelled.add(studyUid);
    },
    importFolder: async (onProgress) => {
      for (let done = 1; done <= 20; done++) onProgress({ done, total: 20, bytes: done * 133_000, failed: 0 });
      return { imported: 20, alreadyStored: 0, bytes: 0, failed: [{ path: "demo/README.md", reason: "not a DICOM file" }] };
    },
    // Tests choose with `window.lightboxMockPick = "/some/folder/"` (unset: the picker is closed).
    pickFolder: async () => (globalThis as { lightboxMockPick?: string }).lightboxMockPick ?? null,
    importPaths: async (paths, onProgress) => {
      const failed = paths
        .filter((p) => !p.endsWith(".dcm") && !p.endsWith("/"))
        .map((path) => ({ path, reason: "not a DICOM file (no Part 10 header)" }));
      const good = paths.length - failed.length;
      for (let done = 1; done <= good; done++) onProgress({ done, total: good, bytes: done * 133_000, failed: failed.length });
      return { imported: good, alreadyStored: 0, bytes: good * 133_000, failed };
    },
    onFilesDropped: async (handler) => {
      // Tests drop files with `window.lightboxMockDrop([...])`.
      (globalThis as { lightboxMockDrop?: (paths: string[]) => void }).lightboxMockDrop = handler;
      return () => delete (globalThis as { lightboxMockDrop?: unknown }).lightboxMockDrop;
    },
    subscribePushes: async (handler) => {
      // Tests push with `window.lightboxMockPush({...})`.
      (globalThis as { lightboxMockPush?: (e: PushEvent) => void }).lightboxMockPush = handler;
      return "LIGHTBOX on port 11112";
    },
    getSettings: async () => structuredClone(settings),
    saveSettings: async (next, secret) => {
      const url = next.pacs?.url ?? "";
      if (url && !/^https?:\/\//.test(url)) {
        throw { code: "settings", message: `settings /mock/config.toml: PACS URL "${url}" must start with http:// or https://` };
      }
      if (secret !== null && JSON.stringify(next).includes(secret)) throw { code: "internal", message: "secret leaked" };
      settings = structuredClone(next);
      return "/mock/config.toml";
    },
    results: async () => structuredClone(results),
    signResult: async (jobId, radiologist, review) => {
      const r = results.find((x) => x.jobId === jobId);
      if (!r || r.state !== "done") throw { code: "analysis", message: `job ${jobId} cannot be signed` };
      if (!radiologist.trim()) throw { code: "analysis", message: "a signature needs the radiologist's name" };
      if (review.kind === "edit" && !(review.volumeMl >= 0)) {
        throw { code: "analysis", message: `an edited volume of ${review.volumeMl} mL is not a volume` };
      }
      r.signedBy = radiologist.trim();
      r.review = review.kind === "accept" ? "accepted" : review.kind === "reject" ? "rejected" : `edited to ${review.volumeMl} mL`;
      r.srUid = `${r.srUid}.signed`;
      outbox.push({
        id: outbox.length + 1,
        sopUid: r.srUid,
        studyUid: "1.2.826.0.1.1",
        destination: "mock-pacs",
        state: "pending",
        attempts: 0,
        lastError: null,
        createdAt: "2026-11-25T12:00:00Z",
        sentAt: null,
      });
      return r.srUid;
    },
    outbox: async () => structuredClone(outbox),
    drainOutbox: async () => {
      let sent = 0;
      for (const item of outbox) {
        if (item.state === "pending" || item.state === "sending") {
          item.state = "sent";
          item.attempts += 1;
          item.lastError = null;
          item.sentAt = "2026-11-25T12:00:00Z";
          sent += 1;
        }
      }
      return { sent, alreadyThere: 0, sentByDimse: 0, deferred: 0, failed: outbox.filter((i) => i.state === "failed").length };
    },
    cancelOutbox: async (id) => {
      const item = outbox.find((i) => i.id === id);
      if (!item) throw { code: "store", message: `no outbox item ${id}` };
      if (item.state !== "pending" && item.state !== "failed") return false;
      item.state = "cancelled";
      return true;
    },
    retryOutbox: async (id) => {
      const item = outbox.find((i) => i.id === id);
      if (item && (item.state === "failed" || item.state === "cancelled")) item.state = "pending";
    },
    jobs: async () => structuredClone(jobs),
    cancelJob: async (id) => {
      const job = jobs.find((j) => j.id === id);
      if (!job || (job.state !== "queued" && job.state !== "running" && job.state !== "waiting")) return false;
      job.state = "cancelled";
      job.stage = "cancelled";
      return true;
    },
    rerunJob: async (id) => {
      const job = jobs.find((j) => j.id === id);
      if (!job) throw { code: "analysis", message: `no job ${id}` };
      if (job.state === "waiting") {
        // The mock's waiting series never gets the rest of its phases.
        throw { code: "incomplete", message: `series ${job.seriesUid} is incomplete: ${job.stage}; waiting for the rest` };
      }
      if (job.state !== "failed" && job.state !== "cancelled") return;
      job.state = "running";
      job.stage = "segmenting";
      job.runs += 1;
      await new Promise((ok) => setTimeout(ok, 300));
      job.state = "done";
      job.stage = "done";
      job.error = null;
      job.seconds = 0.3;
    },
    openResult: async (jobId, _radiologist, at) => {
      const r = results.find((x) => x.jobId === jobId);
      if (!r || r.state !== "done") throw { code: "analysis", message: `no finished analysis job ${jobId}` };
      opened.push(at ? `job ${jobId} at ${at.join(",")}` : `job ${jobId}`);
    },
    compareWithPrior: async (seriesUid) => {
      const r = results.find((x) => x.seriesUid === seriesUid);
      if (!r) throw { code: "analysis", message: `no earlier study of this patient with a comparable series to ${seriesUid}` };
      opened.push(`compare ${seriesUid}`);
      return 'Apparent Diffusion Coefficient of 20190301 (same description "Apparent Diffusion Coefficient")';
    },
    measurements: async (seriesUid) => structuredClone(measurements.filter((m) => m.seriesUid === seriesUid)),
    addMeasurement: async (m) => {
      const units = ["mm", "cm", "mm2", "cm2", "mm3", "cm3", "mL", "um2/s", "{ratio}", "ng/mL", "ng/mL/mL"];
      if (!units.includes(m.unit)) throw { code: "analysis", message: `measurement: unit "${m.unit}"` };
      if (!Number.isFinite(m.value)) throw { code: "analysis", message: `measurement: value ${m.value} is not a number` };
      if (!m.label.trim() || !m.author.trim()) {
        throw { code: "analysis", message: "measurement: a label and the radiologist's name are needed" };
      }
      const id = measurements.length + 1;
      measurements.push({ ...m, id, createdAt: "2026-11-25T12:05:00Z" });
      return id;
    },
    removeMeasurement: async (id) => {
      const i = measurements.findIndex((m) => m.id === id);
      if (i < 0) return false;
      measurements.splice(i, 1);
      return true;
    },
    pacsStatus: async () => ({
      configured: true,
      name: "mock-pacs",
      url: "http://pacs.example.org/dicom-web",
      reachable: false,
      millis: 3002,
      detail: "cannot reach the PACS at http://pacs.example.org/dicom-web: connection refused",
      code: "pacs-unreachable",
    }),
  };
}

/** `n` more local studies, for paging. */
function extraStudies(n: number): WorklistRow[] {
  return Array.from({ length: n }, (_, i) => ({
    studyUid: `1.2.826.0.1.9.${i}`,
    patientId: `P${String(i).padStart(3, "0")}`,
    patientName: `Test^Patient${String(i).padStart(3, "0")}`,
    date: `2020${String((i % 12) + 1).padStart(2, "0")}${String((i % 28) + 1).padStart(2, "0")}`,
    description: "MR brain",
    accessionNumber: `A${i}`,
    modalities: "MR",
    localInstances: 10,
    pacsInstances: null,
    outboxPending: 0,
    analysed: 0,
    signed: 0,
    sent: 0,
  }));
}

const demoJobs: Job[] = [
  {
    id: 4,
    pipeline: "breast-dce",
    state: "waiting",
    device: "cpu",
    stage: "4 of its 7 phases have arrived",
    seriesUid: "1.2.826.0.1.3680043.2.1125.1.4",
    seconds: 0.4,
    runs: 1,
    error: null,
    createdAt: "2026-11-25T12:04:00Z",
  },
  {
    id: 3,
    pipeline: "threshold-volume",
    state: "running",
    device: "cpu",
    stage: "segmenting",
    seriesUid: "1.2.826.0.1.3680043.2.1125.1.3",
    seconds: 4.2,
    runs: 1,
    error: null,
    createdAt: "2026-11-25T12:03:00Z",
  },
  {
    id: 2,
    pipeline: "threshold-volume",
    state: "failed",
    device: "cpu",
    stage: "failed",
    seriesUid: "1.2.826.0.1.3680043.2.1125.1.2",
    seconds: 0.8,
    runs: 1,
    error: "analysis: no voxel of series 1.2.826.0.1.3680043.2.1125.1.2 is above 1500",
    createdAt: "2026-11-25T12:02:00Z",
  },
  {
    id: 1,
    pipeline: "threshold-volume",
    state: "done",
    device: "cpu",
    stage: "done",
    seriesUid: "1.2.826.0.1.3680043.2.1125.1.1",
    seconds: 1.9,
    runs: 2,
    error: null,
    createdAt: "2026-11-25T12:00:00Z",
  },
];

const demoList: SeriesList = {
  folder: "demo/prostate-adc",
  series: [
    {
      uid: "1.2.3.4.5",
      number: 7,
      modality: "MR",
      description: "Apparent Diffusion Coefficient",
      dims: [256, 256, 20, 1],
      instances: 20,
      transferSyntaxes: ["Explicit VR Little Endian"],
      mosaic: false,
      patientId: "MOCK-001",
      patientName: "Mock^Patient",
      studyDate: "20260101",
      studyDescription: "Mock study",
    },
  ],
  unreadable: [{ path: "demo/prostate-adc/LICENSE.txt", reason: "not a DICOM file" }],
};

const demoWorklist: WorklistRow[] = [
  {
    studyUid: "1.2.826.0.1.1",
    patientId: "MOCK-001",
    patientName: "Mock^Patient",
    date: "20260101",
    description: "Prostate bpMRI",
    accessionNumber: "ACC-1",
    modalities: "MR",
    localInstances: 20,
    pacsInstances: 20,
    outboxPending: 1,
    analysed: 1,
    signed: 0,
    sent: 0,
  },
  {
    studyUid: "1.2.826.0.1.2",
    patientId: "MOCK-002",
    patientName: "Doe^Jane",
    date: "20251120",
    description: "Brain MRI",
    accessionNumber: "ACC-2",
    modalities: "MR",
    localInstances: 0,
    pacsInstances: 12,
    outboxPending: 0,
    analysed: 0,
    signed: 0,
    sent: 0,
  },
  {
    studyUid: "1.2.826.0.1.3",
    patientId: "MOCK-003",
    patientName: "Roe^Richard",
    date: "20240305",
    description: "Knee",
    accessionNumber: "ACC-3",
    modalities: "MR\\SR",
    localInstances: 0,
    pacsInstances: 40,
    outboxPending: 0,
    analysed: 0,
    signed: 0,
    sent: 0,
  },
];

const demoOutbox: OutboxRow[] = [
  {
    id: 1,
    sopUid: "1.2.826.0.1.1.99",
    studyUid: "1.2.826.0.1.1",
    destination: "mock-pacs",
    state: "pending",
    attempts: 1,
    lastError: "cannot reach the PACS: connection refused",
    createdAt: "2026-11-25T11:00:00Z",
    sentAt: null,
  },
];

const demoResults: AnalysisResult[] = [
  {
    jobId: 2,
    pipeline: "threshold-volume",
    seriesUid: "1.2.3.4.5",
    patientName: "QIN-PROSTATE-01-0001^",
    patientId: "QIN-PROSTATE-01-0001",
    studyDate: "19710714",
    seriesDescription: "ADC map",
    state: "done",
    volumeMm3: 280009.1,
    segUid: "2.25.1",
    srUid: "2.25.2",
    signedBy: null,
    review: null,
    error: null,
    summary: null,
    details: null,
  },
  {
    jobId: 1,
    pipeline: "threshold-volume",
    seriesUid: "1.2.3.4.6",
    patientName: "QIN-PROSTATE-01-0001^",
    patientId: "QIN-PROSTATE-01-0001",
    studyDate: "19710714",
    seriesDescription: "ADC map (earlier)",
    state: "failed",
    volumeMm3: null,
    segUid: null,
    srUid: null,
    signedBy: null,
    review: null,
    error: "no voxel of series 1.2.3.4.6 is above 1500",
    summary: null,
    details: null,
  },
  {
    jobId: 4,
    pipeline: "brain-atrophy",
    seriesUid: "1.2.3.4.8",
    patientName: "Doe^Jane",
    patientId: "MOCK-001",
    studyDate: "20260110",
    seriesDescription: "T1 MPRAGE",
    state: "done",
    volumeMm3: 1_610_000,
    segUid: "2.25.5",
    srUid: "2.25.6",
    signedBy: null,
    review: null,
    error: null,
    summary:
      "intracranial 1943 mL, grey 1110 mL, white 500 mL, CSF 333 mL, BPF 0.829; brain volume change -0.98 % over 1.00 years (-0.97 %/yr); beyond what a healthy person of 68 loses",
    details: {
      findings: [
        ["Intracranial volume", 1943, "mL"],
        ["Left hippocampus", 5.66, "mL"],
        ["Brain volume change per year", -0.97, "%/a"],
      ],
      atrophy_plot: {
        age_years: 68.2,
        rate_percent_per_year: -0.97,
        healthy_mean: [
          [20, -0.2], [25, -0.2], [30, -0.2], [35, -0.2], [40, -0.26], [45, -0.32], [50, -0.38], [55, -0.44],
          [60, -0.5], [65, -0.55], [70, -0.59], [75, -0.64], [80, -0.65], [85, -0.65], [90, -0.65],
        ],
        healthy_band: 0.3,
        cutoff_percent_per_year: -0.37,
      },
    },
  },
  {
    jobId: 3,
    pipeline: "breast-dce",
    seriesUid: "1.2.3.4.7",
    patientName: "Roe^Richard",
    patientId: "MOCK-003",
    studyDate: "20240305",
    seriesDescription: "DCE dynamic",
    state: "done",
    volumeMm3: 1780,
    segUid: "2.25.3",
    srUid: "2.25.4",
    signedBy: null,
    review: null,
    error: null,
    summary: "2 lesion candidate(s): 0.89 mL type iii washout, 0.51 mL type ii plateau",
    details: {
      findings: [["Candidate 1 (Type III washout): volume", 0.89, "mL"]],
      lesions: [
        {
          label: "Lesion candidate 1 (Type III washout)",
          centre_mm: [-18, 30, -2],
          volume_ml: 0.89,
          curve: [[0, 600], [60, 1720], [120, 1890], [180, 1800], [240, 1700], [300, 1600], [360, 1510]],
        },
        {
          label: "Lesion candidate 2 (Type II plateau)",
          centre_mm: [16, 40, 6],
          volume_ml: 0.51,
          curve: [[0, 550], [60, 1130], [120, 1290], [180, 1290], [240, 1285], [300, 1280], [360, 1270]],
        },
      ],
    },
  },
  {
    jobId: 5,
    pipeline: "prostate-bpmri",
    seriesUid: "1.2.3.4.9",
    patientName: "Poe^Edgar",
    patientId: "MOCK-005",
    studyDate: "20251120",
    seriesDescription: "T2W TSE ax",
    state: "done",
    volumeMm3: 620,
    segUid: "2.25.7",
    srUid: "2.25.8",
    signedBy: null,
    review: null,
    error: null,
    summary: "model prostate-nnunet: 1 lesion(s), the likeliest 0.81, gland 42.0 mL; T2W 1.2.3.4.9, ADC 1.2.3.4.10, DWI b = 800",
    details: {
      gland_ml: 42.0,
      findings: [["Lesion 1 likelihood", 0.81, "1"]],
      lesions: [{ label: "Lesion 1 (likelihood 0.81)", centre_mm: [4, 20, -10], volume_ml: 0.62 }],
    },
  },
];
