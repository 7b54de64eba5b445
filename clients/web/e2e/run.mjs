// End-to-end test of the demo page in headless Chromium (issue #6).
//
// Drives the page the gateway serves at /demo/ the way a person would: user A
// registers, logs in, adds two tasks, sees them (newest first), marks one
// done; a screenshot is taken; A logs out; user B registers and logs in and
// must not see A's tasks. Every API call is the page's own gRPC-web traffic.
// Live list (issue #16): a second tab signed in as A shows a task added in
// the first tab within a second, without reloading (WatchTasks over
// gRPC-web); a screenshot of the second tab is taken.
//
// Usage (from clients/web, after `npm ci`):
//   TASKGATE_GATEWAY_URL=http://127.0.0.1:8080 node e2e/run.mjs
//
// Environment:
//   TASKGATE_GATEWAY_URL     the gateway's base URL (required)
//   TASKGATE_DEMO_SCREENSHOT where the PNG goes (default /tmp/taskgate-demo.png)
//   TASKGATE_DEMO_LIVE_SCREENSHOT the second tab's PNG after a live update
//                            (default /tmp/taskgate-demo-live.png)
//   TASKGATE_E2E_TIMEOUT_MS  the whole run's limit (default 60000)
//   CHROMIUM                 the browser binary (default /usr/bin/chromium,
//                            Debian's `chromium`; Playwright's own browser
//                            builds cannot be downloaded here)
//
// Exits 0 when every check passes, 1 on the first failure.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { chromium } from "playwright-core";

const baseUrl = (process.env.TASKGATE_GATEWAY_URL ?? "").replace(/\/+$/, "");
const screenshotPath = process.env.TASKGATE_DEMO_SCREENSHOT || "/tmp/taskgate-demo.png";
const liveScreenshotPath = process.env.TASKGATE_DEMO_LIVE_SCREENSHOT || "/tmp/taskgate-demo-live.png";
const totalTimeoutMs = Number(process.env.TASKGATE_E2E_TIMEOUT_MS || 60_000);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
// One step (a click and the page's reaction to it) should take well under this.
const stepTimeoutMs = 15_000;

if (!baseUrl) {
  console.error("e2e: set TASKGATE_GATEWAY_URL, e.g. http://127.0.0.1:8080");
  process.exit(2);
}

const profileDir = mkdtempSync(join(tmpdir(), "taskgate-e2e-profile-"));
let context;
// What the page logged, printed only when something fails.
const pageLog = [];

function step(message) {
  console.log(`e2e: ${message}`);
}

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

