import { describe, expect, it } from "vitest";
import { formatDate, formatDims, formatName, formatBytes, psaDensity, pushLine, studyStatus } from "./format";
import { wildcardMatch } from "./backend/mock";
import type { Series } from "./backend";

const series = (dims: Series["dims"]): Series => ({
  uid: "1",
  number: 1,
  modality: "MR",
  description: "",
  dims,
  instances: 1,
  transferSyntaxes: [],
  mosaic: false,
  patientId: "",
  patientName: "",
  studyDate: "",
  studyDescription: "",
});

describe("format", () => {
  it("shows time points only for 4-D series", () => {
    expect(formatDims(series([64, 64, 15, 10]))).toBe("64×64×15×10");
    expect(formatDims(series([256, 256, 20, 1]))).toBe("256×256×20");
    expect(formatDims(series([0, 0, 0, 1]))).toBe("no pixels");
  });
  it("formats DICOM dates and names", () => {
    expect(formatDate("20260101")).toBe("2026-01-01");
    expect(formatDate("")).toBe("");
    expect(formatName("Doe^Jane^M")).toBe("Doe, Jane M");
    expect(formatName("QIN-PROSTATE-01-0001")).toBe("QIN-PROSTATE-01-0001");
    expect(formatName("Yamada^Tarou=山田^太郎")).toBe("Yamada, Tarou");
  });
});

describe("worklist helpers", () => {
  it("says where a study is and what waits to be sent", () => {
    expect(studyStatus({ localInstances: 20, pacsInstances: 20, outboxPending: 1 })).toBe("local + PACS · 1 to send");
    expect(studyStatus({ localInstances: 0, pacsInstances: 12, outboxPending: 0 })).toBe("on PACS");
    expect(studyStatus({ localInstances: 5, pacsInstances: null, outboxPending: 0 })).toBe("local");
    expect(studyStatus({ localInstances: 5, pacsInstances: null, outboxPending: 0, analysed: 2, signed: 1 })).toBe(
      "local · analysed, 1 to review",
    );
    expect(
      studyStatus({ localInstances: 5, pacsInstances: 7, outboxPending: 0, analysed: 1, signed: 1, sent: 2 }),
    ).toBe("local + PACS · analysed, signed · report sent");
  });

  it("formats sizes", () => {
    expect(formatBytes(999)).toBe("999 B");
    expect(formatBytes(133_000)).toBe("133.0 kB");
    expect(formatBytes(92_000_000)).toBe("92.0 MB");
    expect(formatBytes(2_500_000_000)).toBe("2.50 GB");
  });

  it("matches DICOM wildcards like the store and the PACS", () => {
    expect(wildcardMatch("DOE*", "Doe^Jane")).toBe(true);
    expect(wildcardMatch("D?E^JANE", "Doe^Jane")).toBe(true);
    expect(wildcardMatch("ROE*", "Doe^Jane")).toBe(false);
    expect(wildcardMatch("a.b*", "axb")).toBe(false);
    expect(wildcardMatch("", "anything")).toBe(true);
  });
});

describe("incoming pushes", () => {
  it("say who is sending and how much", () => {
    const e = { callingAe: "ORTHANC", instances: 12, bytes: 1_600_000, detail: "" };
    expect(pushLine({ ...e, kind: "stored" })).toBe("Receiving from ORTHANC: 12 instances (1.6 MB)");
    expect(pushLine({ ...e, kind: "released" })).toBe("Received 12 instances from ORTHANC (1.6 MB)");
    expect(pushLine({ ...e, kind: "failed", detail: "connection lost" })).toBe("A push from ORTHANC failed: connection lost");
  });
});

import { bandPath, chart, polyline } from "./format";

describe("charts", () => {
  const c = chart([20, 90], [-2, 0.5], { left: 40, top: 10, width: 280, height: 100 });
  it("maps data onto the box, y upwards, clamped to it", () => {
    expect(c.x(20)).toBe(40);
    expect(c.x(90)).toBe(320);
    expect(c.y(0.5)).toBe(10);
    expect(c.y(-2)).toBe(110);
    expect(c.y(-5)).toBe(110);
    expect(c.x(55)).toBeCloseTo(180);
  });
  it("draws lines and closed bands", () => {
    expect(polyline([[20, 0.5], [90, -2]], c)).toBe("M40.0 10.0 L320.0 110.0");
    const band = bandPath([[20, -0.2], [90, -0.6]], 0.3, c);
    expect(band.startsWith("M40.0")).toBe(true);
    expect(band.endsWith("Z")).toBe(true);
    expect(band.split("L").length).toBe(4);
  });
});

describe("psaDensity", () => {
  it("divides the PSA by the gland volume", () => {
    expect(psaDensity("6.5", 40)).toBeCloseTo(0.1625);
    expect(psaDensity("6,5", 40)).toBeCloseTo(0.1625);
  });
  it("gives nothing without a usable PSA or gland", () => {
    expect(psaDensity("", 40)).toBeNull();
    expect(psaDensity("abc", 40)).toBeNull();
    expect(psaDensity("-1", 40)).toBeNull();
    expect(psaDensity("6.5", null)).toBeNull();
    expect(psaDensity("6.5", 0)).toBeNull();
  });
});

import { jobsBadge, retrievedLine } from "./format";

describe("the Jobs tab's badge", () => {
  const jobs = [
    { id: 1, runs: 1, state: "done" },
    { id: 2, runs: 1, state: "failed" },
    { id: 3, runs: 1, state: "waiting" },
    { id: 4, runs: 2, state: "failed" },
  ];
  it("counts failures not yet seen, and waits", () => {
    expect(jobsBadge(jobs, new Set())).toBe("2 failed · 1 waiting");
    expect(jobsBadge(jobs, new Set(["2:1"]))).toBe("1 failed · 1 waiting");
    expect(jobsBadge(jobs, new Set(["2:1", "4:2"]))).toBe("1 waiting");
    expect(jobsBadge([{ id: 1, runs: 1, state: "done" }], new Set())).toBe("");
  });
  it("shows a job that failed again after a re-run", () => {
    expect(jobsBadge(jobs, new Set(["2:1", "4:1"]))).toBe("1 failed · 1 waiting");
  });
});

describe("PACS retrievals", () => {
  const whole = { imported: 12, alreadyStored: 3, bytes: 2_000_000, failed: [] };
  it("count what arrived", () => {
    expect(retrievedLine(whole)).toBe("Retrieved: 12 new, 3 already here (2.0 MB)");
  });
  it("say when a study came in part, counting series once", () => {
    const failed = [
      { path: "series 1.2.3", reason: "HTTP 404" },
      { path: "series 1.2.4 (1 instance)", reason: "not DICOM" },
      { path: "series 1.2.4 (1 instance)", reason: "not DICOM" },
    ];
    expect(retrievedLine({ ...whole, failed })).toBe(
      "Retrieved: 12 new, 3 already here (2.0 MB); incomplete: 3 failures in 2 series, listed below",
    );
    expect(retrievedLine({ ...whole, failed: failed.slice(0, 1) })).toMatch(/incomplete: 1 failure in 1 series/);
  });
});
