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

// Vite's pre-bundled dependencies (react, react-dom/client, ...) are files `<cacheDir>/deps/<flattened id>.js`, which
// Vite's import analysis writes into the modules it serves as `<that path>?v=<hash>`. The hash is each dependency's
// own, not one per bundle: the deps of the start-up scan, each batch discovered later, and the shared chunks they
// import get different ones (a dep keeps its hash when a later re-bundle leaves its file unchanged), and Vite answers
// any other hash with HTTP 504 "Outdated Optimize Dep", for good. So a dep's URL cannot be made from another's hash:
// the dashboard imports a dep at the URL Vite wrote in the plugin's modules, and a dep they do not import (Omniview's
// entries never import react-dom) as the file without a hash, which Vite serves as it is now. Not as `/@id/<dep>`:
// once a re-bundle has reloaded pages, Vite answers such a URL with 504 until it restarts (it stays bound to the
// version it first resolved).
const DEP_URL = /["'](\/[^"'\s?]*\/deps\/)([\w.$-]+)\.js(\?v=[\w.-]+)?["']/g;
// A URL the browser has never seen for the hash-less files, once per page: Vite marks dep files `immutable`, so a
// browser would otherwise keep an older Vite's copy for a year. (`t` is Vite's own HMR query: Vite ignores it.)
const PAGE_STAMP = `t=${Date.now()}`;

const getText = (url) => fetch(url, { cache: "no-store" })
  .then(async (r) => ({ status: r.status, text: r.ok ? await r.text() : "" }), () => ({ status: 0, text: "" }));
/** The dep files a module's text names: [{dir, name (flattened id: "react-dom_client"), url (as written)}]. */
const depsIn = (text) => [...text.matchAll(DEP_URL)]
  .map((m) => ({ dir: m[1], name: m[2], url: `${m[1]}${m[2]}.js${m[3] || ""}` }));
const importsOf = (text) => new Set(depsIn(text).map((d) => d.url));

/** The plugin's own modules reachable from `entry` by imports (at most `limit`), as text, as Vite serves them: asking
 *  for each one makes Vite's import analysis see, and pre-bundle, every bare import the UI makes (see settleDeps). */
