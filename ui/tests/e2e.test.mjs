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
