// The mqim console: a client of the admin REST API (/api/v1) holding the admin token in this
// tab's session storage. No framework; one module per concern would be overkill at this size:
// api() talks to the server, show() switches pages (`#page` or `#page/<arg>`: `#group/123`,
// `#push/bob` open that group or user), one function per page renders it.
import { drawChart } from "/console/chart.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const KEEP = 90; // points per chart
const history = { conns: [], msgIn: [], msgOut: [], commit: [] };
let last = null; // previous stats, for per-poll rates
let timer = null;

function token() { return sessionStorage.getItem("mqim-admin-token"); }

/** Calls the API; resolves to the JSON body, rejects with the error message. */
async function api(method, path, body) {
  const headers = { authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  const data = text ? JSON.parse(text) : null;
  if (!resp.ok) {
    if (resp.status === 401) logout("Your token was refused or expired: log in again.");
    throw new Error(data?.error ? `${data.error.code}: ${data.error.message}` : `HTTP ${resp.status}`);
  }
  return data;
}

const PAGES = ["overview", "clients", "user", "group", "push", "message", "drain"];

function show(hash) {
  const cut = hash.indexOf("/");
  let page = cut < 0 ? hash : hash.slice(0, cut);
  const arg = cut < 0 ? "" : decodeURIComponent(hash.slice(cut + 1));
  if (!PAGES.includes(page)) page = "overview";
  for (const p of PAGES) $(p).hidden = p !== page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === `#${page}`);
  if (page === "clients") loadClients();
  if (page === "group" && arg) { $("group-id").value = arg; loadGroup(arg); }
  if (page === "push" && arg) { $("push-user").value = arg; loadPush(arg); }
}

function loggedIn(yes) {
  $("login").hidden = yes;
  $("nav").hidden = !yes;
  if (yes) {
    show(location.hash.slice(1));
    poll();
    timer = setInterval(poll, POLL_MS);
  } else {
    for (const id of PAGES) $(id).hidden = true;
    clearInterval(timer);
  }
}

function logout(why) {
  sessionStorage.removeItem("mqim-admin-token");
  $("login-error").textContent = why || "";
  loggedIn(false);
}

function push(arr, v) { arr.push(v); if (arr.length > KEEP) arr.shift(); }
const fmt = (v, d = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));

async function poll() {
  let s;
  try { s = await api("GET", "/stats"); } catch { return; }
  const now = performance.now();
  let rin = 0, rout = 0;
  if (last) {
    const dt = (now - last.at) / 1000;
    rin = Math.max(0, (s.messages.received_total - last.s.messages.received_total) / dt);
    rout = Math.max(0, (s.messages.delivered_total - last.s.messages.delivered_total) / dt);
  }
  last = { at: now, s };
  push(history.conns, s.connections_total);
  push(history.msgIn, rin);
  push(history.msgOut, rout);
  push(history.commit, s.store_commit_ms.p99 ?? 0);
  const byProto = s.connections.filter((c) => c.count > 0).map((c) => `${c.protocol}/${c.transport}: ${c.count}`).join(", ");
  $("stat-connections").textContent = s.connections_total;
  $("stat-connections").title = byProto;
  $("stat-users").textContent = s.users_online;
  $("stat-in").textContent = fmt(s.messages.received_per_sec_1m);
  $("stat-out").textContent = fmt(s.messages.delivered_per_sec_1m);
  $("stat-commit").textContent = `${fmt(s.store_commit_ms.p50, 2)} / ${fmt(s.store_commit_ms.p99, 2)}`;
  $("stat-node").textContent = `node ${s.node_id} · ${s.store} · v${s.version} · up ${s.uptime_secs}s${s.draining ? " · DRAINING" : ""}`;
  drawChart($("chart-connections"), [{ values: history.conns }]);
  drawChart($("chart-messages"), [{ values: history.msgIn }, { values: history.msgOut, cls: "out" }]);
  drawChart($("chart-commit"), [{ values: history.commit }]);
}

function cell(tr, text) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); return td; }