async function crawl(base, entry, limit = 60) {
  const seen = new Set([entry]);
  let level = [entry];
  const texts = [];
  while (level.length && texts.length < limit) {
    const got = await Promise.all(level.map((path) => getText(base + path)));     // one import depth at a time
    level = [];
    for (const { text } of got) {
      texts.push(text);
      for (const m of text.matchAll(/(?:\bfrom|\bimport)\s*\(?\s*["'](\/[^"'?\s]+)(?:\?[^"']*)?["']/g)) {
        const dep = m[1];
        const vite = /^\/@(?!fs\/)/.test(dep) || dep.includes("/node_modules/") || /\/deps\/[^/]+$/.test(dep);
        if (!vite && !seen.has(dep) && seen.size < limit) {
          seen.add(dep);
          level.push(dep);
        }
      }
    }
  }
  return texts;
}

/** Waits until the plugin's Vite has pre-bundled every dependency its UI imports, plus react and react-dom/client
 *  for the dashboard, in one bundle that does not change any more; returns where the dashboard imports React from
 *  ({react, client} URL paths, or null when the UI has no react-dom).
 *  Vite pre-bundles a dependency when a module first asks for it; a dependency discovered after others were bundled
 *  (react-dom/client: asked for by the dashboard only) can change the bundle, and then the URLs served before name
 *  stale copies (504) and a module graph that imported one fails for the life of the page. So before importing
 *  anything, each round asks, as text, for every module the entry reaches and for the two React entry points, then
 *  for every dep file those name: Vite answers a dep once the bundle that has it is written, and 504 if the URL is of
 *  an older bundle. Settled: two rounds alike, every file served, and React's own chunk imported by react-dom/client
 *  too (one React for the plugin's components and the dashboard's root). */
async function settleDeps(base, entry) {
  let last = null;
  let candidate = null;
  for (let round = 0; round < 25; round++) {
    // (asking for `/@id/<dep>` makes Vite discover and bundle that dep; its answer is only used below to see whether
    // the UI has the dep at all, and where Vite keeps its deps)
    const [client, texts] = await Promise.all([getText(`${base}/@id/react-dom/client`), crawl(base, entry)]);
    const written = depsIn(texts.join("\n"));
    if (!written.some((d) => d.name === "react")) await getText(`${base}/@id/react`);
    const dir = (written[0] || depsIn(client.text)[0] || {}).dir;
    // 404: no react-dom in this UI (a mount() entry may not need it); else (200, or 504 for a stale /@id/) it has one
    const hasClient = client.status !== 404 && client.status !== 500 && !!dir;
    const pick = (name) => (written.find((d) => d.name === name) || {}).url || `${dir}${name}.js?${PAGE_STAMP}`;
    const react = hasClient ? { react: pick("react"), client: pick("react-dom_client") } : null;
    const urls = [...new Set([...written.map((d) => d.url), ...(react ? [react.react, react.client] : [])])].sort();
    const got = await Promise.all(urls.map((u) => getText(base + u)));
    let ok = got.every((r) => r.status === 200);
    if (ok && react) {
      const reactImports = importsOf(got[urls.indexOf(react.react)].text);
      const clientImports = importsOf(got[urls.indexOf(react.client)].text);
      ok = reactImports.size > 0 && [...reactImports].every((u) => clientImports.has(u));
    }
    const key = ok ? urls.join() : null;
    if (key && key === last) return react;
    last = key;
    candidate = react;
    if (!ok) await new Promise((resolve) => setTimeout(resolve, 200));   // a re-bundle is being written
  }
  console.warn(`${base}: Vite's pre-bundled dependencies did not settle; importing React from`, candidate);
  return candidate;
}

/** A module graph that imported a stale pre-bundled dependency stays broken for this page (the browser keeps the
 *  failed fetch): reload the page, at most once a minute per Vite server, as Vite's own client does. */
function reloadForStaleDeps(base, err) {
  if (!/\/deps\//.test(errText(err))) return false;
  const key = `omni-deps-reload:${base}`;
  const last = Number(sessionStorage.getItem(key) || 0);
  if (Date.now() - last < 60000) return false;
  sessionStorage.setItem(key, String(Date.now()));
  location.reload();
  return true;
}

/** React and react-dom/client at the URLs settleDeps found, so the page has one React. */
async function reactFrom(base, deps) {
  if (!deps) throw new Error(`${base} serves no pre-bundled react-dom/client (is react-dom a dependency of the UI?)`);
  const [react, client] = await Promise.all([import(/* @vite-ignore */ base + deps.react),
    import(/* @vite-ignore */ base + deps.client)]);
  const React = react.createElement ? react : react.default;
  const createRoot = client.createRoot || (client.default && client.default.createRoot);
  return { React, createRoot };
}

/** Runs `fn` while a "click" nobody else hears is being dispatched. React gives an update made during a discrete
 *  event the sync lane: the view renders in this task and its effects (a first invoke, after a reload) run before
 *  the browser paints, rather than a frame or two later. */
function duringDiscreteEvent(fn) {
  const target = new EventTarget();
  let out;
  let failure = null;
  target.addEventListener("click", () => {
    try { out = fn(); } catch (err) { failure = { err }; }
  }, { once: true });
  target.dispatchEvent(new Event("click"));
  if (failure) throw failure.err;
  return out;
}

/** {what, render?: (element, props) => unmount} for a loaded entry module. */
async function viewOf(base, deps, mod) {
  const make = async (what, node) => {
    const { React, createRoot } = await reactFrom(base, deps);
    return {
      what,
      render: (el, props) => {
        const root = createRoot(el);
        duringDiscreteEvent(() => root.render(isElement(node) ? node : React.createElement(node, props)));
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
      if (!stale() && !reloadForStaleDeps(base, err)) this._fail(`could not import ${url}: ${errText(err)}`, base);
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
