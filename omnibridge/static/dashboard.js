// The omni dev dashboard: a banner for omni.toml's problems, a card per plugin (status dots, facts, actions, error
// overlay, build output) and, for a plugin whose Vite is up, its UI imported straight from Vite (native ESM + HMR) and
// remounted with a new key on plugin/dev_reload_complete. Plain DOM, no framework; every DOM write happens in one requestAnimationFrame per
// frame, so ten busy plugins cost one layout per frame.
import {
  OmniClient, TOPICS, decodeStringField1, encodeStringField1,
} from "./omni-client.js";

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

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

const colorOf = (status) => COLORS[status] || "grey";

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

// --- the plugin's own UI, loaded from its Vite dev server -----------------------------------------------------------
// The entry is found the way Omniview's frontend finds it (src/entry.ts), else src/entry.tsx. What it exports decides
// what is shown: a React component as default export is rendered (with React Fast Refresh); an Omniview plugin object
// (default export or `plugin`, with `routes`) has its index route's component rendered; a `mount(element, props)`
// function is called. Whatever the shape, the card lists the module's exports and routes and says that it loaded.
const ENTRIES = ["/src/entry.ts", "/src/entry.tsx"];
const VITE_UP = new Set(["ready", "running"]);     // "running": brokers from before Omniview's status names
const REACT_TYPES = new Set(["react.memo", "react.forward_ref", "react.lazy"].map((n) => Symbol.for(n)));
const REACT_ELEMENTS = new Set(["react.element", "react.transitional.element"].map((n) => Symbol.for(n)));
const preambles = new Map();   // Vite base URL -> promise: React Fast Refresh installed for that server

const errText = (err) => (err && err.message ? err.message : String(err));
const isElement = (x) => !!x && typeof x === "object" && REACT_ELEMENTS.has(x.$$typeof);
const isComponent = (x) => typeof x === "function" || (!!x && typeof x === "object" && REACT_TYPES.has(x.$$typeof));
const isPluginObject = (x) => !!x && typeof x === "object" && !x.$$typeof && Array.isArray(x.routes);
const nameOf = (c) => (isElement(c) ? "element" : (c && (c.displayName || c.name)) || "anonymous");
const routeView = (r) => r.Component || r.component || r.element;

/** The index route (path "" or "/", or `index: true`) that has something to render, searched depth first. */
function indexRoute(routes) {
  for (const r of routes || []) {
    if (!r || typeof r !== "object") continue;
    if ((r.index === true || r.path === "" || r.path === "/") && routeView(r)) return r;
    if (r.path === undefined || r.path === "" || r.path === "/") {
      const inner = indexRoute(r.children);
      if (inner) return inner;
    }
  }
  return null;
}

function listRoutes(routes, prefix = "") {
  const out = [];
  for (const r of routes || []) {
    if (!r || typeof r !== "object") continue;
    const path = r.index ? `${prefix || "/"} (index)` : `${prefix}${prefix && r.path ? "/" : ""}${r.path ?? ""}` || "/";
    const view = routeView(r);
    out.push(view ? `${path} → ${nameOf(view)}` : path);
    out.push(...listRoutes(r.children, r.path && r.path !== "/" ? `${prefix}${prefix ? "/" : ""}${r.path}` : prefix));
  }
  return out;
}

function describeExports(mod) {
  return Object.keys(mod).sort().map((k) => {
    const v = mod[k];
    const kind = isComponent(v) ? "component" : isPluginObject(v) ? "plugin object" : isElement(v) ? "element" : typeof v;
    return `${k} (${kind})`;
  });
}

/** What a browser page needs before react-dom evaluates for Fast Refresh to work (@vitejs/plugin-react's preamble;
 *  Omniview's entries do not import it themselves). Without the React plugin there is nothing to install. */
function installPreamble(base) {
  if (!preambles.has(base)) {
    preambles.set(base, import(/* @vite-ignore */ `${base}/@react-refresh`).then((rt) => {
      rt.injectIntoGlobalHook(window);
      window.$RefreshReg$ ||= () => {};
      window.$RefreshSig$ ||= () => (type) => type;
      window.__vite_plugin_react_preamble_installed__ = true;
    }, () => {}));
  }
  return preambles.get(base);
}

/** Where the plugin's Vite keeps its pre-bundled dependencies: {dir, hash} or null (no react-dom in that UI).
 *  Vite pre-bundles a dependency the first time a module asks for it (react-dom/client: when the dashboard does); when
 *  that changes the bundle, what it served before names stale copies (HTTP 504 "Outdated Optimize Dep"; Vite 8 then
 *  answers `/@id/react` with 504 for good). So before importing anything the dashboard asks for the entry and
 *  react-dom/client as text until the deps version in their URLs (`?v=`) stops changing. */
