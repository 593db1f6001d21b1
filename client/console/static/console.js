// The dispatcher console page: live groups from ptt-console's WebSocket, the dispatcher API through its proxy,
// hold-to-talk with the browser's microphone (PCM frames over the WebSocket) and each monitored group's voice.
"use strict";

const RATE = 48000, FRAME = 960;
const groups = new Map();           // uri -> view (ptt.dispatchfeed's JSON), kept up to date by the events
const cards = new Map();            // uri -> card element
let consoleState = { member_of: [], monitored: [], slots: {}, floor: {}, talkgroup: null, patch: null };
let domain = "";
let socket = null;
const $ = (id) => document.getElementById(id);

// --- the dispatcher API through ptt-console ----------------------------------------------------------------------

async function api(method, path, body) {
  const response = await fetch(path, {
    method, headers: { "X-PTT-Console": "1", "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin",
  });
  const document_ = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(document_.error || `${response.status}`);
  return document_;
}
const groupPath = (uri, ...rest) => ["/api/groups", uri, ...rest].map((p, i) => i ? encodeURIComponent(p) : p).join("/");
const asUri = (text) => { text = text.trim(); return text.includes(":") ? text : `sip:${text}@${domain}`; };
const short = (uri) => (uri || "").replace(/^sips?:/, "");

// --- activity log ------------------------------------------------------------------------------------------------

const talkingSince = new Map();   // group -> [uri, time]
let eventTime = null;              // when the event being handled reached ptt-console (seconds)
function log(text, kind) {
  const item = document.createElement("li");
  item.textContent = `${(eventTime ? new Date(eventTime * 1000) : new Date()).toLocaleTimeString()}  ${text}`;
  if (kind) item.className = kind;
  $("log").prepend(item);
  while ($("log").children.length > 500) $("log").lastChild.remove();
}

// --- events ------------------------------------------------------------------------------------------------------

window.pttTrace = [];               // the events with the time they reached the page (tests measure delays)
function onEvent(event) {
  if (window.pttTrace.length < 5000 && event.type !== "snapshot") window.pttTrace.push({ ...event, at: Date.now() / 1000 });
  eventTime = event.at || null;
  try { handleEvent(event); } finally { eventTime = null; }
}

function handleEvent(event) {
  const view = groups.get(event.group);
  switch (event.type) {
    case "snapshot":
      groups.clear();
      for (const g of event.groups) groups.set(g.uri, g);
      renderAll();
      return;
    case "group":
      if (event.state === "added") { groups.set(event.group, event.view); log(`group ${short(event.group)} shown`); }
      else if (event.state === "removed") { groups.delete(event.group); log(`group ${short(event.group)} gone`); }
      else if (view && event.state === "renamed") view.name = event.name;
      renderAll();
      return;
  }
  if (!view) return;
  switch (event.type) {
    case "member": {
      const i = view.members.findIndex((m) => m.uri === event.uri);
      if (event.state === "removed") { if (i >= 0) view.members.splice(i, 1); }
      else if (i >= 0) Object.assign(view.members[i], { priority: event.priority, role: event.role });
      else view.members.push({ uri: event.uri, priority: event.priority, role: event.role, online: false,
        joined: false, talking: false, queued: null });
      log(`${short(event.uri)} ${event.state} in ${view.name}`);
      break;
    }
    case "presence": {
      const member = view.members.find((m) => m.uri === event.uri);
      if (member) {
        if (member.online !== event.online) log(`${short(event.uri)} ${event.online ? "online" : "offline"} (${view.name})`);
        Object.assign(member, event);
      }
      break;
    }
    case "talker": {
      const before = talkingSince.get(event.group);
      const now = (event.at || Date.now() / 1000);
      if (before) log(`${short(before[0])} talked ${(now - before[1]).toFixed(1)} s in ${view.name}`);
      talkingSince.delete(event.group);
      if (event.uri) { talkingSince.set(event.group, [event.uri, now]); log(`${short(event.uri)} talking in ${view.name}`); }
      view.talker = event.uri;
      for (const m of view.members) m.talking = m.uri === event.uri;
      break;
    }
    case "queue":
      view.queue = event.queue;
      view.members.forEach((m) => { const i = event.queue.indexOf(m.uri); m.queued = i >= 0 ? i + 1 : null; });
      break;
    case "alert": {
      const others = view.alerts.filter((a) => a.uri !== event.uri);
      view.alerts = event.state === "cancelled" ? others : [...others, { uri: event.uri, level: event.level,
        since: event.since, call: event.call, acked_by: event.state === "acknowledged" ? event.by : null }];
      const what = event.level === "emergency" ? "EMERGENCY" : "IMMINENT PERIL";
      log(`${what} ${short(event.uri)} in ${view.name}: ${event.state}${event.by ? " by " + event.by : ""}`, "emergency");
      if (event.state === "raised") alarm();
      break;
    }
  }
  renderGroup(event.group);
  renderAlerts();
}

// --- rendering ---------------------------------------------------------------------------------------------------

function renderAll() {
  for (const [uri, card] of cards) if (!groups.has(uri)) { card.remove(); cards.delete(uri); }
  [...groups.keys()].sort().forEach(renderGroup);
  renderAlerts();
  renderConsole();
}

function renderGroup(uri) {
  const view = groups.get(uri);
  if (!view) return;
  let card = cards.get(uri);
  if (!card) {
    card = $("group-card").content.firstElementChild.cloneNode(true);
    wireCard(card, uri);
    cards.set(uri, card);
    $("groups").append(card);
  }
  card.dataset.uri = uri;
  card.querySelector(".name").textContent = view.name;
  card.querySelector(".uri").textContent = uri;
  const talker = card.querySelector(".talker");
  talker.textContent = view.talker ? `▶ ${short(view.talker)} talking` : "idle";
  talker.classList.toggle("on", !!view.talker);
  card.classList.toggle("talking", !!view.talker);
  card.classList.toggle("emergency", view.alerts.length > 0);
  card.querySelector(".queue").textContent = view.queue.length ? `queue: ${view.queue.map(short).join(", ")}` : "";
  const list = card.querySelector(".members");
  list.replaceChildren(...view.members.slice().sort((a, b) => a.uri.localeCompare(b.uri)).map((m) => memberRow(uri, m)));
  const member = consoleState.member_of.includes(uri);
  const monitor = card.querySelector(".monitor");
  monitor.disabled = !member;
  monitor.checked = consoleState.monitored.includes(uri);
  card.querySelector(".addme").hidden = member || !consoleState.uri;
  card.setAttribute("aria-label", `${view.name}: ${talker.textContent}`);
}

function memberRow(group, m) {
  const row = document.createElement("li");
  const state = m.talking ? "talking" : m.queued ? "queued" : m.joined ? "joined" : m.online ? "online" : "offline";
  row.className = state;
  row.dataset.uri = m.uri;
  const dot = document.createElement("span"); dot.className = "dot"; dot.setAttribute("aria-hidden", "true");
  const who = document.createElement("span"); who.className = "who"; who.textContent = short(m.uri);
  const label = document.createElement("span"); label.className = "state";
  label.textContent = (m.queued ? `queued #${m.queued}` : state) + (m.role === "dispatcher" ? " · dispatcher" : "") + ` · ${m.priority}`;
  const remove = document.createElement("button");
  remove.type = "button"; remove.textContent = "remove"; remove.setAttribute("aria-label", `remove ${short(m.uri)}`);
  remove.onclick = () => act(`remove ${short(m.uri)}`, () => api("DELETE", groupPath(group, "members", m.uri)));
  row.append(dot, who, label, remove);
  return row;
}

function renderAlerts() {
  const banner = $("alerts");
  const items = [];
  for (const view of groups.values()) for (const alert of view.alerts) {
    const item = document.createElement("div");
    item.className = "alert" + (alert.acked_by ? " acked" : "");
    item.dataset.group = view.uri; item.dataset.uri = alert.uri;
    const text = document.createElement("span");
    const what = alert.level === "emergency" ? "EMERGENCY" : "IMMINENT PERIL";
    text.textContent = `${what}: ${short(alert.uri)} in ${view.name} since ${new Date(alert.since * 1000).toLocaleTimeString()}` +
      (alert.acked_by ? ` — acknowledged by ${alert.acked_by}` : "");
    item.append(text);
    if (!alert.acked_by) {
      const ack = document.createElement("button");
      ack.type = "button"; ack.className = "ack"; ack.textContent = "Acknowledge";
      ack.onclick = () => act("acknowledge", () => api("POST", groupPath(view.uri, "alerts", alert.uri, "ack")));
      item.append(ack);
    }
    const cancel = document.createElement("button");
    cancel.type = "button"; cancel.className = "cancel"; cancel.textContent = "Cancel alert";
    cancel.onclick = () => act("cancel alert", () => api("DELETE", groupPath(view.uri, "alerts", alert.uri)));
    item.append(cancel);
    items.push(item);
  }
  const focused = banner.contains(document.activeElement);
  banner.replaceChildren(...items);
  if (focused && items.length) items[0].querySelector("button").focus();
}

function renderConsole() {
  $("identity").textContent = consoleState.uri ? `as ${short(consoleState.uri)}` : "";
  for (const id of ["talkgroup", "patch-a", "patch-b"]) {
    const select = $(id), value = select.value;
    const options = consoleState.member_of.map((uri) => new Option(groups.get(uri)?.name || short(uri), uri));
    if (id === "talkgroup") options.unshift(new Option("(none)", ""));
    select.replaceChildren(...options);
    select.value = id === "talkgroup" ? consoleState.talkgroup || "" : value || (id === "patch-b" ? consoleState.member_of[1] || "" : consoleState.member_of[0] || "");
  }
  const floor = consoleState.talkgroup ? consoleState.floor[consoleState.talkgroup] || "idle" : "-";
  $("floor").textContent = `floor: ${floor}`;
  $("floor").className = "badge " + floor;
  $("talk").setAttribute("aria-pressed", String(!!consoleState.pressed));
  $("patch-state").textContent = consoleState.patch ? `patched: ${consoleState.patch.map(short).join(" ⇄ ")}` : "no patch";
  for (const [uri, card] of cards) {
    card.querySelector(".monitor").checked = consoleState.monitored.includes(uri);
    card.querySelector(".monitor").disabled = !consoleState.member_of.includes(uri);
    card.querySelector(".addme").hidden = consoleState.member_of.includes(uri);
  }
}

function wireCard(card, uri) {
  card.querySelector(".monitor").onchange = (e) => send({ op: "monitor", group: uri, on: e.target.checked });
  card.querySelector(".volume").oninput = () => setGain(uri);
  card.querySelector(".mute").onchange = () => setGain(uri);
  // the pre-emptive dispatcher role if this account may give it (an admin), else as a plain member
  card.querySelector(".addme").onclick = () => act("add the console", () =>
    api("POST", groupPath(uri, "members"), { uri: consoleState.uri, role: "dispatcher" })
      .catch(() => api("POST", groupPath(uri, "members"), { uri: consoleState.uri })));
  card.querySelector(".delete").onclick = () => { if (confirm(`Delete ${uri}?`)) act("delete", () => api("DELETE", groupPath(uri))); };
  card.querySelector(".add-member").onsubmit = (e) => {
    e.preventDefault();
    const form = e.target;
    act("add member", () => api("POST", groupPath(uri, "members"),
      { uri: asUri(form.uri.value), priority: Number(form.priority.value), role: form.role.value })).then(() => form.reset());
  };
}

async function act(what, call) {
  try { await call(); } catch (error) { log(`${what} failed: ${error.message}`, "emergency"); }
}

// --- the WebSocket -----------------------------------------------------------------------------------------------

function send(message) { if (socket && socket.readyState === 1) socket.send(JSON.stringify(message)); }

function connect() {
  socket = new WebSocket(`ws://${location.host}/ws`);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (m) => {
    if (typeof m.data !== "string") { play(new Uint8Array(m.data)); return; }
    const message = JSON.parse(m.data);
    if (message.type === "console") { consoleState = message; renderConsole(); for (const uri of groups.keys()) renderGroup(uri); }
    else if (message.type === "upstream") setLink(message.connected ? "live" : "server lost", message.connected);
    else if (message.type === "error") log(message.error, "emergency");
    else onEvent(message);
  };
  socket.onclose = () => { setLink("console lost", false); setTimeout(connect, 1000); };
}
function setLink(text, ok) { $("link").textContent = text; $("link").className = "badge " + (ok ? "ok" : "bad"); }

// --- audio: playback per group, capture while talking -------------------------------------------------------------

let audio = null, capture = null;
const gains = new Map(), nextTime = new Map();

async function startAudio() {
  if (audio) { if (audio.state !== "running") await audio.resume(); return; }
  audio = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
  $("audio").textContent = "Audio running";
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false,
      noiseSuppression: false, autoGainControl: false } });
    await audio.audioWorklet.addModule("/capture.js");
    const node = new AudioWorkletNode(audio, "ptt-capture");
    let frame = new Int16Array(FRAME), filled = 0;
    node.port.onmessage = (m) => {
      for (const sample of m.data) {
        frame[filled++] = Math.max(-32768, Math.min(32767, Math.round(sample * 32767)));
        if (filled === FRAME) {
          if (consoleState.pressed && socket && socket.readyState === 1) socket.send(frame.buffer);
          frame = new Int16Array(FRAME); filled = 0;
        }
      }
    };
    audio.createMediaStreamSource(stream).connect(node);
    const sink = audio.createGain(); sink.gain.value = 0; node.connect(sink).connect(audio.destination);
    capture = node;
  } catch (error) { log(`microphone unavailable: ${error.message}`, "emergency"); }
}

