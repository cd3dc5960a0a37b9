// The web UI in a real browser (Debian's chromium, driven by playwright-core) against the mock
// backend: what a radiologist sees and does on the series list, without Tauri.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFile, mkdir } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const dist = fileURLToPath(new URL("../dist/", import.meta.url));
const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml" };
let server;
let browser;
let base;

before(async () => {
  server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^[/\\]+/, "");
    try {
      const body = await readFile(join(dist, path || "index.html"));
      res.writeHead(200, { "content-type": types[extname(path || "index.html")] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  base = `http://127.0.0.1:${server.address().port}/`;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  await new Promise((ok) => server?.close(ok));
});

test("series list renders from the backend and Enter opens the viewer", async () => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 700 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(base);
  const status = page.getByTestId("status");
  await status.filter({ hasText: "1 series in" }).waitFor();
  const rows = page.locator("[data-testid=series-table] tbody tr");
  assert.equal(await rows.count(), 1);
  const cells = await rows.first().locator("td").allInnerTexts();
  assert.deepEqual(cells.slice(0, 7), ["Mock, Patient", "2026-01-01", "7", "MR", "Apparent Diffusion Coefficient", "256×256×20", "20"]);
  assert.match(await page.locator("header").innerText(), /not for clinical use/);
  assert.match(await page.locator("details summary").innerText(), /1 files not read/);

  await page.keyboard.press("Enter");
  await status.filter({ hasText: "Viewer opened on series 7" }).waitFor();
  const out = fileURLToPath(new URL("../test-results/", import.meta.url));
  await mkdir(out, { recursive: true });
  await page.screenshot({ path: join(out, "series-list.png") });
  assert.deepEqual(errors, []);
});

test("worklist: search, retrieve with progress, cancel, keyboard only", async () => {
  const page = await browser.newPage({ viewport: { width: 1300, height: 700 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(base);
  await page.getByTestId("status").filter({ hasText: "1 series in" }).waitFor();
  // Reach the worklist tab by keyboard: Tab to it, Enter.
  await page.getByTestId("tab-worklist").focus();
  await page.keyboard.press("Enter");
  const status = page.getByTestId("worklist-status");
  await status.filter({ hasText: "3 studies in the local store and PACS mock-pacs" }).waitFor();
  const rows = page.locator("[data-testid=worklist-table] tbody tr");
  assert.equal(await rows.count(), 3);
  assert.equal(await rows.first().locator("[data-testid=where]").innerText(), "local + PACS · analysed, 1 to review · 1 to send");

  // Search by name with a wildcard, submitted with Enter.
  await page.getByTestId("q-name").fill("doe*");
  await page.keyboard.press("Enter");
  await status.filter({ hasText: "1 studies" }).waitFor();
  assert.equal(await rows.count(), 1);
  assert.match(await rows.first().innerText(), /Doe, Jane/);
  assert.equal(await rows.first().locator("[data-testid=where]").innerText(), "on PACS");

  // Date range.
  await page.getByTestId("q-name").fill("");
  await page.getByTestId("q-from").fill("20250101");
  await page.keyboard.press("Enter");
  await status.filter({ hasText: "2 studies" }).waitFor();

  // Retrieve Doe^Jane: progress shows, then the study is local.
  await page.getByTestId("q-from").fill("");
  await page.getByTestId("q-name").fill("DOE*");
  await page.keyboard.press("Enter");
  await status.filter({ hasText: "1 studies" }).waitFor();
  await rows.first().getByRole("button", { name: "Retrieve" }).click();
  await page.getByTestId("progress-text").filter({ hasText: /^[1-9]\d*\/12/ }).waitFor();
  const out = fileURLToPath(new URL("../test-results/", import.meta.url));
  await mkdir(out, { recursive: true });
  await page.screenshot({ path: join(out, "worklist-retrieving.png") });
  await status.filter({ hasText: "Retrieved: 12 new" }).waitFor();
  assert.equal(await rows.first().locator("[data-testid=where]").innerText(), "local + PACS");

  // A retrieval can be cancelled.
  await page.getByTestId("q-name").fill("ROE*");
  await page.keyboard.press("Enter");
  await status.filter({ hasText: "1 studies" }).waitFor();
  await rows.first().getByRole("button", { name: "Retrieve" }).click();
  await page.getByTestId("progress-text").filter({ hasText: /^[1-9]\d*\/40/ }).waitFor();
  await rows.first().getByRole("button", { name: "Cancel" }).click();
  await status.filter({ hasText: "Retrieval cancelled" }).waitFor();
  assert.equal(await rows.first().locator("[data-testid=where]").innerText(), "on PACS");

  // A series the PACS refuses: the rest arrives, and the status says what is missing.
  await page.evaluate(() => (window.lightboxMockMissingSeries = "1.2.826.0.1.99"));
  await rows.first().getByRole("button", { name: "Retrieve" }).click();
  await status.filter({ hasText: "Retrieved: 32 new" }).waitFor();
  assert.match(await status.innerText(), /incomplete: 1 failure in 1 series, listed below/);
  assert.match(await status.getAttribute("class"), /error/);
  const missing = await page.getByTestId("retrieve-failed").innerText();
  assert.match(missing, /Not retrieved from Roe, Richard, .*run Retrieve again to fetch only what is missing/);
  assert.match(missing, /series 1\.2\.826\.0\.1\.99 \(8 instances\): .*HTTP 404/);
  await page.screenshot({ path: join(out, "worklist-partial.png") });
  assert.deepEqual(errors, []);
});

test("outbox: pending results with their last error, sent on request", async () => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 500 } });
  await page.goto(base);
  await page.getByTestId("tab-outbox").click();
  const status = page.getByTestId("outbox-status");
  await status.filter({ hasText: "1 results in the outbox, 1 not yet on the PACS" }).waitFor();
  const row = page.locator("[data-testid=outbox-table] tbody tr").first();
  assert.match(await row.innerText(), /pending[\s\S]*cannot reach the PACS/);
  await page.getByTestId("send-now").click();
  await status.filter({ hasText: "Sent 1, already on the PACS 0, waiting 0, refused 0" }).waitFor();
  assert.match(await row.innerText(), /sent/);
  const out = fileURLToPath(new URL("../test-results/", import.meta.url));
  await page.screenshot({ path: join(out, "outbox.png") });
});

