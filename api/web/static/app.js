// Canopy's web UI: one small module shared by every page (no framework, no external assets).
// The key the user pastes is kept in sessionStorage and sent as "Authorization: Bearer" to this
// gateway's own REST endpoints; each page's code runs from the <body data-page="..."> it names.

const KEY_ITEM = "canopy.apiKey";
const $ = (selector) => document.querySelector(selector);

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

function status(text, isError = false) {
  const line = $("#status");
  line.textContent = text;
  line.classList.toggle("error", isError);
}

/** fetch() with the key; JSON in and out; throws an Error with the API's message on a non-2xx answer. */
export async function api(path, { method = "GET", body, headers = {}, raw = false } = {}) {
  const sent = { ...headers, authorization: `Bearer ${apiKey()}` };
  if (body !== undefined) sent["content-type"] = "application/json";
  const response = await fetch(path, { method, headers: sent, body: body === undefined ? undefined : JSON.stringify(body) });
  if (raw && response.ok) return response;
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const message = data && data.error ? data.error.message : `${response.status} ${response.statusText}`;
    throw new Error(`${response.status}: ${message}`);
  }
  return data;
}

/** Run an async action, reporting its failure in the status line. */
async function guarded(action) {
  try {
    await action();
  } catch (error) {
    status(error.message, true);
  }
}

function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "—" : String(value);
  if (className) td.className = className;
  return td;
}

const when = (epoch) => (epoch ? new Date(epoch * 1000).toISOString().replace(".000", "") : null);
const list = (text) => text.split(",").map((part) => part.trim()).filter(Boolean);

// --- the header every page shares: the pages, and the key form -----------------------------------

const PAGE_LINKS = [["keys", "Keys"], ["logs", "Logs"], ["stats", "Stats"], ["miners", "Miners"], ["chat", "Chat"]];

/** Fill <header id="site-header"> (each page carries only the brand): the nav and the key form. */
function renderHeader() {
  const header = $("#site-header");
  const items = PAGE_LINKS.map(([page, label]) => `<li><a href="${page}.html">${label}</a></li>`).join("");
  header.insertAdjacentHTML("beforeend", `
  <nav aria-label="Pages"><ul>${items}</ul></nav>
  <form id="key-form" class="key-form">
    <label for="api-key">API key</label>
    <input id="api-key" name="key" type="password" autocomplete="off" placeholder="cnp_…" required>
    <button type="submit">Use key</button>
    <button type="button" id="forget-key">Forget</button>
    <span id="key-state" aria-live="polite"></span>
  </form>`);
}

function setUpKeyForm() {
  renderHeader();
  const state = $("#key-state");
  const show = () => { state.textContent = apiKey() ? "key set" : "no key"; };
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, $("#api-key").value.trim());
    $("#api-key").value = "";
    show();
    loadPage();
  });
  $("#forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY_ITEM); show(); });
  show();
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === `${document.body.dataset.page}.html`) link.setAttribute("aria-current", "page");
  }
}

// --- keys ---------------------------------------------------------------------------------------

async function loadKeys() {
  const { data } = await api("/admin/keys");
  const body = $("#keys-table tbody");
  body.replaceChildren();
  for (const key of data) {
    const row = body.insertRow();
    row.dataset.name = key.name;
    cell(row, key.name);
    cell(row, key.hint);
    cell(row, key.credits === null ? "unlimited" : key.credits, "num");
    cell(row, when(key.expires_at) || "never");
    cell(row, key.rate_limits.join(", ") || "global");
    cell(row, key.default_strategy || "default");
    cell(row, key.models ? key.models.join(", ") : "all");
    cell(row, [key.admin && "admin", key.disabled && "disabled"].filter(Boolean).join(", ") || "—");
    cell(row, when(key.last_used_at) || "never");
    const actions = row.insertCell();
    const edit = button("Edit", `Edit ${key.name}`, () => openEdit(key));
    const toggle = button(key.disabled ? "Enable" : "Disable", `${key.disabled ? "Enable" : "Disable"} ${key.name}`,
      () => guarded(async () => {
        await api(`/admin/keys/${encodeURIComponent(key.name)}`, { method: "PATCH", body: { disabled: !key.disabled } });
        status(`${key.name} ${key.disabled ? "enabled" : "disabled"}`);
        await loadKeys();
      }));
    const remove = button("Delete", `Delete ${key.name}`, () => guarded(async () => {
      if (!confirm(`Delete the key ${key.name} for good?`)) return;
      await api(`/admin/keys/${encodeURIComponent(key.name)}`, { method: "DELETE" });
      status(`${key.name} deleted`);
      await loadKeys();
    }));
    actions.append(edit, " ", toggle, " ", remove);
  }
}

