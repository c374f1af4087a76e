// The omni dev dashboard: a banner for omni.toml's problems, a card per plugin (status dots, facts, actions, error
// overlay, build output) and, for a plugin whose Vite is up, its UI imported straight from Vite (plugin-view.js) and
// remounted with a new key on plugin/dev_reload_complete; in debug mode (delve) the card shows the debug port, a
// "paused at file:line" badge and a VS Code launch.json entry to copy. Plain DOM, no framework; every DOM write happens in one
// requestAnimationFrame per frame, so ten busy plugins cost one layout per frame.
import { h } from "./dom.js";
import {
  OmniClient, TOPICS, decodeStringField1, encodeStringField1,
} from "./omni-client.js";
import { PluginView } from "./plugin-view.js";

const LOG_LINES = 500;
const CHUNK = 50;              // log lines per chunk element
const GREET_METHOD = "/hello.Greeter/Greet";
const COMMANDS = ["start", "stop", "restart", "attach", "detach", "rebuild"];
const COLORS = { running: "green", ready: "green", starting: "yellow", building: "yellow", error: "red" };

const omni = OmniClient.fromPage({ logLines: LOG_LINES });
const root = document.getElementById("plugins");
const emptyNote = document.querySelector('[data-testid="empty"]');
const cards = new Map();
const latencies = [];          // event published (meta.ts) -> DOM updated, ms
let pendingTs = [];
let frame = 0;
let structureDirty = true;
let headerDirty = true;

const colorOf = (status) => COLORS[status] || "grey";

/** The VS Code (Go extension) configuration that attaches to a plugin's delve. */
function launchEntry(id, port) {
  return JSON.stringify({
    name: `Attach to ${id}`, type: "go", request: "attach", mode: "remote", port, host: "127.0.0.1",
  }, null, 2);
}