test("worklist: sort by any column and page through many studies", async () => {
  const page = await browser.newPage({ viewport: { width: 1300, height: 900 } });
  await page.goto(base);
  await page.evaluate(() => (window.lightboxMockStudies = 60));
  await page.getByTestId("tab-worklist").click();
  const status = page.getByTestId("worklist-status");
  await status.filter({ hasText: "63 studies" }).waitFor();
  const rows = page.locator("[data-testid=worklist-table] tbody tr");
  assert.equal(await rows.count(), 25);
  assert.equal(await page.getByTestId("page-info").innerText(), "Page 1 of 3 · 63 studies");
  // Newest first by default: the mock's 2026 study leads; its status says it awaits review.
  assert.match(await rows.first().innerText(), /2026[\s\S]*analysed, 1 to review/);
  await page.getByTestId("page-next").click();
  await page.getByTestId("page-next").click();
  assert.equal(await rows.count(), 13);
  assert.equal(await page.getByTestId("page-next").isDisabled(), true);
  // Sort by patient ID, by keyboard: ascending, then descending.
  await page.getByTestId("sort-id").focus();
  await page.keyboard.press("Enter");
  assert.equal(await page.getByTestId("page-info").innerText(), "Page 1 of 3 · 63 studies");
  const firstIds = await rows.locator("td:nth-child(2)").allInnerTexts();
  assert.deepEqual(firstIds, [...firstIds].sort((a, b) => a.localeCompare(b)));
  await page.keyboard.press("Enter");
  const descending = await rows.locator("td:nth-child(2)").allInnerTexts();
  assert.deepEqual(descending, [...descending].sort((a, b) => b.localeCompare(a)));
  assert.equal(await page.getByTestId("sort-id").locator("xpath=..").getAttribute("aria-sort"), "descending");

  // More than are listed: the status says so, and a narrower search lists them all.
  await page.evaluate(() => (window.lightboxMockStudies = 250));
  await page.getByTestId("q-name").focus();
  await page.keyboard.press("Enter");
  await status.filter({ hasText: "200 studies" }).waitFor();
  assert.match(await status.innerText(), /more match than are listed: narrow the search/);
  assert.match(await status.getAttribute("class"), /error/);
  await page.getByTestId("q-from").fill("20260101");
  await page.keyboard.press("Enter");
  await status.filter({ hasText: /^\d+ studies in the local store and PACS mock-pacs$/ }).waitFor();
});