function button(text, label, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.setAttribute("aria-label", label);
  element.addEventListener("click", onClick);
  return element;
}

let editing = null;

function openEdit(key) {
  editing = key;
  const form = $("#edit-form");
  const initial = {
    credits: key.credits === null ? "" : String(key.credits), add_credits: "",
    expires: key.expires_at ? when(key.expires_at) : "", rate_limits: key.rate_limits.join(", "),
    default_strategy: key.default_strategy || "", models: key.models ? key.models.join(", ") : "",
  };
  for (const [name, value] of Object.entries(initial)) {
    form.elements[name].value = value;
    form.elements[name].dataset.initial = value;
  }
  form.elements.admin.checked = key.admin;
  $("#edit-name").textContent = key.name;
  $("#edit").hidden = false;
  form.elements.credits.focus();
}

function setUpKeys() {
  $("#reload").addEventListener("click", () => guarded(loadKeys));
  $("#create-form").addEventListener("submit", (event) => guarded(async () => {
    event.preventDefault();
    const form = event.target.elements;
    const body = { name: form.name.value.trim(), admin: form.admin.checked };
    if (form.credits.value !== "") body.credits = Number(form.credits.value);
    if (form.expires.value.trim()) body.expires = form.expires.value.trim();
    if (form.rate_limits.value.trim()) body.rate_limits = list(form.rate_limits.value);
    if (form.default_strategy.value.trim()) body.default_strategy = form.default_strategy.value.trim();
    if (form.models.value.trim()) body.models = list(form.models.value);
    const created = await api("/admin/keys", { method: "POST", body });
    $("#created-key").textContent = created.key;
    $("#created").hidden = false;
    status(`key ${created.name} created`);
    event.target.reset();
    await loadKeys();
  }));
  $("#edit-cancel").addEventListener("click", () => { $("#edit").hidden = true; });
  $("#edit-form").addEventListener("submit", (event) => guarded(async () => {
    event.preventDefault();
    const form = event.target.elements;
    const changed = (name) => form[name].value.trim() !== form[name].dataset.initial;
    const body = {};
    if (changed("credits")) body.credits = form.credits.value === "" ? null : Number(form.credits.value);
    if (form.add_credits.value !== "") body.add_credits = Number(form.add_credits.value);
    if (changed("expires")) body.expires = form.expires.value.trim() || null;
    if (changed("rate_limits")) body.rate_limits = list(form.rate_limits.value);
    if (changed("default_strategy")) body.default_strategy = form.default_strategy.value.trim() || null;
    if (changed("models")) body.models = form.models.value.trim() ? list(form.models.value) : null;
    if (form.admin.checked !== editing.admin) body.admin = form.admin.checked;
    await api(`/admin/keys/${encodeURIComponent(editing.name)}`, { method: "PATCH", body });
    status(`${editing.name} saved`);
    $("#edit").hidden = true;
    await loadKeys();
  }));
}

// --- logs ---------------------------------------------------------------------------------------

async function keyNames() {
  const { data } = await api("/admin/keys");
  return new Map(data.map((key) => [key.id, key.name]));
}

async function loadLogs() {
  const form = $("#logs-form").elements;
  const query = new URLSearchParams();
  for (const name of ["key", "status", "since", "limit"]) {
    if (form[name].value.trim()) query.set(name, form[name].value.trim());
  }
  const [{ data }, names] = await Promise.all([api(`/admin/logs?${query}`), keyNames()]);
  const body = $("#logs-table tbody");
  body.replaceChildren();
  for (const log of data) {
    const row = body.insertRow();
    cell(row, when(log.created_at));
    cell(row, log.key_id === null ? null : names.get(log.key_id) || `#${log.key_id}`);
    cell(row, log.route);
    cell(row, log.model || null);
    cell(row, log.strategy || null);
    cell(row, log.uid, "num");
    cell(row, log.status, "num");
    cell(row, log.error || null);
    cell(row, Math.round(log.latency_ms), "num");
    cell(row, `${log.prompt_tokens}/${log.completion_tokens}`, "num");
    cell(row, log.charged, "num");
  }
  status(`${data.length} rows`);
}