function fmtDuration(ns) {
  if (!ns) return "";
  const ms = ns / 1e6;
  return ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function fmtTime(rfc) {
  if (!rfc) return "";
  const d = new Date(rfc);
  return isNaN(d) ? rfc : d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

// --- one card per plugin ------------------------------------------------------------------------------------------
class Card {
  constructor(id) {
    this.id = id;
    this.dirty = true;
    this.logsDirty = true;
    this.newLogs = [];
    this.fullLogs = true;
    const t = (name) => `${name}-${id}`;
    const ind = (label, name) => {
      const dot = h("span", { class: "dot", "data-testid": t(`dot-${name}`), "data-color": "grey" });
      const st = h("span", { class: "st", "data-testid": t(`${name}-status`) });
      return [h("span", { class: "ind" }, dot, label, st), dot, st];
    };
    const [viteInd, viteDot, viteSt] = ind("Vite", "vite");
    const [goInd, goDot, goSt] = ind("Go", "go");
    const [grpcInd, grpcDot, grpcSt] = ind("gRPC", "grpc");
    Object.assign(this, { viteDot, viteSt, goDot, goSt, grpcDot, grpcSt });
    this.mode = h("span", { class: "mode", "data-testid": t("mode") });
    this.worker = h("span", { class: "worker", "data-testid": t("worker") });
    this.port = h("dd", { "data-testid": t("port") });
    this.build = h("dd", { "data-testid": t("last-build") });
    this.path = h("dd", { "data-testid": t("path") });
    this.debugPort = h("dd", { "data-testid": t("debug-port") });
    this.paused = h("span", { class: "paused", "data-testid": t("paused"), hidden: "" });
    this.debugToggle = h("input", { type: "checkbox", "data-testid": t("debug"), onchange: () => this.setDebug() });
    this.launchJson = h("pre", { "data-testid": t("launch-json") });
    this.copyButton = h("button", { type: "button", "data-testid": t("copy-launch"), text: "Copy",
      onclick: () => this.copyLaunch() });
    this.launch = h("details", { class: "launch", "data-testid": t("launch"), hidden: "" },
      h("summary", { text: "VS Code launch.json" }), this.launchJson, this.copyButton);
    this.lastErrorDt = h("dt", { text: "Last error" });
    this.lastError = h("dd", { class: "err", "data-testid": t("last-error") });
    this.action = h("div", { class: "action", "data-testid": t("action") });
    this.buttons = COMMANDS.map((cmd) => h("button", {
      type: "button", "data-testid": t(`btn-${cmd}`), text: cmd[0].toUpperCase() + cmd.slice(1),
      onclick: () => this.run(cmd),
    }));
    this.errList = h("ul");
    this.overlay = h("div", { class: "overlay", "data-testid": t("errors"), hidden: "" },
      h("h3", { text: "Build errors" }), this.errList);
    this.log = h("div", { class: "log", "data-testid": t("log") });
    this.stick = true;          // follow the end of the output until the user scrolls up (passive listener: no layout)
    this.log.addEventListener("scroll", () => {
      const l = this.log;
      this.stick = l.scrollTop + l.clientHeight >= l.scrollHeight - 8;
    }, { passive: true });
    const viewHost = h("div", { class: "view" });
    this.el = h("section", { class: "card", "data-testid": t("card"), "data-plugin": id },
      h("header", {}, h("h2", { text: id }), this.mode, this.worker, this.paused),
      h("div", { class: "dots" }, viteInd, goInd, grpcInd),
      h("dl", { class: "facts" },
        h("dt", { text: "Vite port" }), this.port,
        h("dt", { text: "Last build" }), this.build,
        h("dt", { text: "Path" }), this.path,
        h("dt", { text: "Debug port" }), this.debugPort,
        this.lastErrorDt, this.lastError),
      h("div", { class: "buttons" }, ...this.buttons,
        h("label", { class: "debug" }, this.debugToggle, " Debug")),
      this.launch,
      this.action,
      this.overlay,
      this.output = h("details", { class: "output", open: "" }, h("summary", { text: "Build output" }), this.log),
      viewHost);
    this.output.addEventListener("toggle", () => {
      if (this.output.open) { this.logChanged = true; this.logsDirty = true; schedule(); }
    });
    const invoke = (method, bytes, opts) => omni.invoke(id, method, bytes, opts);
    const greet = async (name = "omni") =>
      decodeStringField1(await invoke(GREET_METHOD, encodeStringField1(name)));
    this.view = new PluginView(id, viewHost, { pluginID: id, invoke, greet });
  }

  async run(cmd, props = {}) {
    this.action.textContent = `${cmd}…`;
    this.action.dataset.status = "pending";
    const btn = COMMANDS.includes(cmd) ? this.buttons[COMMANDS.indexOf(cmd)] : this.debugToggle;
    btn.disabled = true;
    try {
      await omni.request(cmd, { plugin: this.id, ...props });
      this.action.textContent = `${cmd}: ok`;
      this.action.dataset.status = "ok";
    } catch (err) {
      this.action.textContent = `${cmd}: ${err.message}`;
      this.action.dataset.status = "error";
    } finally {
      btn.disabled = false;
    }
  }

  /** The debug toggle: a managed plugin restarts with debug mode on or off, any other starts (managed) with it. */
  setDebug() {
    const st = omni.state.plugins[this.id] || {};
    this.run(st.mode === "managed" ? "restart" : "start", { debug: this.debugToggle.checked });
  }

  async copyLaunch() {
    const text = this.launchJson.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      getSelection().selectAllChildren(this.launchJson);     // no clipboard access: selected, for Ctrl+C
      document.execCommand("copy");
    }
    this.copyButton.textContent = "Copied";
  }

  addLogs(entries) {
    this.logsDirty = true;
    if (this.fullLogs) return;           // a full redraw from the state is pending anyway
    for (const e of entries) this.newLogs.push(e);
    if (this.newLogs.length > LOG_LINES) { this.fullLogs = true; this.newLogs = []; }
  }

  /** After all DOM writes of the frame: keep the build output scrolled to the end unless the user scrolled up.
   *  (Reading scrollHeight lays out once for the whole frame, not once per card.) */
  stickToEnd() {
    if (this.stick && this.logChanged && this.output.open) this.log.scrollTop = this.log.scrollHeight;
    this.logChanged = false;
  }

  /** Status, facts, errors, view: only when a status/error event (or a snapshot) touched this plugin. Every write
   *  is skipped when the value is unchanged, so an unchanged card costs no style or layout work. */
  render() {
    this.dirty = false;
    const st = omni.state.plugins[this.id] || {};
    setText(this.mode, st.mode || "?");
    if (this.mode.dataset.mode !== (st.mode || "")) this.mode.dataset.mode = st.mode || "";
    setText(this.worker, st.workerStatus ? `worker ${st.workerStatus}${st.workerPid ? ` · pid ${st.workerPid}` : ""}` : "");
    setDot(this.viteDot, this.viteSt, colorOf(st.viteStatus), st.viteStatus || "idle");
    setDot(this.goDot, this.goSt, colorOf(st.goStatus), (st.goStatus || "idle") + (st.buildQueued ? " (queued)" : ""));
    const grpcColor = st.grpcConnected ? "green"
      : st.goStatus === "building" || st.goStatus === "starting" ? "yellow"
        : st.goStatus === "error" ? "red" : "grey";
    setDot(this.grpcDot, this.grpcSt, grpcColor, st.grpcConnected ? "connected" : "disconnected");
    setText(this.port, st.vitePort ? `${st.vitePort}${st.viteURL ? ` (${st.viteURL})` : ""}` : "—");
    const buildKey = `${st.lastBuildTime}|${st.lastBuildDuration}`;
    if (buildKey !== this.buildKey) {
      this.buildKey = buildKey;
      // "0001-01-01T00:00:00Z" (Go's zero time, as Omniview sends it) means no build yet
      this.build.textContent = st.lastBuildTime && !st.lastBuildTime.startsWith("0001-")
        ? `${fmtTime(st.lastBuildTime)} (${fmtDuration(st.lastBuildDuration)})` : "—";
    }
    setText(this.path, st.devPath || "—");
    setText(this.debugPort, st.debugPort ? String(st.debugPort) : "—");
    if (!this.debugToggle.disabled && this.debugToggle.checked !== !!st.debugPort) {
      this.debugToggle.checked = !!st.debugPort;
    }
    setText(this.paused, st.paused ? `paused at ${st.pausedAt}` : "");
    if (this.paused.hidden !== !st.paused) this.paused.hidden = !st.paused;
    const launch = st.debugPort ? launchEntry(this.id, st.debugPort) : "";
    if (launch !== this.launchJson.textContent) {
      this.launchJson.textContent = launch;
      this.copyButton.textContent = "Copy";
    }
    if (this.launch.hidden !== !launch) this.launch.hidden = !launch;
    setText(this.lastError, st.lastError || "");
    if (this.lastError.hidden !== !st.lastError) this.lastError.hidden = this.lastErrorDt.hidden = !st.lastError;
    this.renderErrors(omni.state.errors[this.id] || []);
    this.view.update(st);
  }

  renderErrors(errors) {
    if (errors === this.shownErrors) return;
    this.shownErrors = errors;
    this.overlay.hidden = errors.length === 0;
    this.errList.replaceChildren(...errors.map((e) => {
      const loc = e.file ? `${e.file}:${e.line || 0}:${e.column || 0}` : "";
      return h("li", { "data-testid": `error-${this.id}` },
        loc ? h("span", { class: "loc", text: loc }) : "", loc ? " " : "", h("span", { class: "msg", text: e.message }));
    }));
  }

  /** The build output: lines are appended in chunks (one element per frame's worth, at most CHUNK lines) and the
   *  oldest lines trimmed so that exactly the last LOG_LINES stay. Chunks keep layout work proportional to what
   *  changed: unchanged chunks are laid out from cache. */
  renderLogs() {
    this.logsDirty = false;
    let entries;
    if (this.fullLogs) {
      this.fullLogs = false;
      this.newLogs = [];
      this.log.replaceChildren();
      this.lineCount = 0;
      entries = (omni.state.logs[this.id] || []).slice(-LOG_LINES);
    } else {
      entries = this.newLogs;
      this.newLogs = [];
    }
    if (!entries.length) return;
    const frag = document.createDocumentFragment();
    for (let i = 0; i < entries.length; i += CHUNK) {
      const chunk = document.createElement("div");
      chunk.className = "chunk";
      for (const e of entries.slice(i, i + CHUNK)) chunk.append(logLine(e));
      frag.append(chunk);
    }
    this.log.append(frag);
    this.lineCount = (this.lineCount || 0) + entries.length;
    let extra = this.lineCount - LOG_LINES;
    while (extra > 0) {
      const first = this.log.firstElementChild;
      const n = first.childElementCount;
      if (n <= extra) {
        first.remove();
        extra -= n;
        this.lineCount -= n;
      } else {
        for (let k = 0; k < extra; k++) first.firstElementChild.remove();
        this.lineCount -= extra;
        extra = 0;
      }
    }
    this.logChanged = true;
  }

  destroy() {
    this.view.destroy();
    this.el.remove();
  }
}

function setDot(dot, text, color, label) {
  if (dot.dataset.color !== color) dot.dataset.color = color;
  if (text.textContent !== label) {
    text.textContent = label;
    dot.title = label;
  }
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function logLine(e) {
  const d = document.createElement("div");
  d.className = `line ${e.level || "info"}`;
  const t = document.createElement("span");
  t.className = "t";
  t.textContent = (e.timestamp || "").slice(11, 23);
  const s = document.createElement("span");
  s.className = "s";
  s.textContent = e.source;
  d.append(t, " ", s, " ", e.message);
  return d;
}

// --- state -> DOM, once per frame ---------------------------------------------------------------------------------
function card(id) {
  let c = cards.get(id);
  if (!c) {
    c = new Card(id);
    cards.set(id, c);
    structureDirty = true;
  }
  return c;
}

function schedule() {
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
  frame = 0;
  if (structureDirty) {
    structureDirty = false;
    const ids = Object.keys(omni.state.plugins).sort();
    for (const [id, c] of cards) {
      if (!(id in omni.state.plugins)) { c.destroy(); cards.delete(id); }
    }
    for (const id of ids) card(id);
    const want = ids.map((id) => cards.get(id).el);
    if (want.some((el, i) => root.children[i + 1] !== el)) root.append(...want);   // keep the order, move only if needed
    emptyNote.hidden = ids.length > 0;
    structureDirty = false;
  }
  const touched = [];
  for (const c of cards.values()) {
    if (!c.dirty && !c.logsDirty) continue;
    if (c.dirty) c.render();
    if (c.logsDirty) c.renderLogs();
    touched.push(c);
  }
  for (const c of touched) c.stickToEnd();
  if (headerDirty) renderHeader();
  if (pendingTs.length) {
    const now = performance.timeOrigin + performance.now();
    for (const ts of pendingTs) latencies.push(now - ts * 1000);
    pendingTs = [];
    if (latencies.length > 1000) latencies.splice(0, latencies.length - 1000);
    renderLatency();
  }
}

const connEl = document.querySelector('[data-testid="connection"]');
const epochEl = document.querySelector('[data-testid="epoch"]');
const latencyEl = document.querySelector('[data-testid="latency"]');
const configEl = document.querySelector('[data-testid="config-error"]');
const configText = configEl.querySelector(".text");
const authEl = document.querySelector('[data-testid="auth-refused"]');

function renderHeader() {
  headerDirty = false;
  const s = omni.state;
  const [state, text, color] = !s.connected ? ["disconnected", "bridge: disconnected (reconnecting)", "red"]
    : !s.brokerConnected ? ["broker-down", "broker: not answering", "yellow"]
      : ["connected", "connected", "green"];
  connEl.dataset.state = state;
  connEl.querySelector(".dot").dataset.color = color;
  connEl.querySelector(".conn-text").textContent = text;
  epochEl.textContent = s.epoch ? `epoch ${s.epoch} · seq ${s.seq}` : "";
  setText(configText, s.configError || "");
  if (configEl.hidden !== !s.configError) configEl.hidden = !s.configError;
  if (authEl.hidden !== !s.authRefused) authEl.hidden = !s.authRefused;
}

function renderLatency() {
  const last = latencies.slice(-100).sort((a, b) => a - b);
  latencyEl.textContent = last.length ? `event→DOM ${last[last.length >> 1].toFixed(1)} ms` : "";
}

omni.subscribe((change, state) => {
  if (change.kind === "snapshot") {
    structureDirty = true;
    for (const id of Object.keys(state.plugins)) {
      const c = card(id);
      c.fullLogs = true;
      c.logsDirty = true;
      c.dirty = true;
    }
    headerDirty = true;
  } else if (change.kind === "event") {
    const id = change.meta.pluginID;
    headerDirty = true;
    if (change.topic === TOPICS.LOG) {
      if (id in state.plugins || cards.has(id)) card(id).addLogs(change.payload);
    } else if (change.topic === TOPICS.STATUS || change.topic === TOPICS.ERROR) {
      card(id).dirty = true;
    } else if (change.topic === TOPICS.RELOAD_COMPLETE) {
      const c = cards.get(id);
      if (c) { c.view.remount(); c.dirty = true; }
    }
    if (typeof change.meta.ts === "number") pendingTs.push(change.meta.ts);
    if (pendingTs.length > 5000) pendingTs = pendingTs.slice(-1000);
  } else {
    headerDirty = true;
  }
  schedule();
});

window.omniDashboard = { omni, cards, latencies };
omni.connect();
