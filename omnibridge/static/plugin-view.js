import { h } from "./dom.js";

// A plugin's own UI in the dashboard, imported from its Vite dev server (native ESM + HMR).
// The entry is found the way Omniview's frontend finds it (src/entry.ts), else src/entry.tsx. What it exports decides
// what is shown: a React component as default export is rendered (with React Fast Refresh); an Omniview plugin object
// (default export or `plugin`, with its routes: `Routes` as Omniview's loader reads them, a PluginWindow's `_routes`, or
// `routes` as its docs write them) has its index route's component rendered; a `mount(element, props)`
// function is called. Whatever the shape, the card lists the module's exports and routes and says that it loaded.
const ENTRIES = ["/src/entry.ts", "/src/entry.tsx"];
const REACT_TYPES = new Set(["react.memo", "react.forward_ref", "react.lazy"].map((n) => Symbol.for(n)));
const REACT_ELEMENTS = new Set(["react.element", "react.transitional.element"].map((n) => Symbol.for(n)));
const preambles = new Map();   // Vite base URL -> promise: React Fast Refresh installed for that server

const errText = (err) => (err && err.message ? err.message : String(err));
const isElement = (x) => !!x && typeof x === "object" && REACT_ELEMENTS.has(x.$$typeof);
const isComponent = (x) => typeof x === "function" || (!!x && typeof x === "object" && REACT_TYPES.has(x.$$typeof));
const routesOf = (x) => [x.Routes, x._routes, x.routes].find(Array.isArray);
const isPluginObject = (x) => !!x && typeof x === "object" && !x.$$typeof && !!routesOf(x);
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
    const route = indexRoute(routesOf(plugin));
    if (route) return make(`the index route's ${nameOf(routeView(route))}`, routeView(route));
    return { what: "nothing: the plugin object has no index route" };
  }
  if (typeof mod.mount === "function") return { what: "mount()", render: (el, props) => mod.mount(el, props) };
  return { what: "nothing: no component, plugin object or mount() exported" };
}

export class PluginView {
  /** props: what the rendered component (or mount()) gets: {pluginID, invoke, greet}. */
  constructor(id, host, props) {
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
    this.props = props;
  }

  update(st) {
    // Omniview's frontend loads a dev UI only when `viteStatus === "ready" && vitePort > 0`: so does the dashboard
    const base = st && st.viteStatus === "ready" && st.vitePort > 0
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
    if (plugin) lines.push(`routes: ${listRoutes(routesOf(plugin)).join(", ") || "none"}`);
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
    this.key += 1;                         // a fresh element and a fresh React root
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
