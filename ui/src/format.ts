import type { Series } from "./backend";

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
