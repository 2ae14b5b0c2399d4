// The admin console in a real browser, as an operator uses it: log in (a wrong token first),
// watch the overview, kick a client from the table, watch the connections chart change, ban a
// user from the user page, open a group (info, members over two pages) and a user's push page,
// send system messages to a user and to the group. Run by tests/tests/admin_browser.rs, which
// owns the broker and the MQTT clients and checks their side afterwards.
// Env: CONSOLE_URL, ADMIN_TOKEN, SCREENSHOT (path of the overview screenshot), GROUP (a group's
// `g:<id>`: owner alice, 60 members), PUSH_USER and TOKEN_HINT (a user with a webhook
// registration and a delivered push, the token's last 6 characters), CHROMIUM.
import { chromium } from "playwright-core";

const url = process.env.CONSOLE_URL;
const token = process.env.ADMIN_TOKEN;
const shot = process.env.SCREENSHOT;
const group = process.env.GROUP;
const pushUser = process.env.PUSH_USER;
const tokenHint = process.env.TOKEN_HINT;
const step = (s) => console.log(`step: ${s}`);
const expect = (what, got, want) => { if (got !== want) throw new Error(`${what}: ${JSON.stringify(got)}, want ${JSON.stringify(want)}`); };

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
  await page.waitForFunction(() => document.getElementById("stat-connections").textContent === "3");
  await page.waitForFunction(() => document.getElementById("chart-connections").dataset.last === "3");
  await page.waitForFunction(() => document.getElementById("stat-users").textContent === "3");
  step("overview shows 3 connections");
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
  await page.waitForFunction(() => document.getElementById("chart-connections").dataset.last === "2");
  step("connections chart went to 2");

  await page.click("a[href='#user']");
  await page.fill("#user-id", "bob");
  await page.click("#user-search button");
  await page.waitForSelector("#user-view:not([hidden])");
  await page.waitForSelector("#user-devices td:text('laptop')");
  await page.fill("#ban-reason", "spam");
  await page.click("#ban-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("user-ban").textContent.startsWith("banned by root: spam"));
  step("banned bob");

  await page.click("a[href='#group']");
  await page.fill("#group-id", group);
  await page.click("#group-search button");
  await page.waitForSelector("#group-view:not([hidden])");
  expect("group name", await page.textContent("#group-name"), "Ops room");
  expect("group owner", await page.textContent("#group-owner"), "alice");
  expect("member count", await page.textContent("#group-count"), "60");
  expect("group state", await page.textContent("#group-state"), "active");
  await page.waitForFunction(() => document.querySelectorAll("#group-members tr").length === 50);
  expect("alice's role", await page.textContent("tr[data-member='alice'] td:nth-child(2)"), "owner");
  expect("bob's role", await page.textContent("tr[data-member='bob'] td:nth-child(2)"), "member");
  await page.click("#group-more");
  await page.waitForFunction(() => document.querySelectorAll("#group-members tr").length === 60);
  await page.waitForSelector("#group-more", { state: "hidden" });
  await page.waitForSelector("tr[data-member='m56']");
  step("group page shows 60 members over two pages");

  // The push page, reached from the user page's link.
  await page.click("a[href='#user']");
  await page.fill("#user-id", pushUser);
  await page.click("#user-search button");
  await page.waitForFunction((u) => document.getElementById("user-view").dataset.user === u, pushUser);
  await page.click("#user-push-link");
  await page.waitForSelector(`#push-view:not([hidden])`);
  await page.waitForSelector("#push-devices tr[data-device='tablet']");
  const row = (n) => page.textContent(`#push-devices tr[data-device='tablet'] td:nth-child(${n})`);
  expect("provider", await row(2), "webhook");
  expect("token hint", await row(3), `…${tokenHint}`);
  const outcome = await row(7);
  if (!outcome.startsWith("delivered")) throw new Error(`last outcome shows ${outcome}`);
  const mutes = await page.textContent("#push-mutes");
  if (!mutes.includes("u:mallory")) throw new Error(`mutes show ${mutes}`);
  const html = await page.content();
  if (html.includes(`push/${pushUser}-tablet-${tokenHint}`)) throw new Error("the whole device token is on the page");
  step(`push page shows ${pushUser}'s webhook registration`);

  await page.click("a[href='#message']");
  await page.fill("#message-to", "u:carol");
  await page.fill("#message-text", "hello from the console");
  await page.click("#message-form button");
  await page.waitForFunction(() => document.getElementById("message-status").textContent.startsWith("sent, msgId"));
  step("system message sent");
  await page.fill("#message-to", group);
  await page.fill("#message-text", "hello, ops room");
  await page.click("#message-form button");
  await page.waitForFunction(() => document.getElementById("message-status").textContent.includes("group seq"));
  step("system message sent to the group");
} finally {
  await browser.close();
}