function setUpLogs() {
  $("#logs-form").addEventListener("submit", (event) => { event.preventDefault(); guarded(loadLogs); });
}

// --- stats --------------------------------------------------------------------------------------

async function loadStats() {
  const form = $("#stats-form").elements;
  const query = new URLSearchParams({ since: form.since.value.trim() || "24h" });
  if (form.key.value.trim()) query.set("key", form.key.value.trim());
  const [stats, hourly] = await Promise.all([api(`/admin/stats?${query}`), api(`/admin/stats/hourly?${query}`)]);
  const totals = $("#totals");
  totals.replaceChildren();
  for (const [label, value] of [["Requests", stats.requests], ["Errors", stats.errors],
    ["Tokens", stats.total_tokens], ["Credits charged", stats.charged],
    ["Mean latency ms", stats.mean_latency_ms === null ? "—" : Math.round(stats.mean_latency_ms)]]) {
    const item = document.createElement("div");
    const term = document.createElement("dt");
    const detail = document.createElement("dd");
    term.textContent = label;
    detail.textContent = value;
    item.append(term, detail);
    totals.append(item);
  }
  const body = $("#by-status tbody");
  body.replaceChildren();
  for (const [code, count] of Object.entries(stats.by_status)) {
    const row = body.insertRow();
    cell(row, code);
    cell(row, count, "num");
  }
  drawChart($("#chart"), hourly.data);
  status(`${stats.requests} requests, ${stats.errors} errors`);
}

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes, parent) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (parent) parent.append(element);
  return element;
}

/** Bars per hour: requests, with the errors drawn over them; each bar has a <title> tooltip. */
export function drawChart(host, buckets) {
  const width = 960, height = 240, left = 40, bottom = 24, top = 10;
  const most = Math.max(1, ...buckets.map((bucket) => bucket.requests));
  const step = (width - left - 8) / Math.max(1, buckets.length);
  const y = (count) => top + (height - top - bottom) * (1 - count / most);
  const total = buckets.reduce((sum, bucket) => sum + bucket.requests, 0);
  const errors = buckets.reduce((sum, bucket) => sum + bucket.errors, 0);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", id: "stats-chart",
    "aria-label": `Requests per hour over ${buckets.length} hours: ${total} requests, ${errors} errors` });
  svg("title", {}, chart).textContent = "Requests and errors per hour";
  for (const fraction of [0, 0.5, 1]) {
    const count = Math.round(most * fraction);
    svg("line", { x1: left, x2: width - 8, y1: y(count), y2: y(count) }, chart);
    svg("text", { x: left - 6, y: y(count) + 4, "text-anchor": "end" }, chart).textContent = count;
  }
  buckets.forEach((bucket, index) => {
    const x = left + index * step + 1;
    const hour = new Date(bucket.start * 1000);
    const label = `${hour.toISOString().slice(0, 13)}:00Z: ${bucket.requests} requests, ${bucket.errors} errors`;
    const group = svg("g", {}, chart);
    svg("title", {}, group).textContent = label;
    svg("rect", { class: "bar requests", x, width: Math.max(1, step - 2), y: y(bucket.requests),
      height: height - bottom - y(bucket.requests) }, group);
    svg("rect", { class: "bar errors", x, width: Math.max(1, step - 2), y: y(bucket.errors),
      height: height - bottom - y(bucket.errors) }, group);
    if (index % Math.ceil(buckets.length / 8) === 0) {
      svg("text", { x, y: height - 6 }, chart).textContent = `${String(hour.getHours()).padStart(2, "0")}:00`;
    }
  });
  host.replaceChildren(chart);
}

function setUpStats() {
  $("#stats-form").addEventListener("submit", (event) => { event.preventDefault(); guarded(loadStats); });
}

// --- miners -------------------------------------------------------------------------------------