function gainOf(uri) {
  if (!gains.has(uri)) { const g = audio.createGain(); g.connect(audio.destination); gains.set(uri, g); setGain(uri); }
  return gains.get(uri);
}
function setGain(uri) {
  const card = cards.get(uri), gain = gains.get(uri);
  if (!card || !gain) return;
  gain.gain.value = card.querySelector(".mute").checked ? 0 : card.querySelector(".volume").value / 100;
}

function play(data) {
  if (!audio || audio.state !== "running") return;
  const uri = Object.keys(consoleState.slots).find((g) => consoleState.slots[g] === data[0]);
  if (!uri) return;
  const pcm = new Int16Array(data.buffer.slice(1));
  const buffer = audio.createBuffer(1, pcm.length, RATE);
  const channel = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
  const source = audio.createBufferSource();
  source.buffer = buffer;
  source.connect(gainOf(uri));
  const at = Math.max(audio.currentTime + 0.06, nextTime.get(uri) || 0);
  source.start(at);
  nextTime.set(uri, at + buffer.duration);
}

function alarm() {
  if (!audio || audio.state !== "running") return;
  for (let i = 0; i < 3; i++) {
    const tone = audio.createOscillator(), level = audio.createGain();
    tone.frequency.value = 1200; level.gain.value = 0.2;
    tone.connect(level).connect(audio.destination);
    tone.start(audio.currentTime + i * 0.3); tone.stop(audio.currentTime + i * 0.3 + 0.15);
  }
}