async function loadClients() {
  const user = $("clients-user").value.trim();
  const q = user ? `?user=${encodeURIComponent(user)}&limit=1000` : "?limit=1000";
  let page;
  try { page = await api("GET", `/clients${q}`); } catch (e) { $("clients-status").textContent = e.message; return; }
  const body = $("clients-rows");
  body.replaceChildren();
  for (const c of page.clients) {
    const tr = document.createElement("tr");
    tr.dataset.client = `${c.user ?? ""}/${c.device}`;
    cell(tr, c.user ?? "(anonymous)");
    cell(tr, c.device);
    cell(tr, c.peer);
    cell(tr, c.protocol);
    cell(tr, c.transport);
    cell(tr, new Date(c.connected_at).toLocaleTimeString());
    cell(tr, c.messages_in);
    cell(tr, c.messages_out);
    cell(tr, c.outbox_depth);
    const td = cell(tr, "");
    if (c.user) {
      const b = document.createElement("button");
      b.className = "kick";
      b.textContent = "Kick";
      b.onclick = () => kick(c.user, c.device);
      td.appendChild(b);
    }
    body.appendChild(tr);
  }
  $("clients-status").textContent = `${page.clients.length} connection(s)${page.next ? " (more not shown)" : ""}`;
}

async function kick(user, device) {
  if (!confirm(`Disconnect ${user}/${device}?`)) return;
  try {
    await api("DELETE", `/clients/${encodeURIComponent(user)}/${encodeURIComponent(device)}`);
    $("clients-status").textContent = `kicked ${user}/${device}`;
  } catch (e) { $("clients-status").textContent = e.message; }
  setTimeout(loadClients, 300);
}

async function loadUser(user) {
  let u;
  try { u = await api("GET", `/users/${encodeURIComponent(user)}`); } catch (e) { $("user-status").textContent = e.message; $("user-view").hidden = true; return; }
  $("user-view").hidden = false;
  $("user-view").dataset.user = u.user;
  $("user-head").textContent = u.head_seq;
  $("user-unread").textContent = u.unread_total;
  $("user-conversations").textContent = `${u.conversations}${u.conversations_capped ? "+" : ""}`;
  $("user-ban").textContent = u.ban ? `banned by ${u.ban.by}: ${u.ban.reason}${u.ban.until ? ` until ${new Date(u.ban.until).toLocaleString()}` : ""}` : "not banned";
  const rows = $("user-devices");
  rows.replaceChildren();
  for (const d of u.devices) {
    const tr = document.createElement("tr");
    tr.dataset.device = d.device;
    cell(tr, d.device); cell(tr, d.acked_seq); cell(tr, d.online ? "yes" : "no"); cell(tr, d.node);
    rows.appendChild(tr);
  }
  $("user-presence").textContent = u.presence === "cluster"
    ? "Devices online on any node of the cluster (presence from the shared store)."
    : "Devices online on this node (the store keeps no cluster-wide presence).";
  $("user-push-link").href = `#push/${encodeURIComponent(u.user)}`;
  $("user-status").textContent = "";
}

const MEMBERS_PAGE = 50;
let groupShown = null; // { id, next } of the group on the page

async function loadGroup(raw) {
  const id = raw.trim();
  let g;
  try { g = await api("GET", `/groups/${encodeURIComponent(id)}`); }
  catch (e) { $("group-status").textContent = e.message; $("group-view").hidden = true; return; }
  $("group-view").hidden = false;
  $("group-view").dataset.group = g.id;
  $("group-name").textContent = g.name;
  $("group-owner").textContent = g.owner;
  $("group-kind").textContent = g.large ? "large (stored once, read from the group's log)" : "small (a copy per member)";
  $("group-count").textContent = g.member_count;
  $("group-created").textContent = new Date(g.created_at).toLocaleString();
  $("group-seq").textContent = g.last_group_seq;
  $("group-state").textContent = g.disbanded ? "disbanded" : "active";
  $("group-status").textContent = "";
  $("group-members").replaceChildren();
  groupShown = { id: g.id, next: null };
  await moreMembers();
}

async function moreMembers() {
  if (!groupShown) return;
  const { id, next } = groupShown;
  const q = `?limit=${MEMBERS_PAGE}${next ? `&after=${encodeURIComponent(next)}` : ""}`;
  let page;
  try { page = await api("GET", `/groups/${encodeURIComponent(id)}/members${q}`); }
  catch (e) { $("group-members-status").textContent = e.message; return; }
  const rows = $("group-members");
  for (const m of page.members) {
    const tr = document.createElement("tr");
    tr.dataset.member = m.user;
    const who = cell(tr, "");
    const a = document.createElement("a");
    a.textContent = m.user;
    a.href = "#user";
    a.onclick = () => { $("user-id").value = m.user; loadUser(m.user); };
    who.appendChild(a);
    cell(tr, m.role); cell(tr, new Date(m.joined_at).toLocaleString()); cell(tr, m.joined_seq);
    rows.appendChild(tr);
  }
  groupShown.next = page.next;
  $("group-more").hidden = !page.next;
  $("group-members-status").textContent = `${rows.children.length} member(s) shown${page.next ? ", more to load" : ""}`;
}