// Closes the browser and removes the profile, once, whoever asks first.
let cleaning;
function cleanup() {
  cleaning ??= (async () => {
    try {
      await context?.close();
    } catch {
      // The browser may already be gone; nothing more to free.
    }
    try {
      rmSync(profileDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    } catch (err) {
      console.error(`e2e: could not remove ${profileDir}: ${err.message}`);
    }
  })();
  return cleaning;
}

// The hard limit: whatever is stuck, the run ends. Once it fires, it alone
// reports and exits.
let timedOut = false;
const watchdog = setTimeout(async () => {
  timedOut = true;
  console.error(`e2e: FAILED: timed out after ${totalTimeoutMs} ms`);
  for (const line of pageLog) console.error(`  page: ${line}`);
  await cleanup();
  process.exit(1);
}, totalTimeoutMs);

/** Waits for `locator` to be visible, failing early with the page's error message if one shows. */
async function waitVisible(page, locator, what) {
  const error = page.getByTestId("error");
  const deadline = Date.now() + stepTimeoutMs;
  while (Date.now() < deadline) {
    if (await locator.first().isVisible()) return;
    if (await error.isVisible()) {
      throw new Error(`${what}: the page shows an error: ${await error.textContent()}`);
    }
    await page.waitForTimeout(100);
  }
  throw new Error(`${what}: not visible within ${stepTimeoutMs} ms (status: ${await page.getByTestId("status").textContent()})`);
}

async function fillCredentials(page, username, password) {
  await page.getByTestId("username").fill(username);
  await page.getByTestId("password").fill(password);
}

/** Registers a new user, then logs in as them, through the page's form. */
async function registerAndLogin(page, username, password) {
  await waitVisible(page, page.getByTestId("auth"), "the sign-in form");
  await fillCredentials(page, username, password);
  await page.getByTestId("register").click();
  await waitVisible(page, page.getByTestId("status").filter({ hasText: `Registered ${username}` }), `registering ${username}`);

  await fillCredentials(page, username, password);
  await page.getByTestId("login").click();
  await waitVisible(page, page.getByTestId("app"), `logging in as ${username}`);
  // The list has been fetched once the page marks how many tasks it holds.
  await page.locator("body[data-tasks-loaded]").waitFor({ timeout: stepTimeoutMs });
  const who = await page.getByTestId("whoami").textContent();
  check(who === username, `signed in as ${username}, page says ${who}`);
}

async function taskTitles(page) {
  return page.getByTestId("task-item").getByTestId("task-title").allTextContents();
}

async function addTask(page, title) {
  await page.getByTestId("task-title-input").fill(title);
  await page.getByTestId("add-task").click();
  await waitVisible(page, page.getByTestId("task-item").filter({ hasText: title }), `adding task "${title}"`);
}

async function main() {
  const run = randomUUID().slice(0, 8);
  const userA = { username: `web-a-${run}`, password: `web-e2e-secret-a-${run}` };
  const userB = { username: `web-b-${run}`, password: `web-e2e-secret-b-${run}` };
  const titles = [`Buy milk ${run}`, `Write the report ${run}`];

  step(`launching ${executablePath}`);
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 900, height: 700 },
    timeout: 30_000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(stepTimeoutMs);
  page.on("console", (msg) => pageLog.push(`console.${msg.type()}: ${msg.text()}`));
  page.on("pageerror", (err) => pageLog.push(`pageerror: ${err.message}`));
  page.on("requestfailed", (req) => pageLog.push(`requestfailed: ${req.method()} ${req.url()} ${req.failure()?.errorText}`));

  const url = `${baseUrl}/demo/`;
  step(`opening ${url}`);
  const response = await page.goto(url, { waitUntil: "load" });
  check(response?.ok(), `GET ${url} answered ${response?.status()}`);
  await page.locator("body[data-ready=true]").waitFor({ timeout: stepTimeoutMs });

  step(`registering and logging in user A (${userA.username})`);
  await registerAndLogin(page, userA.username, userA.password);
  check((await taskTitles(page)).length === 0, "a new user starts with no tasks");

  step("adding two tasks through the page");
  for (const title of titles) await addTask(page, title);
  const shown = await taskTitles(page);
  check(
    JSON.stringify(shown) === JSON.stringify([...titles].reverse()),
    `the list shows both tasks newest first, got ${JSON.stringify(shown)}`,
  );

  step("marking the first task done");
  const first = page.getByTestId("task-item").filter({ hasText: titles[0] });
  await first.getByTestId("task-done").click();
  await waitVisible(page, page.locator(`[data-testid=task-item][data-status=done]`).filter({ hasText: titles[0] }), "marking done");

  step(`screenshot to ${screenshotPath}`);
  await page.screenshot({ path: screenshotPath, fullPage: true });

  step("opening a second tab signed in as user A");
  const tab2 = await context.newPage();
  tab2.setDefaultTimeout(stepTimeoutMs);
  tab2.on("console", (msg) => pageLog.push(`tab2 console.${msg.type()}: ${msg.text()}`));
  tab2.on("pageerror", (err) => pageLog.push(`tab2 pageerror: ${err.message}`));
  await tab2.goto(url, { waitUntil: "load" });
  await tab2.locator("body[data-ready=true]").waitFor({ timeout: stepTimeoutMs });
  await waitVisible(tab2, tab2.getByTestId("auth"), "the second tab's sign-in form");
  await fillCredentials(tab2, userA.username, userA.password);
  await tab2.getByTestId("login").click();
  await waitVisible(tab2, tab2.getByTestId("app"), "the second tab logging in");
  await tab2.locator("body[data-tasks-loaded]").waitFor({ timeout: stepTimeoutMs });
  let navigations = 0;
  tab2.on("framenavigated", (frame) => {
    if (frame === tab2.mainFrame()) navigations += 1;
  });
  // Let the second tab's watch stream open before the change.
  await tab2.waitForTimeout(500);

  const live = `Seen live ${run}`;
  step(`adding "${live}" in the first tab; the second must show it without a reload`);
  await page.bringToFront();
  await addTask(page, live);
  const added = Date.now();
  await tab2.getByTestId("task-item").filter({ hasText: live }).first().waitFor({ state: "visible", timeout: 5_000 });
  const tookMs = Date.now() - added;
  check(navigations === 0, `the second tab did not reload (${navigations} navigations)`);
  check(tookMs <= 1_000, `the second tab showed the task within a second (took ${tookMs} ms)`);
  step(`the second tab showed it after ${tookMs} ms; screenshot to ${liveScreenshotPath}`);
  await tab2.screenshot({ path: liveScreenshotPath, fullPage: true });
  await tab2.close();

  step("logging out user A");
  await page.getByTestId("logout").click();
  await waitVisible(page, page.getByTestId("auth"), "the sign-in form after logout");
  check(!(await page.getByTestId("app").isVisible()), "the task list is hidden after logout");
  check((await page.getByTestId("task-item").count()) === 0, "no tasks stay on the page after logout");

  step(`registering and logging in user B (${userB.username})`);
  await registerAndLogin(page, userB.username, userB.password);
  const seenByB = await taskTitles(page);
  check(seenByB.length === 0, `user B sees no tasks, got ${JSON.stringify(seenByB)}`);
  const bodyText = await page.locator("body").innerText();
  for (const title of titles) check(!bodyText.includes(title), `user B's page does not mention "${title}"`);

  step("logging out user B");
  await page.getByTestId("logout").click();
  await waitVisible(page, page.getByTestId("auth"), "the sign-in form after logout");
}

try {
  await main();
  clearTimeout(watchdog);
  await cleanup();
  console.log("e2e: PASSED");
  process.exit(0);
} catch (err) {
  // After a timeout the failure here is only the browser being closed under us.
  if (timedOut) await new Promise(() => {});
  clearTimeout(watchdog);
  console.error(`e2e: FAILED: ${err instanceof Error ? err.message : err}`);
  for (const line of pageLog) console.error(`  page: ${line}`);
  await cleanup();
  process.exit(1);
}
