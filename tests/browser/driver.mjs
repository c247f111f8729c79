// Drives Debian's Chromium for the dashboard's tests and screenshots.
//
// Reads one JSON command per line on stdin and answers each with one JSON
// line on stdout, so the Rust tests keep every assertion (and the database
// work between browser steps) on their side:
//
//   {"op": "goto", "url": "..."}            -> {"status": 200, "url": "...", "text": "..."}
//   {"op": "click", "selector": "..."}      -> the page after the click (and its navigation)
//   {"op": "fill", "selector": "...", "value": "..."}
//   {"op": "select", "selector": "...", "value": "..."}
//   {"op": "text"}                           -> the current page
//   {"op": "html", "selector": "..."}       -> {"html": "..."} (innerHTML of the first match)
//   {"op": "count", "selector": "..."}      -> {"count": n}
//   {"op": "post", "url": "...", "form": {...}} -> {"status": n, "text": "..."} (a raw POST
//                                               with this browser's cookies, no page involved)
//   {"op": "screenshot", "path": "...", "width": 1400, "height": 900}
//   {"op": "dialogs"}                        -> {"dialogs": [...]} (alert()s seen: an XSS would show here)
//   {"op": "quit"}
//
// Options (environment): CHROMIUM (default /usr/bin/chromium); JAVASCRIPT=off
// runs the pages without JavaScript. An error answers {"error": "..."}.

import { createInterface } from "node:readline";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const userDataDir = mkdtempSync(join(tmpdir(), "bp-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  javaScriptEnabled: process.env.JAVASCRIPT !== "off",
  viewport: { width: 1400, height: 900 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
const page = context.pages()[0] || (await context.newPage());
const dialogs = [];
page.on("dialog", async (d) => {
  dialogs.push(d.message());
  await d.dismiss();
});
let lastStatus = 0;
page.on("response", (r) => {
  if (r.request().isNavigationRequest() && r.frame() === page.mainFrame()) {
    lastStatus = r.status();
  }
});

async function current() {
  return { status: lastStatus, url: page.url(), text: await page.innerText("body") };
}

async function run(cmd) {
  switch (cmd.op) {
    case "goto": {
      const r = await page.goto(cmd.url, { waitUntil: "load" });
      lastStatus = r ? r.status() : 0;
      return current();
    }
    case "click": {
      await Promise.all([
        page.waitForNavigation({ waitUntil: "load" }).catch(() => {}),
        page.click(cmd.selector),
      ]);
      return current();
    }
    case "fill":
      await page.fill(cmd.selector, cmd.value);
      return { ok: true };
    case "select":
      await page.selectOption(cmd.selector, cmd.value);
      return { ok: true };
    case "text":
      return current();
    case "html":
      return { html: await page.innerHTML(cmd.selector) };
    case "count":
      return { count: await page.locator(cmd.selector).count() };
    case "post": {
      const r = await context.request.post(cmd.url, { form: cmd.form || {}, maxRedirects: 0 });
      return { status: r.status(), text: await r.text() };
    }
    case "screenshot":
      await page.setViewportSize({ width: cmd.width || 1400, height: cmd.height || 900 });
      await page.screenshot({ path: cmd.path, fullPage: cmd.fullPage !== false });
      return { ok: true };
    case "dialogs":
      return { dialogs };
    case "quit":
      return { ok: true, quit: true };
    default:
      return { error: `unknown op ${cmd.op}` };
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    answer = await run(JSON.parse(line));
  } catch (e) {
    answer = { error: String(e && e.message ? e.message : e) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
  if (answer.quit) break;
}
await context.close();
rmSync(userDataDir, { recursive: true, force: true });
