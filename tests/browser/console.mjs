// The admin console in a real browser, as an operator uses it: log in (a wrong token first),
// watch the overview, kick a client from the table, watch the connections chart change, ban a
// user from the user page, send a system message. Run by tests/tests/admin_browser.rs, which
// owns the broker and the MQTT clients and checks their side afterwards.
// Env: CONSOLE_URL, ADMIN_TOKEN, SCREENSHOT (path of the overview screenshot), CHROMIUM.
import { chromium } from "playwright-core";

const url = process.env.CONSOLE_URL;
const token = process.env.ADMIN_TOKEN;
const shot = process.env.SCREENSHOT;
const step = (s) => console.log(`step: ${s}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(15000);
  const dialogs = [];
  page.on("dialog", (d) => { dialogs.push(d.message()); d.accept(); });
  page.on("pageerror", (e) => { console.error(`page error: ${e}`); process.exitCode = 1; });

  await page.goto(url);
  await page.fill("#token", "not-a-token");
  await page.click("#login-form button");
  await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("UNAUTHENTICATED"));
  step("a wrong token is refused");

  await page.fill("#token", token);
  await page.click("#login-form button");
  await page.waitForFunction(() => document.getElementById("stat-connections").textContent === "2");
  await page.waitForFunction(() => document.getElementById("chart-connections").dataset.last === "2");
  await page.waitForFunction(() => document.getElementById("stat-users").textContent === "2");
  step("overview shows 2 connections");
  await page.screenshot({ path: shot, fullPage: true });

  await page.click("a[href='#clients']");
  await page.waitForSelector("tr[data-client='alice/phone']");
  const proto = await page.textContent("tr[data-client='alice/phone'] td:nth-child(4)");
  if (proto !== "3.1.1") throw new Error(`alice's protocol shows ${proto}`);
  step("clients table lists alice/phone");
  await page.fill("#clients-user", "bob");
  await page.click("#clients-search button");
  await page.waitForSelector("tr[data-client='alice/phone']", { state: "detached" });
  await page.waitForSelector("tr[data-client='bob/laptop']");
  await page.fill("#clients-user", "");
  await page.click("#clients-search button");
  await page.click("tr[data-client='alice/phone'] button.kick");
  await page.waitForSelector("tr[data-client='alice/phone']", { state: "detached" });
  if (!dialogs.some((m) => m.includes("alice/phone"))) throw new Error("no confirmation before the kick");
  step("kicked alice/phone");

  await page.click("a[href='#overview']");
  await page.waitForFunction(() => document.getElementById("chart-connections").dataset.last === "1");
  step("connections chart went to 1");

  await page.click("a[href='#user']");
  await page.fill("#user-id", "bob");
  await page.click("#user-search button");
  await page.waitForSelector("#user-view:not([hidden])");
  await page.waitForSelector("#user-devices td:text('laptop')");
  await page.fill("#ban-reason", "spam");
  await page.click("#ban-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("user-ban").textContent.startsWith("banned by root: spam"));
  step("banned bob");

  await page.click("a[href='#message']");
  await page.fill("#message-to", "u:carol");
  await page.fill("#message-text", "hello from the console");
  await page.click("#message-form button");
  await page.waitForFunction(() => document.getElementById("message-status").textContent.startsWith("sent, msgId"));
  step("system message sent");
} finally {
  await browser.close();
}