test("outbox: a pending row can be taken out and put back", async () => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 500 } });
  await page.goto(base);
  await page.getByTestId("tab-outbox").click();
  const status = page.getByTestId("outbox-status");
  await status.filter({ hasText: "1 not yet on the PACS" }).waitFor();
  const row = page.locator("[data-testid=outbox-table] tbody tr").first();
  await row.getByTestId("cancel-outbox").click();
  await status.filter({ hasText: "taken out of the outbox" }).waitFor();
  assert.match(await row.innerText(), /cancelled/);
  // Sending now leaves it alone.
  await page.getByTestId("send-now").click();
  await status.filter({ hasText: "Sent 0," }).waitFor();
  await row.getByTestId("retry-outbox").click();
  await status.filter({ hasText: "queued again" }).waitFor();
  assert.match(await row.innerText(), /pending/);
});

test("jobs: device, stage and errors shown; a waiting job is not a failure; cancel a running job, re-run a failed one", async () => {
  const page = await browser.newPage({ viewport: { width: 1400, height: 500 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(base);
  // From another tab, the Jobs tab tells of the failure not yet seen and the job that waits.
  const badge = page.getByTestId("jobs-badge");
  await badge.filter({ hasText: "1 failed · 1 waiting" }).waitFor();
  assert.match(await badge.getAttribute("class"), /alarm/);
  await page.getByTestId("tab-jobs").click();
  const status = page.getByTestId("jobs-status");
  // Seen: the failure leaves the badge; the wait stays until it ends.
  await badge.filter({ hasText: /^1 waiting$/ }).waitFor();
  assert.doesNotMatch(await badge.getAttribute("class"), /alarm/);
  await status
    .filter({ hasText: "4 analyses: 1 queued or running, 1 waiting for the rest of a series, 1 failed" })
    .waitFor();
  const running = page.locator("tr[data-job='3']");
  const failedRow = page.locator("tr[data-job='2']");
  // A DCE series whose later phases have not arrived: waiting, with what is missing, no error.
  const waitingRow = page.locator("tr[data-job='4']");
  assert.match(await waitingRow.innerText(), /waiting[\s\S]*breast-dce[\s\S]*4 of its 7 phases have arrived/);
  assert.equal(await waitingRow.locator(".error-text").innerText(), "");
  assert.equal(await waitingRow.getByTestId("cancel-job").count(), 1);
  // Re-run: still incomplete, said as such; the job still waits.
  await waitingRow.getByTestId("rerun-job").click();
  await status.filter({ hasText: "Job 4 still waits: series" }).waitFor();
  assert.equal(await status.getAttribute("class").then((c) => c.includes("error")), false);
  assert.match(await status.innerText(), /is incomplete: 4 of its 7 phases have arrived/);
  assert.match(await waitingRow.innerText(), /waiting/);
  assert.match(await running.innerText(), /running[\s\S]*CPU[\s\S]*segmenting/);
  assert.match(await failedRow.innerText(), /no voxel of series/);
  await running.getByTestId("cancel-job").click();
  await status.filter({ hasText: "Job 3 cancelled" }).waitFor();
  assert.match(await running.innerText(), /cancelled/);
  await failedRow.getByTestId("rerun-job").click();
  await status.filter({ hasText: "Job 2 ran again" }).waitFor();
  assert.match(await failedRow.innerText(), /done[\s\S]*\b2\b/);
  assert.equal(await failedRow.getByTestId("rerun-job").count(), 0);
  // The header says the (mock) PACS cannot be reached, with the reason on hover.
  const pacs = page.getByTestId("pacs-status");
  await pacs.filter({ hasText: "unreachable" }).waitFor();
  assert.match(await pacs.getAttribute("title"), /connection refused/);
  const out = fileURLToPath(new URL("../test-results/", import.meta.url));
  await page.screenshot({ path: join(out, "jobs.png") });
  assert.deepEqual(errors, []);
});

test("folder: import into the store shows its summary", async () => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 500 } });
  await page.goto(base);
  await page.getByTestId("status").filter({ hasText: "1 series in" }).waitFor();
  await page.getByTestId("import-folder").click();
  await page.getByTestId("import-result").filter({ hasText: "Imported 20, already in the store 0, not imported 1" }).waitFor();
});

test("folder picker: a chosen folder is imported; closing the picker does nothing", async () => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 500 } });
  await page.goto(base);
  await page.getByTestId("status").filter({ hasText: "1 series in" }).waitFor();
  await page.getByTestId("choose-folder").click();
  await page.waitForTimeout(200);
  assert.equal(await page.getByTestId("import-result").innerText(), "");
  await page.evaluate(() => (window.lightboxMockPick = "/media/cdrom/DICOM/"));
  await page.getByTestId("choose-folder").click();
  await page.getByTestId("import-result").filter({ hasText: "Imported 1, already in the store 0, not imported 0" }).waitFor();
});

