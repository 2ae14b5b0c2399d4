// The demo chat page (served on the WebSocket listener) in two browser contexts: alice and bob
// log in with tokens from the test, alice sends, bob's page shows the message and an unread
// count, bob opens the conversation, alice's page shows the message read.
// Env: CHAT_URL, ALICE_TOKEN, BOB_TOKEN, CHROMIUM.
import { chromium } from "playwright-core";

const url = process.env.CHAT_URL;
const step = (s) => console.log(`step: ${s}`);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

async function login(user, token) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  page.setDefaultTimeout(15000);
  page.on("pageerror", (e) => { console.error(`${user}: page error: ${e}`); process.exitCode = 1; });
  await page.goto(url);
  await page.fill("#user", user);
  await page.fill("#token", token);
  await page.click("#login-form button");
  await page.waitForSelector("#chat:not([hidden])");
  return page;
}

try {
  // A wrong token is refused with a readable reason.
  const ctx = await browser.newContext();
  const bad = await ctx.newPage();
  await bad.goto(url);
  await bad.fill("#user", "mallory");
  await bad.fill("#token", "nope");
  await bad.click("#login-form button");
  await bad.waitForFunction(() => document.getElementById("login-error").textContent.includes("not authorized"));
  step("a wrong token is refused");

  const alice = await login("alice", process.env.ALICE_TOKEN);
  const bob = await login("bob", process.env.BOB_TOKEN);
  step("alice and bob are connected");

  await alice.fill("#new-peer", "bob");
  await alice.click("#new-form button");
  await alice.fill("#text", "hi bob, from the browser");
  await alice.click("#send-form button");
  await alice.waitForSelector("#messages li.mine:has-text('hi bob, from the browser') .receipt:text('sent')");
  step("alice sent");

  await bob.waitForSelector("#conversations li[data-conversation='u:alice'] .unread:text('1')");
  step("bob sees the conversation with 1 unread");
  await bob.click("#conversations li[data-conversation='u:alice']");
  await bob.waitForSelector("#messages li.theirs:has-text('hi bob, from the browser')");
  await bob.waitForSelector("#conversations li[data-conversation='u:alice'] .unread", { state: "detached" });
  step("bob read it");

  await alice.waitForSelector("#messages li.mine:has-text('hi bob, from the browser') .receipt:text('read')");
  step("alice sees it read");

  // History paging: a reload shows the stored conversation again.
  const alice2 = await login("alice", process.env.ALICE_TOKEN);
  await alice2.click("#conversations li[data-conversation='u:bob']");
  await alice2.waitForSelector("#messages li.mine:has-text('hi bob, from the browser')");
  step("history is there after a new login");
} finally {
  await browser.close();
}
