import { describe, expect, it } from "vitest";
import { formatDate, formatDims, formatName } from "./format";
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