async function loadMiners() {
  const miners = await api("/admin/miners");
  const body = $("#miners-table tbody");
  body.replaceChildren();
  for (const miner of miners.data) {
    const row = body.insertRow();
    row.dataset.uid = miner.uid;
    cell(row, miner.uid, "num");
    const hotkey = cell(row, `${miner.hotkey.slice(0, 8)}…`);
    hotkey.title = miner.hotkey;
    cell(row, miner.devices.filter((device) => device.ok).map((device) => device.name || device.uuid).join(", ")
      || "none");
    cell(row, miner.chutes.map((chute) => `${chute.model} (${chute.ready_instances}/${chute.instances} ready)`)
      .join(", ") || "none");
    cell(row, miner.score === null ? null : miner.score.toFixed(4), "num");
    cell(row, miner.weight === null ? null : miner.weight.toFixed(4), "num");
    cell(row, miner.incentive.toFixed(4), "num");
  }
  $("#miners-meta").textContent = `block ${miners.block ?? "—"}; weights from block ${miners.weights_block ?? "—"}`;
  status(`${miners.data.length} miners`);
}

function setUpMiners() {
  $("#reload").addEventListener("click", () => guarded(loadMiners));
}

// --- chat ---------------------------------------------------------------------------------------

let history = [];

function say(role, text) {
  const item = document.createElement("li");
  item.className = role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : role === "assistant" ? "Assistant" : "Error";
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text;
  item.append(who, content);
  $("#messages").append(item);
  return { item, who, content };
}

/** The x-canopy-strategy header for the chosen strategy (none: the key's own default applies). */
function strategyHeaders() {
  const kind = $("#strategy").value;
  const argument = $("#strategy-arg").value.replace(/\s+/g, "");
  if (kind === "key") return {};
  return { "x-canopy-strategy": kind === "default" ? "default" : `${kind}:${argument}` };
}

async function loadModels() {
  const { data } = await api("/v1/models");
  const select = $("#model");
  const previous = select.value;
  select.replaceChildren(...data.map((model) => new Option(model.id, model.id)));
  if (data.some((model) => model.id === previous)) select.value = previous;
  status(data.length ? `${data.length} models` : "no models are served now", !data.length);
}

/** POST the conversation with stream: true and append each SSE delta to the page as it comes. */
async function send(prompt) {
  history.push({ role: "user", content: prompt });
  say("user", prompt);
  const answer = say("assistant", "");
  answer.item.setAttribute("aria-busy", "true");
  const response = await api("/v1/chat/completions", {
    method: "POST", raw: true, headers: strategyHeaders(),
    body: { model: $("#model").value, messages: history, stream: true },
  });
  const uid = response.headers.get("x-canopy-miner-uid");
  if (uid) answer.who.textContent = `Assistant (miner uid ${uid})`;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = events.pop();
    for (const event of events) {
      for (const line of event.split(/\r?\n/)) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          text += delta.content;
          answer.content.textContent = text;
        }
      }
    }
  }
  answer.item.removeAttribute("aria-busy");
  answer.item.dataset.done = "true";
  history.push({ role: "assistant", content: text });
}

function setUpChat() {
  $("#strategy").addEventListener("change", () => {
    $("#strategy-arg").disabled = ["key", "default"].includes($("#strategy").value);
  });
  $("#clear-chat").addEventListener("click", () => { history = []; $("#messages").replaceChildren(); });
  $("#chat-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = $("#prompt").value.trim();
    if (!prompt) return;
    $("#prompt").value = "";
    $("#send").disabled = true;
    try {
      await send(prompt);
      status("");
    } catch (error) {
      history.pop();
      say("error", error.message);
      status(error.message, true);
    } finally {
      $("#send").disabled = false;
    }
  });
}

// --- wiring -------------------------------------------------------------------------------------

const PAGES = {
  keys: [setUpKeys, loadKeys], logs: [setUpLogs, loadLogs], stats: [setUpStats, loadStats],
  miners: [setUpMiners, loadMiners], chat: [setUpChat, loadModels],
};

function loadPage() {
  const page = PAGES[document.body.dataset.page];
  if (!page) return;
  if (!apiKey()) {
    status("Paste an API key above first.", true);
    return;
  }
  guarded(page[1]);
}

setUpKeyForm();
const current = PAGES[document.body.dataset.page];
if (current) current[0]();
loadPage();