test("drag and drop: dropped items are imported, unreadable ones listed with the reason", async () => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 500 } });
  await page.goto(base);
  await page.getByTestId("tab-outbox").click();
  await page.getByTestId("outbox-status").filter({ hasText: "results in the outbox" }).waitFor();
  // The mock backend stands in for Tauri's drag-and-drop event.
  await page.waitForFunction(() => typeof window.lightboxMockDrop === "function");
  await page.evaluate(() => window.lightboxMockDrop(["/media/cdrom/DICOM/", "/media/cdrom/README.TXT"]));
  await page.getByTestId("import-result").filter({ hasText: "Imported 1, already in the store 0, not imported 1" }).waitFor();
  assert.match(await page.getByTestId("import-failed").innerText(), /README\.TXT: not a DICOM file/);
});

test("incoming DICOM pushes are announced in the header", async () => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 400 } });
  await page.goto(base);
  const incoming = page.getByTestId("incoming");
  await incoming.filter({ hasText: "Listening for DICOM pushes as LIGHTBOX on port 11112" }).waitFor();
  await page.evaluate(() =>
    window.lightboxMockPush({ kind: "stored", callingAe: "ORTHANC", instances: 3, bytes: 400000, detail: "" }),
  );
  await incoming.filter({ hasText: "Receiving from ORTHANC: 3 instances (400.0 kB)" }).waitFor();
  await page.evaluate(() =>
    window.lightboxMockPush({ kind: "released", callingAe: "ORTHANC", instances: 20, bytes: 2700000, detail: "" }),
  );
  await incoming.filter({ hasText: "Received 20 instances from ORTHANC (2.7 MB)" }).waitFor();
});

test("results: AI values are marked, signing needs a name, then the report is queued", async () => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 500 } });
  await page.goto(base);
  await page.getByTestId("tab-results").click();
  const status = page.getByTestId("results-status");
  await status.filter({ hasText: "5 analyses, 4 awaiting review" }).waitFor();
  const rows = page.locator("[data-testid=results-table] tbody tr");
  assert.match(await rows.first().innerText(), /threshold-volume\s+AI[\s\S]*280\.0 mL[\s\S]*awaiting review/);
  // Whose images: the patient, ID and date, and the series by its description (UID on hover).
  assert.equal(await rows.first().getByTestId("result-patient").innerText(), "QIN-PROSTATE-01-0001 QIN-PROSTATE-01-0001 · 1971-07-14");
  assert.match(await rows.first().innerText(), /ADC map/);
  assert.equal(await rows.first().locator("td[title='1.2.3.4.5']").count(), 1);
  assert.match(await rows.nth(1).locator("[data-testid=review]").innerText(), /failed: no voxel/);
  const signButton = rows.first().getByRole("button", { name: "Sign and send" });
  assert.equal(await signButton.isDisabled(), true, "signing without a name must not be possible");
  await page.getByTestId("signer").fill("Doe^Jane");
  await signButton.click();
  await status.filter({ hasText: "Signed by Doe^Jane" }).waitFor();
  assert.equal(await rows.first().locator("[data-testid=review]").innerText(), "signed by Doe^Jane (AI finding accepted)");
  const out = fileURLToPath(new URL("../test-results/", import.meta.url));
  await page.screenshot({ path: join(out, "results-signed.png") });
});

