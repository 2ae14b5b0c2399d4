// The demo chat page: an example client of mqim's public wire contract (schemas/README.md),
// nothing more. It connects over MQTT-over-WebSocket as the user, subscribes to its JSON
// downlink, and uses the ordinary requests: conversations, history, send, read, ack.
import { Mqtt } from "/chat/mqtt.js";

const $ = (id) => document.getElementById(id);
const state = {
  me: null, device: null, client: null, nextReq: 0,
  waiting: new Map(), // request id -> resolve
  convs: new Map(),   // "u:peer" -> {unread, last, updatedAt}
  open: null,         // open conversation id
  messages: [],       // open conversation, oldest first
  peerRead: new Map(),// conversation -> msgId (BigInt) the peer read up to
  hasMore: false,
};

const big = (s) => BigInt(s || "0");

/** Sends one request; resolves with the reply (its result or its error). */
function call(op, body) {
  const id = `r${++state.nextReq}`;
  const topic = `im/${state.me}/${state.device}/up/json`;
  state.client.publish(topic, JSON.stringify({ id, [op]: body }));
  return new Promise((r) => state.waiting.set(id, r));
}

function downlink(topic, text) {
  const d = JSON.parse(text);
  if (d.reply) {
    const r = state.waiting.get(d.reply.id);
    state.waiting.delete(d.reply.id);
    if (r) r(d.reply);
  } else if (d.event) {
    onEvent(d.event);
    call("ack", { seq: d.event.seq });
  }
}

function onEvent(ev) {
  if (ev.message) {
    const m = ev.message;
    const c = conv(m.conversation);
    c.last = m; c.updatedAt = Number(m.ts);
    if (m.conversation === state.open) {
      if (!state.messages.some((x) => x.msgId === m.msgId)) state.messages.push(m);
      if (m.from !== state.me) markRead(m.conversation, m.msgId);
      renderMessages();
    } else if (m.from !== state.me) {
      c.unread += 1;
    }
    renderConversations();
  } else if (ev.read) {
    const r = ev.read;
    if (r.by === state.me) {
      // This user read on some device (maybe this one): that conversation's count is settled.
      conv(r.conversation).unread = 0;
      renderConversations();
    } else {
      const prev = state.peerRead.get(r.conversation) ?? 0n;
      if (big(r.msgId) > prev) state.peerRead.set(r.conversation, big(r.msgId));
      if (r.conversation === state.open) renderMessages();
    }
  }
}

function conv(id) {
  if (!state.convs.has(id)) state.convs.set(id, { unread: 0, last: null, updatedAt: Date.now() });
  return state.convs.get(id);
}

async function markRead(id, msgId) {
  const r = await call("read", { conversation: id, msgId });
  if (r.read) { conv(id).unread = Number(r.read.unread || 0); renderConversations(); }
}

function renderConversations() {
  const ul = $("conversations");
  ul.replaceChildren();
  const list = [...state.convs.entries()].sort((a, b) => b[1].updatedAt - a[1].updatedAt);
  for (const [id, c] of list) {
    const li = document.createElement("li");
    li.dataset.conversation = id;
    li.classList.toggle("open", id === state.open);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = id.slice(2);
    li.appendChild(name);
    if (c.unread > 0) {
      const u = document.createElement("span");
      u.className = "unread";
      u.textContent = String(c.unread);
      li.appendChild(u);
    }
    li.onclick = () => openConversation(id);
    ul.appendChild(li);
  }
}

function renderMessages() {
  const ol = $("messages");
  ol.replaceChildren();
  const read = state.peerRead.get(state.open) ?? 0n;
  for (const m of state.messages) {
    const li = document.createElement("li");
    li.dataset.msgId = m.msgId;
    const mine = m.from === state.me;
    li.className = mine ? "mine" : "theirs";
    li.append(m.text ?? "(no text)");
    if (mine) {
      const s = document.createElement("span");
      s.className = "receipt";
      s.textContent = big(m.msgId) <= read ? "read" : "sent";
      li.appendChild(s);
    }
    ol.appendChild(li);
  }
  $("older").hidden = !state.hasMore;
  ol.scrollTop = ol.scrollHeight;
}

async function openConversation(id) {
  state.open = id;
  state.messages = [];
  $("peer").textContent = id.slice(2);
  $("send-form").hidden = false;
  conv(id);
  const r = await call("history", { conversation: id, limit: 20 });
  const page = r.history ?? { messages: [] };
  state.messages = (page.messages ?? []).reverse();
  state.hasMore = Boolean(page.hasMore);
  renderMessages();
  renderConversations();
  const newest = state.messages.at(-1);
  if (newest && conv(id).unread > 0) markRead(id, newest.msgId);
}

async function older() {
  const first = state.messages[0];
  if (!first) return;
  const r = await call("history", { conversation: state.open, beforeMsgId: first.msgId, limit: 20 });
  const page = r.history ?? { messages: [] };
  state.messages = [...(page.messages ?? []).reverse(), ...state.messages];
  state.hasMore = Boolean(page.hasMore);
  renderMessages();
}

async function send(text) {
  const to = state.open;
  const clientMsgId = `${state.device}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
  const r = await call("send", { to, clientMsgId, text });
  if (r.error) { alert(`${r.error.code}: ${r.error.message}`); return; }
  const m = { msgId: r.sent.msgId, conversation: to, from: state.me, ts: r.sent.ts, clientMsgId, text };
  const c = conv(to);
  c.last = m; c.updatedAt = Number(m.ts);
  if (state.open === to && !state.messages.some((x) => x.msgId === m.msgId)) state.messages.push(m);
  renderMessages();
  renderConversations();
}

async function login(user, token) {
  state.me = user;
  state.device = `web-${Math.random().toString(36).slice(2, 8)}`;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  state.client = await Mqtt.connect(`${scheme}://${location.host}/mqtt`, { clientId: state.device, username: user, password: token });
  state.client.onmessage = downlink;
  state.client.onclose = () => { $("login-error").textContent = "disconnected"; $("chat").hidden = true; $("login").hidden = false; };
  await state.client.subscribe(`im/${user}/${state.device}/down/json`);
  const r = await call("conversations", { limit: 100 });
  for (const c of r.conversations?.conversations ?? []) {
    state.convs.set(c.id, { unread: Number(c.unread || 0), last: c.last, updatedAt: Number(c.updatedAt || 0) });
  }
  $("me").textContent = `${user} (${state.device})`;
  $("login").hidden = true;
  $("chat").hidden = false;
  renderConversations();
}

$("login-form").onsubmit = async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  try { await login($("user").value.trim(), $("token").value.trim()); }
  catch (e) { $("login-error").textContent = e.message; }
};
$("new-form").onsubmit = (ev) => { ev.preventDefault(); openConversation(`u:${$("new-peer").value.trim()}`); $("new-peer").value = ""; };
$("send-form").onsubmit = (ev) => { ev.preventDefault(); const t = $("text").value; if (t) { $("text").value = ""; send(t); } };
$("older").onclick = older;
