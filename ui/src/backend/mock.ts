import type { Backend, SeriesList } from "./types";

/** A browser-only backend with fixed data, so the UI runs and is tested without Tauri. */
export function mockBackend(list: SeriesList = demoList): Backend & { opened: string[] } {
  const opened: string[] = [];
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
  };
}

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