test("results: the radiologist replaces the AI value with their own before signing", async () => {
  const page = await browser.newPage({ viewport: { width: 1300, height: 500 } });
  await page.goto(base);
  await page.getByTestId("tab-results").click();
  const status = page.getByTestId("results-status");
  await status.filter({ hasText: "4 awaiting review" }).waitFor();
  const row = page.locator("[data-testid=results-table] tbody tr").first();
  await page.getByTestId("signer").fill("Doe^Jane");
  await row.getByTestId("view-result").click();
  await status.filter({ hasText: "Viewer opened on job 2 with its segmentation" }).waitFor();
  await row.getByTestId("compare-prior").click();
  await status.filter({ hasText: "Comparing with the prior: Apparent Diffusion Coefficient of 20190301" }).waitFor();
  // Their own measurement first: it is recorded under their name for the report.
  await row.getByTestId("measure-result").click();
  const section = page.getByTestId("measurements");
  await section.getByText("None yet.").waitFor();
  await page.getByTestId("m-label").fill("Lesion 1 long axis");
  await page.getByTestId("m-value").fill("12.5");
  await page.getByTestId("m-add").click();
  await status.filter({ hasText: "recorded; it goes into the report you sign" }).waitFor();
  assert.match(await section.locator("tbody tr").first().innerText(), /Lesion 1 long axis\s+diameter\s+12\.5 mm\s+Doe\^Jane/);
  await row.getByTestId("verdict").selectOption("edit");
  // No value typed yet: nothing is signed, and the reason is given.
  await row.getByRole("button", { name: "Sign and send" }).click();
  await status.filter({ hasText: "type your volume in mL" }).waitFor();
  await row.getByTestId("edit-ml").fill("250");
  await row.getByRole("button", { name: "Sign and send" }).click();
  await status.filter({ hasText: "Signed by Doe^Jane" }).waitFor();
  assert.equal(await row.locator("[data-testid=review]").innerText(), "signed by Doe^Jane (AI finding edited to 250 mL)");
  assert.equal(await row.getByTestId("verdict").count(), 0, "a signed result cannot be reviewed again here");
  const out = fileURLToPath(new URL("../test-results/", import.meta.url));
  await page.screenshot({ path: join(out, "results-reviewed.png") });
});

test("results: an AI pipeline's report is accepted or rejected as a whole, never edited", async () => {
  const page = await browser.newPage({ viewport: { width: 1300, height: 500 } });
  await page.goto(base);
  await page.getByTestId("tab-results").click();
  const status = page.getByTestId("results-status");
  await status.filter({ hasText: "4 awaiting review" }).waitFor();
  const rows = page.locator("[data-testid=results-table] tbody tr");
  const dce = rows.filter({ hasText: "breast-dce" });
  const options = await dce.getByTestId("verdict").locator("option").allInnerTexts();
  assert.deepEqual(options, ["Accept AI findings", "Reject (nothing is sent)"]);
  // threshold-volume keeps its third choice.
  const volume = rows.filter({ hasText: "threshold-volume" }).first();
  assert.equal(await volume.getByTestId("verdict").locator("option").count(), 3);
  await page.getByTestId("signer").fill("Doe^Jane");
  await dce.getByTestId("verdict").selectOption("reject");
  await dce.getByRole("button", { name: "Sign and send" }).click();
  await status.filter({ hasText: "Signed by Doe^Jane" }).waitFor();
  assert.equal(await dce.locator("[data-testid=review]").innerText(), "signed by Doe^Jane (AI finding rejected)");
});

test("results: an atrophy result's findings with its chart; a DCE lesion opens the viewer there", async () => {
  const page = await browser.newPage({ viewport: { width: 1300, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(base);
  await page.getByTestId("tab-results").click();
  const status = page.getByTestId("results-status");
  await status.filter({ hasText: "5 analyses" }).waitFor();
  const rows = page.locator("[data-testid=results-table] tbody tr");
  await rows.filter({ hasText: "brain-atrophy" }).getByTestId("details-result").click();
  const details = page.getByTestId("details");
  await details.getByTestId("atrophy-chart").waitFor();
  assert.match(await details.getByTestId("details-summary").innerText(), /brain volume change -0\.98 %/);
  assert.match(await details.getByTestId("details-findings").innerText(), /Left hippocampus\s+5\.66\s+mL/);
  // The patient's point where the chart's scale puts -0.97 %/yr at 68 (below the healthy band).
  const point = details.getByTestId("patient-point");
  const [cx, cy] = [Number(await point.getAttribute("cx")), Number(await point.getAttribute("cy"))];
  assert.ok(Math.abs(cx - (48 + ((68.2 - 20) / 70) * 320)) < 0.5, `cx ${cx}`);
  assert.ok(Math.abs(cy - (24 + (1 - 1.03 / 2.5) * 150)) < 0.5, `cy ${cy}`);
  assert.match(await details.locator("figcaption").innerText(), /beyond the healthy range for the age\. Not a diagnosis/);
  const out = fileURLToPath(new URL("../test-results/", import.meta.url));
  await page.screenshot({ path: join(out, "results-atrophy.png") });

  await rows.filter({ hasText: "breast-dce" }).getByTestId("details-result").click();
  const lesions = details.getByTestId("lesions");
  await lesions.waitFor();
  assert.equal(await lesions.getByTestId("tic").count(), 2, "one time-intensity curve per lesion");
  await lesions.getByTestId("show-lesion").first().click();
  await status.filter({ hasText: "Viewer opened on job 3 at Lesion candidate 1 (Type III washout)" }).waitFor();
  await page.screenshot({ path: join(out, "results-dce.png") });

  // A prostate result with a gland: the PSA the radiologist types gives the density, recorded
  // as theirs.
  await rows.filter({ hasText: "prostate-bpmri" }).getByTestId("details-result").click();
  const psa = details.getByTestId("psa");
  await psa.waitFor();
  assert.equal(await psa.getByTestId("psa-add").isDisabled(), true, "nothing to add before a PSA and a name");
  await psa.getByTestId("psa-input").fill("6.3");
  assert.match(await psa.getByTestId("psa-density").innerText(), /PSA density 0\.15 ng\/mL\/mL/);
  await page.getByTestId("signer").fill("Doe^Jane");
  await psa.getByTestId("psa-add").click();
  await status.filter({ hasText: "PSA and PSA density 0.15 ng/mL/mL recorded" }).waitFor();
  await page.screenshot({ path: join(out, "results-psa.png") });
  assert.deepEqual(errors, []);
});

test("settings: a bad URL is refused with the reason; a good one is saved without the password", async () => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 700 } });
  await page.goto(base);
  await page.getByTestId("tab-settings").click();
  const status = page.getByTestId("settings-status");
  await page.getByTestId("s-url").fill("pacs:8042");
  await page.getByTestId("s-save").click();
  await status.filter({ hasText: "Not saved" }).waitFor();
  assert.match(await status.innerText(), /must start with http/);
  await page.getByTestId("s-url").fill("https://pacs.example.org/dicom-web");
  await page.getByTestId("s-secret").fill("s3cret!");
  await page.getByTestId("s-save").click();
  await status.filter({ hasText: "Saved to /mock/config.toml" }).waitFor();
  assert.equal(await page.getByTestId("s-secret").inputValue(), "", "the password field is cleared");
});