async function loadPush(user) {
  let p;
  try { p = await api("GET", `/push/${encodeURIComponent(user)}`); }
  catch (e) { $("push-status").textContent = e.message; $("push-view").hidden = true; return; }
  $("push-view").hidden = false;
  $("push-view").dataset.user = p.user;
  const rows = $("push-devices");
  rows.replaceChildren();
  for (const d of p.devices) {
    const tr = document.createElement("tr");
    tr.dataset.device = d.device;
    cell(tr, d.device);
    cell(tr, d.provider ?? "(not registered)");
    cell(tr, d.tokenHint ? `…${d.tokenHint}` : "–");
    cell(tr, [d.sandbox ? "sandbox" : "", d.preview ? "preview" : ""].filter(Boolean).join(", ") || "–");
    cell(tr, d.pushedUpTo);
    cell(tr, d.badge ?? "–");
    const last = d.outcomes[d.outcomes.length - 1];
    const td = cell(tr, last ? `${last.status}${last.reason ? ` (${last.reason})` : ""} · seq ${last.seq} · ${new Date(last.at).toLocaleTimeString()}` : "none yet");
    td.className = "outcome";
    if (d.outcomes.length > 1) td.title = d.outcomes.map((o) => `${new Date(o.at).toLocaleTimeString()} ${o.provider} ${o.status} ${o.reason}`).join("\n");
    rows.appendChild(tr);
  }
  const mutes = $("push-mutes");
  mutes.replaceChildren();
  for (const m of p.mutes) {
    const li = document.createElement("li");
    li.textContent = `${m.conversation}${m.until ? ` until ${new Date(m.until).toLocaleString()}` : " (until unmuted)"}`;
    mutes.appendChild(li);
  }
  $("push-status").textContent = p.devices.length ? "" : `no push state for ${p.user} on this node`;
}

function wire() {
  $("login-form").onsubmit = async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("mqim-admin-token", $("token").value.trim());
    try { await api("GET", "/stats"); $("login-error").textContent = ""; loggedIn(true); }
    catch (e) { logout(e.message); }
  };
  $("logout").onclick = () => logout();
  window.onhashchange = () => token() && show(location.hash.slice(1));
  $("clients-search").onsubmit = (ev) => { ev.preventDefault(); loadClients(); };
  $("user-search").onsubmit = (ev) => { ev.preventDefault(); loadUser($("user-id").value.trim()); };
  $("group-search").onsubmit = (ev) => { ev.preventDefault(); loadGroup($("group-id").value); };
  $("group-more").onclick = () => moreMembers();
  $("push-search").onsubmit = (ev) => { ev.preventDefault(); loadPush($("push-user").value.trim()); };
  $("ban-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const user = $("user-view").dataset.user;
    const body = { reason: $("ban-reason").value };
    if ($("ban-until").value) body.until = new Date($("ban-until").value).getTime();
    try { const r = await api("POST", `/users/${encodeURIComponent(user)}/ban`, body); $("user-status").textContent = `banned; ${r.closed} connection(s) closed`; }
    catch (e) { $("user-status").textContent = e.message; return; }
    loadUser(user);
  };
  $("unban").onclick = async () => {
    const user = $("user-view").dataset.user;
    try { await api("DELETE", `/users/${encodeURIComponent(user)}/ban`); $("user-status").textContent = "ban lifted"; }
    catch (e) { $("user-status").textContent = e.message; return; }
    loadUser(user);
  };
  $("message-form").onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", "/messages", { to: $("message-to").value.trim(), text: $("message-text").value });
      $("message-status").textContent = `sent, msgId ${r.msgId}${r.groupSeq ? `, group seq ${r.groupSeq}` : ""}`;
    } catch (e) { $("message-status").textContent = e.message; }
  };
  $("drain-form").onsubmit = async (ev) => {
    ev.preventDefault();
    if (!confirm("Drain this node? It stops taking connections and closes the open ones.")) return;
    const body = {};
    if ($("drain-redirect").value.trim()) body.redirect = $("drain-redirect").value.trim();
    if ($("drain-rate").value) body.rate = Number($("drain-rate").value);
    try { const r = await api("POST", "/drain", body); $("drain-status").textContent = `draining ${r.connections} connection(s) at ${r.rate}/s`; }
    catch (e) { $("drain-status").textContent = e.message; }
  };
}

wire();
loggedIn(Boolean(token()));