// --- hold to talk ------------------------------------------------------------------------------------------------

let holding = false;
async function press() {
  if (holding) return;
  holding = true;
  $("talk").setAttribute("aria-pressed", "true");
  await startAudio();
  if (holding) send({ op: "press" });
}
function release() {
  if (!holding) return;
  holding = false;
  $("talk").setAttribute("aria-pressed", "false");
  send({ op: "release" });
}
const typing = (el) => el && (el.tagName === "INPUT" && el.type !== "checkbox" && el.type !== "range" || el.tagName === "SELECT" || el.tagName === "TEXTAREA");

function wirePage() {
  const talk = $("talk");
  talk.addEventListener("pointerdown", (e) => { talk.setPointerCapture(e.pointerId); press(); });
  talk.addEventListener("pointerup", release);
  talk.addEventListener("pointercancel", release);
  talk.addEventListener("keydown", (e) => { if ((e.key === " " || e.key === "Enter") && !e.repeat) { e.preventDefault(); press(); } });
  talk.addEventListener("keyup", (e) => { if (e.key === " " || e.key === "Enter") { e.preventDefault(); release(); } });
  document.addEventListener("keydown", (e) => {
    if (e.key === " " && e.target !== talk && !typing(e.target) && e.target.tagName !== "BUTTON") { e.preventDefault(); if (!e.repeat) press(); }
  });
  document.addEventListener("keyup", (e) => { if (e.key === " " && e.target !== talk && !typing(e.target)) release(); });
  window.addEventListener("blur", release);
  $("talkgroup").onchange = (e) => send({ op: "talkgroup", group: e.target.value || null });
  $("revoke").onclick = () => { startAudio(); send({ op: "revoke" }); };
  $("audio").onclick = startAudio;
  $("patch").onclick = () => send({ op: "patch", a: $("patch-a").value, b: $("patch-b").value });
  $("unpatch").onclick = () => send({ op: "unpatch" });
  $("create").onsubmit = (e) => {
    e.preventDefault();
    const form = e.target, result = form.querySelector(".result");
    const members = form.members.value.split(",").map((s) => s.trim()).filter(Boolean).map((m) => ({ uri: asUri(m) }));
    api("POST", "/api/groups", { uri: asUri(form.uri.value), name: form.name.value, members })
      .then((d) => { result.textContent = `created ${d.group.uri}`; log(`created ${d.group.uri}`); form.reset(); })
      .catch((error) => { result.textContent = `refused: ${error.message}`; });
  };
}

window.addEventListener("DOMContentLoaded", async () => {
  wirePage();
  try { domain = (await api("GET", "/api/health")).domain || ""; } catch (error) { log(`dispatcher API: ${error.message}`, "emergency"); }
  connect();
});