/** Text whose contrast with what is behind it is below WCAG AA (4.5:1, or 3:1 for large text). */
async function lowContrast(page) {
  return page.evaluate(() => {
    const rgb = (c) => (c.match(/[\d.]+/g) ?? []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const background = (el) => {
      for (let e = el; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length >= 3 && (c.length < 4 || c[3] > 0.5)) return c.slice(0, 3);
      }
      return [17, 20, 24]; // the page's own background
    };
    const bad = [];
    for (const el of document.querySelectorAll("body *")) {
      const text = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent.trim()).join("");
      if (!text || el.offsetParent === null) continue;
      const style = getComputedStyle(el);
      if (el.closest("button:disabled, input:disabled, select:disabled")) continue; // WCAG exempts inactive controls
      const [a, b] = [lum(rgb(style.color).slice(0, 3)), lum(background(el))];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      const size = parseFloat(style.fontSize);
      const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
      if (ratio < (large ? 3 : 4.5)) bad.push(`${text.slice(0, 40)}: ${ratio.toFixed(2)}`);
    }
    return bad;
  });
}

/** Tabs through the page: each focused control must show a visible focus indicator. */
async function focusWithoutIndicator(page, steps = 40) {
  const missing = [];
  for (let i = 0; i < steps; i++) {
    await page.keyboard.press("Tab");
    const found = await page.evaluate(() => {
      const el = document.activeElement;
      if (!el || el === document.body) return null;
      const s = getComputedStyle(el);
      const visible = (s.outlineStyle !== "none" && parseFloat(s.outlineWidth) > 0) || s.boxShadow !== "none";
      return visible ? "" : `${el.tagName} ${el.textContent?.trim().slice(0, 30) ?? ""}`;
    });
    if (found) missing.push(found);
  }
  return missing;
}

test("accessibility: every screen keeps AA contrast and shows keyboard focus", async () => {
  const page = await browser.newPage({ viewport: { width: 1300, height: 900 } });
  await page.goto(base);
  await page.getByTestId("status").filter({ hasText: "1 series in" }).waitFor();
  const problems = [];
  for (const tab of ["folder", "worklist", "jobs", "results", "outbox", "settings"]) {
    await page.getByTestId(`tab-${tab}`).click();
    await page.waitForTimeout(300);
    for (const p of await lowContrast(page)) problems.push(`${tab}: contrast ${p}`);
    await page.getByTestId(`tab-${tab}`).focus();
    for (const p of await focusWithoutIndicator(page, 25)) problems.push(`${tab}: no focus indicator on ${p}`);
  }
  assert.deepEqual(problems, []);
});