async function settleDeps(base, entry) {
  let last = null;
  let deps = null;
  for (let round = 0; round < 25; round++) {
    const texts = await Promise.all([entry, "/@id/react-dom/client"].map((p) =>
      fetch(base + p, { cache: "no-store" }).then((r) => (r.ok ? r.text() : ""), () => "")));
    const versions = [...new Set(texts.join("\n").match(/[?&]v=[0-9a-f]+/g) || [])].sort().join();
    const m = texts[1].match(/["'](\/[^"'\s]*?\/deps\/)[\w.-]+\.js\?v=([0-9a-f]+)["']/);
    deps = m ? { dir: m[1], hash: m[2] } : null;
    if (versions === last) break;
    last = versions;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return deps;
}

/** React and react-dom/client as the plugin's own modules see them: Vite's pre-bundled copies at the URLs its import
 *  analysis writes for bare imports (`<deps dir>/react.js?v=<hash>`), so the page has one React. */
async function reactFrom(base, deps) {
  if (!deps) throw new Error(`${base} serves no pre-bundled react-dom/client (is react-dom a dependency of the UI?)`);
  const [react, client] = await Promise.all([import(/* @vite-ignore */ `${base}${deps.dir}react.js?v=${deps.hash}`),
    import(/* @vite-ignore */ `${base}${deps.dir}react-dom_client.js?v=${deps.hash}`)]);
  const React = react.createElement ? react : react.default;
  const createRoot = client.createRoot || (client.default && client.default.createRoot);
  return { React, createRoot };
}

/** {what, render?: (element, props) => unmount} for a loaded entry module. */
async function viewOf(base, deps, mod) {
  const make = async (what, node) => {
    const { React, createRoot } = await reactFrom(base, deps);
    return {
      what,
      render: (el, props) => {
        const root = createRoot(el);
        root.render(isElement(node) ? node : React.createElement(node, props));
        return () => root.unmount();
      },
    };
  };
  if (isComponent(mod.default)) return make(`default export ${nameOf(mod.default)}`, mod.default);
  const plugin = isPluginObject(mod.default) ? mod.default : isPluginObject(mod.plugin) ? mod.plugin : null;
  if (plugin) {
    const route = indexRoute(plugin.routes);
    if (route) return make(`the index route's ${nameOf(routeView(route))}`, routeView(route));
    return { what: "nothing: the plugin object has no index route" };
  }
  if (typeof mod.mount === "function") return { what: "mount()", render: (el, props) => mod.mount(el, props) };
  return { what: "nothing: no component, plugin object or mount() exported" };
}

class PluginView {
  constructor(id, host) {
    this.id = id;
    this.host = host;
    this.base = null;       // the Vite server the UI comes from (null: Vite not up)
    this.url = null;        // the entry module loaded
    this.view = null;
    this.unmount = null;
    this.key = 0;
    this.gen = 0;
    this.note = h("div", { class: "view-note", "data-testid": `view-note-${id}` });
    this.info = h("div", { class: "view-info", "data-testid": `view-info-${id}`, hidden: "" });
    this.box = h("div", { class: "view-root", "data-testid": `view-${id}` });
    host.append(this.note, this.info, this.box);
    const invoke = (method, bytes, opts) => omni.invoke(id, method, bytes, opts);
    const greet = async (name = "omni") =>
      decodeStringField1(await invoke(GREET_METHOD, encodeStringField1(name)));
    this.props = { pluginID: id, invoke, greet };
  }

  update(st) {
    const base = st && VITE_UP.has(st.viteStatus) && st.vitePort
      ? (st.viteURL || `http://127.0.0.1:${st.vitePort}`).replace(/\/+$/, "") : null;
    if (base === this.base) return;
    this.base = base;
    this._unmount();
    this.view = null;
    this.url = null;
    this.info.hidden = true;
    this.gen++;
    if (base) this._load(base, false);
    else this._note(st && st.viteStatus !== "idle" ? `UI: Vite ${st.viteStatus}` : "UI: Vite not running");
  }

  async _load(base, retry) {
    const gen = ++this.gen;
    const stale = () => gen !== this.gen;
    this._note(`looking for the UI entry on ${base}`);
    let path = null;
    for (const candidate of ENTRIES) {
      let res;
      try {
        res = await fetch(base + candidate, { cache: "no-store" });
      } catch (err) {
        if (!stale()) this._fail(`${base} does not answer: ${errText(err)}`, base);
        return;
      }
      if (stale()) return;
      // absent: a 404, or the SPA fallback's index.html that Vite answers for any path when the UI has one
      if (res.status === 404 || (res.ok && !/javascript/.test(res.headers.get("content-type") || ""))) continue;
      if (!res.ok) {          // Vite's own error (a syntax error, a missing import): its text says what is wrong
        const text = (await res.text()).slice(0, 4000);
        if (!stale()) this._fail(`Vite could not serve ${candidate} (HTTP ${res.status}): ${text}`, base);
        return;
      }
      path = candidate;
      break;
    }
    if (!path) {
      this._fail(`no UI entry on ${base}: neither ${ENTRIES.join(" nor ")} exists`, base);
      return;
    }
    const url = base + path;
    this._note(`loading ${url}`);
    let mod;
    let view;
    try {
      const deps = await settleDeps(base, path);
      await installPreamble(base);
      // a failed import() stays failed for that URL: a retry imports a distinct URL (its imports are shared)
      mod = await import(/* @vite-ignore */ retry ? `${url}?omni_retry=${Date.now()}` : url);
      view = await viewOf(base, deps, mod);
    } catch (err) {
      if (!stale()) this._fail(`could not import ${url}: ${errText(err)}`, base);
      return;
    }
    if (stale()) return;
    this.url = url;
    this.view = view;
    const plugin = isPluginObject(mod.default) ? mod.default : isPluginObject(mod.plugin) ? mod.plugin : null;
    const lines = [`module ${path} loaded; exports: ${describeExports(mod).join(", ") || "none"}`];
    if (plugin) lines.push(`routes: ${listRoutes(plugin.routes).join(", ") || "none"}`);
    lines.push(`rendering: ${view.what}`);
    this.info.replaceChildren(...lines.map((text) => h("div", { text })));
    this.info.hidden = false;
    if (view.render) this._mount();
    else this._note(`UI from ${url}: nothing to render`);
  }

  _fail(text, base) {
    this._note(text, "error");
    this.note.append(" ", h("button", { text: "retry", onclick: () => this._load(base, true) }));
  }

  _mount() {
    this.key += 1;                         // the seed's reloadKey: a fresh element and a fresh React root
    const el = h("div", { "data-reload-key": String(this.key) });
    this.box.replaceChildren(el);
    this.box.dataset.reloadKey = String(this.key);
    try {
      const un = this.view.render(el, this.props);
      this.unmount = typeof un === "function" ? un : null;
      this._note(`UI from ${this.url} (mount #${this.key})`);
    } catch (err) {
      this._note(`rendering failed: ${errText(err)}`, "error");
    }
  }

  _unmount() {
    const un = this.unmount;
    this.unmount = null;
    if (un) {
      try { un(); } catch (err) { console.error(`unmount of ${this.id} failed`, err); }
    }
    this.box.replaceChildren();
  }

  /** plugin/dev_reload_complete: the backend is new, so remount the view (no page reload). */
  remount() {
    if (!this.view || !this.view.render) return;
    this._unmount();
    this._mount();
  }

  destroy() {
    this.gen++;
    this._unmount();
  }

  _note(text, status = "ok") {
    this.note.textContent = text;
    this.note.dataset.status = status;
  }
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
      h("header", {}, h("h2", { text: id }), this.mode, this.worker),
      h("div", { class: "dots" }, viteInd, goInd, grpcInd),
      h("dl", { class: "facts" },
        h("dt", { text: "Vite port" }), this.port,
        h("dt", { text: "Last build" }), this.build,
        h("dt", { text: "Path" }), this.path,
        this.lastErrorDt, this.lastError),
      h("div", { class: "buttons" }, ...this.buttons),
      this.action,
      this.overlay,
      this.output = h("details", { class: "output", open: "" }, h("summary", { text: "Build output" }), this.log),
      viewHost);
    this.output.addEventListener("toggle", () => {
      if (this.output.open) { this.logChanged = true; this.logsDirty = true; schedule(); }
    });
    this.view = new PluginView(id, viewHost);
  }

  async run(cmd) {
    this.action.textContent = `${cmd}…`;
    this.action.dataset.status = "pending";
    const btn = this.buttons[COMMANDS.indexOf(cmd)];
    btn.disabled = true;
    try {
      await omni.request(cmd, { plugin: this.id });
      this.action.textContent = `${cmd}: ok`;
      this.action.dataset.status = "ok";
    } catch (err) {
      this.action.textContent = `${cmd}: ${err.message}`;
      this.action.dataset.status = "error";
    } finally {
      btn.disabled = false;
    }
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
      this.build.textContent = st.lastBuildTime
        ? `${fmtTime(st.lastBuildTime)} (${fmtDuration(st.lastBuildDuration)})` : "—";
    }
    setText(this.path, st.devPath || "—");
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
