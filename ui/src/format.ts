import type { Series } from "./backend";

/**
 * PSA density (ng/mL per mL of gland) from the PSA the radiologist enters and the gland volume;
 * null when either is missing or not a positive number.
 */
export function psaDensity(psa: string, glandMl: number | null | undefined): number | null {
  const value = Number(psa.trim().replace(",", "."));
  if (!psa.trim() || !Number.isFinite(value) || value < 0 || !glandMl || !(glandMl > 0)) return null;
  return value / glandMl;
}

/** "256×256×20", with "×10" time points for 4-D series. */
export function formatDims(s: Series): string {
  const [c, r, z, t] = s.dims;
  if (c === 0 || r === 0) return "no pixels";
  const base = `${c}×${r}×${z}`;
  return t > 1 ? `${base}×${t}` : base;
}

/** DICOM DA (YYYYMMDD) to ISO date; anything else is shown as it is. */
export function formatDate(da: string): string {
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(da.trim());
  return m ? `${m[1]}-${m[2]}-${m[3]}` : da;
}

/** DICOM PN "Family^Given^Middle" to "Family, Given Middle". */
export function formatName(pn: string): string {
  const [family = "", ...rest] = pn.split("=")[0].split("^");
  const given = rest.filter(Boolean).join(" ");
  return given ? `${family}, ${given}` : family;
}

/** "12.3 MB" */
export function formatBytes(bytes: number): string {
  if (bytes < 1e3) return `${bytes} B`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(1)} kB`;
  if (bytes < 1e9) return `${(bytes / 1e6).toFixed(1)} MB`;
  return `${(bytes / 1e9).toFixed(2)} GB`;
}

/**
 * The Jobs tab's badge: analyses waiting for the rest of their input, and failures the reader
 * has not seen yet (not listed in `seen` as "id:runs": a job run again and failed again is
 * news again). Empty when there is nothing to say.
 */
export function jobsBadge(jobs: { id: number; runs: number; state: string }[], seen: Set<string>): string {
  const waiting = jobs.filter((j) => j.state === "waiting").length;
  const failed = jobs.filter((j) => j.state === "failed" && !seen.has(`${j.id}:${j.runs}`)).length;
  const parts: string[] = [];
  if (failed > 0) parts.push(`${failed} failed`);
  if (waiting > 0) parts.push(`${waiting} waiting`);
  return parts.join(" · ");
}

/** What a PACS retrieval brought, in words; a partial one says what is missing. */
export function retrievedLine(s: { imported: number; alreadyStored: number; bytes: number; failed: { path: string }[] }): string {
  const line = `Retrieved: ${s.imported} new, ${s.alreadyStored} already here (${formatBytes(s.bytes)})`;
  if (s.failed.length === 0) return line;
  // "series UID (n instances)": one series may fail by instance, several times.
  const series = new Set(s.failed.map((f) => f.path.split(" (")[0])).size;
  return `${line}; incomplete: ${s.failed.length === 1 ? "1 failure" : `${s.failed.length} failures`} in ${series === 1 ? "1 series" : `${series} series`}, listed below`;
}

/** A study's place in words: where its images are, and what waits to be sent. */
export function studyStatus(row: {
  localInstances: number;
  pacsInstances: number | null;
  outboxPending: number;
  analysed?: number;
  signed?: number;
  sent?: number;
}): string {
  const parts: string[] = [];
  if (row.localInstances > 0 && row.pacsInstances !== null) parts.push("local + PACS");
  else if (row.localInstances > 0) parts.push("local");
  else if (row.pacsInstances !== null) parts.push("on PACS");
  const analysed = row.analysed ?? 0;
  const signed = row.signed ?? 0;
  if (analysed > 0) parts.push(signed >= analysed ? "analysed, signed" : `analysed, ${analysed - signed} to review`);
  if ((row.sent ?? 0) > 0 && row.outboxPending === 0) parts.push("report sent");
  if (row.outboxPending > 0) parts.push(`${row.outboxPending} to send`);
  return parts.join(" · ");
}

/** One line about an incoming DIMSE push. */
export function pushLine(e: { kind: string; callingAe: string; instances: number; bytes: number; detail: string }): string {
  switch (e.kind) {
    case "associated":
      return `Receiving from ${e.callingAe}…`;
    case "stored":
      return `Receiving from ${e.callingAe}: ${e.instances} instances (${formatBytes(e.bytes)})`;
    case "released":
      return `Received ${e.instances} instances from ${e.callingAe} (${formatBytes(e.bytes)})`;
    case "failed":
      return `A push from ${e.callingAe} failed: ${e.detail}`;
    default:
      return `Echo from ${e.callingAe}`;
  }
}

/** A chart's mapping from data to SVG pixels: `x` and `y` ranges onto a box (y grows upwards). */
export interface Chart {
  x: (v: number) => number;
  y: (v: number) => number;
}

export function chart(
  [x0, x1]: [number, number],
  [y0, y1]: [number, number],
  box: { left: number; top: number; width: number; height: number },
): Chart {
  const clamp = (t: number) => Math.min(1, Math.max(0, t));
  return {
    x: (v) => box.left + clamp((v - x0) / (x1 - x0)) * box.width,
    y: (v) => box.top + (1 - clamp((v - y0) / (y1 - y0))) * box.height,
  };
}

/** An SVG path through points ("M x y L x y …"). */
export function polyline(points: [number, number][], c: Chart): string {
  return points.map(([a, b], i) => `${i === 0 ? "M" : "L"}${c.x(a).toFixed(1)} ${c.y(b).toFixed(1)}`).join(" ");
}

/** The healthy band as a closed SVG path: the mean + band forwards, the mean − band back. */
export function bandPath(mean: [number, number][], band: number, c: Chart): string {
  const upper = mean.map(([a, m]) => [a, m + band] as [number, number]);
  const lower = [...mean].reverse().map(([a, m]) => [a, m - band] as [number, number]);
  return `${polyline([...upper, ...lower], c)} Z`;
}
