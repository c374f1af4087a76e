// omni-client.js: the browser side of omnibridge (no dependencies, plain ES module).
//
//   import { OmniClient } from "http://127.0.0.1:15170/omni-client.js";
//   const omni = new OmniClient({ url: "ws://127.0.0.1:15170/ws", token });   // or OmniClient.fromPage()
//   (a page served by the bridge itself needs no token: its session cookie goes with the WebSocket)
//   omni.subscribe((change, state) => { ... });     // change.kind: "snapshot" | "event" | "connection"
//   omni.connect();
//   const st = await omni.request("start", { plugin: "hello" });            // resolves with the result
//
// State (omni.state): { epoch, seq, plugins: {id: DevServerState}, logs: {id: [LogEntry]}, errors: {id: [BuildError]},
// configError (the broker's omni.toml problem, "" when none), connected (the WebSocket), brokerConnected, authRefused
// (the bridge refuses this page: its cookie is missing or stale) }. Events are applied in seq order on top of the bridge's snapshot
// (ZeroMQ Clone pattern); a new epoch or a gap makes the client ask for a fresh snapshot and ignore events until it
// arrives. Reconnects by itself with backoff. See omnibridge/README.md.

const STATUS = "plugin/devserver/status";
const LOG = "plugin/devserver/log";
const ERROR = "plugin/devserver/error";
const RELOAD_COMPLETE = "plugin/dev_reload_complete";
const CONFIG = "omni/config";

export const TOPICS = {
  STATUS, LOG, ERROR,
  RELOAD_START: "plugin/dev_reload_start",
  RELOAD_COMPLETE,
  RELOAD_ERROR: "plugin/dev_reload_error",
  CONFIG,
};

export class OmniError extends Error {
  constructor(code, reason) {
    super(`${code}: ${reason}`);
    this.name = "OmniError";
    this.code = code;
    this.reason = reason;
  }
}

export class OmniClient {
  /**
   * @param {{url: string, token?: string, authProbe?: () => Promise<boolean>, logLines?: number,
   *   requestTimeout?: number, WebSocket?: any}} opts
   */
  constructor({ url, token = "", authProbe = null, logLines = 500, requestTimeout = 60000,
    WebSocket: WS = globalThis.WebSocket }) {
    this.url = url;
    this.token = token;
    this.authProbe = authProbe;     // async () => true when the bridge refuses us (asked after a refused connection)
    this.logLines = logLines;
    this.requestTimeout = requestTimeout;
    this.WS = WS;
    this.ws = null;
    this.listeners = new Set();
    this.pending = new Map();
    this.nextId = 1;
    this.closed = false;
    this.retry = 250;
    this.waitingSnapshot = true;
    this.stats = { events: 0, snapshots: 0, resyncs: 0, reconnects: 0 };
    this.state = { epoch: "", seq: 0, plugins: {}, logs: {}, errors: {}, configError: "", connected: false,
      brokerConnected: false, authRefused: false };
  }

  /** A client for the dashboard page served by the bridge itself: the page's HttpOnly session cookie authenticates
   *  the WebSocket (it outlives a restart of the bridge); the page never sees the token. */
  static fromPage(opts = {}) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // a refused WebSocket does not say why: the page, asked for with the same cookie, does (403 = not authenticated)
    const authProbe = async () => (await fetch("/", { cache: "no-store", credentials: "same-origin" })).status === 403;
    return new OmniClient({ url: `${scheme}//${location.host}/ws`, authProbe, ...opts });
  }

  /** listener(change, state); change = {kind:"snapshot"} | {kind:"event", topic, payload, meta} |
   *  {kind:"connection", connected} | {kind:"broker", connected}. Returns an unsubscribe function. */
  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  connect() {
    if (this.ws || this.closed) return this;
    const sep = this.url.includes("?") ? "&" : "?";
    // batch=1: under load the bridge packs queued messages into one frame (a JSON array): far fewer message events
    const auth = this.token ? `token=${encodeURIComponent(this.token)}&` : "";
    const ws = new this.WS(`${this.url}${sep}${auth}batch=1`);
    this.ws = ws;
    this.waitingSnapshot = true;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.retry = 250;
      this.state.connected = true;
      this.state.authRefused = false;
      this._emit({ kind: "connection", connected: true });
    };
    ws.onmessage = (ev) => this._onMessage(ev.data);
    ws.onclose = () => {
      this.ws = null;
      const was = this.state.connected;
      this.state.connected = false;
      for (const [, p] of this.pending) p.reject(new OmniError("disconnected", "the bridge connection closed"));
      this.pending.clear();
      if (was) this._emit({ kind: "connection", connected: false });
      if (!this.closed) {
        this.stats.reconnects++;
        setTimeout(async () => {
          if (!opened && this.authProbe) {      // refused, or the bridge is down: which one?
            let refused = false;
            try { refused = await this.authProbe(); } catch { /* bridge down: try again later */ }
            if (refused !== this.state.authRefused) {
              this.state.authRefused = refused;
              this._emit({ kind: "auth", refused });
            }
          }
          this.connect();
        }, this.retry);
        this.retry = Math.min(this.retry * 2, 5000);
      }
    };
    return this;
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close();
  }

  /** Send a control command through the bridge; resolves with its result, rejects with an OmniError. */
  request(command, properties = {}, { timeout = this.requestTimeout } = {}) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== 1) {
        reject(new OmniError("disconnected", "not connected to the bridge"));
        return;
      }
      const id = `b${this.nextId++}`;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new OmniError("timeout", `no reply to ${command} within ${timeout} ms`));
      }, timeout);
      this.pending.set(id, {
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.ws.send(JSON.stringify({ type: "request", id, command, properties }));
    });
  }

  /** Call a unary gRPC method of a plugin with protobuf bytes (Uint8Array); resolves with the reply bytes. */
  async invoke(plugin, method, bytes = new Uint8Array(), { timeout = 10 } = {}) {
    const res = await this.request("invoke", { plugin, method, request: bytesToBase64(bytes), timeout },
      { timeout: (timeout + 10) * 1000 });
    return base64ToBytes(res.response || "");
  }

  /** Ask the bridge for a fresh snapshot (events are ignored until it arrives). */
  resync() {
    this.waitingSnapshot = true;
    this.stats.resyncs++;
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify({ type: "resync" }));
  }

  _emit(change) {
    for (const l of this.listeners) {
      try { l(change, this.state); } catch (e) { console.error("omni listener failed", e); }
    }
  }

  _onMessage(data) {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (Array.isArray(msg)) {
      for (const m of msg) this._handle(m);
      return;
    }
    this._handle(msg);
  }

  _handle(msg) {
    if (!msg || typeof msg !== "object") return;
    switch (msg.type) {
      case "snapshot": return this._onSnapshot(msg);
      case "event": return this._onEvent(msg);
      case "reply": {
        const p = this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id);
        if (msg.status === "ok") p.resolve(msg.result);
        else p.reject(new OmniError(msg.code || "error", msg.reason || "request failed"));
        return;
      }
      case "broker":
        this.state.brokerConnected = !!msg.connected;
        this._emit({ kind: "broker", connected: !!msg.connected });
        return;
      default:
        return;
    }
  }

  _onSnapshot(msg) {
    const s = this.state;
    s.epoch = msg.epoch;
    s.seq = msg.seq;
    s.plugins = msg.plugins || {};
    s.logs = {};
    for (const [id, lines] of Object.entries(msg.logs || {})) s.logs[id] = lines.slice(-this.logLines);
    s.errors = { ...(msg.errors || {}) };
    s.configError = typeof msg.configError === "string" ? msg.configError : "";
    s.brokerConnected = !!(msg.broker && msg.broker.connected);
    this.waitingSnapshot = false;
    this.stats.snapshots++;
    this._emit({ kind: "snapshot" });
  }

  _onEvent(msg) {
    const s = this.state;
    const meta = msg.meta || {};
    if (this.waitingSnapshot) return;
    if (meta.epoch !== s.epoch) { this.resync(); return; }     // the bridge sends a snapshot first; be safe
    if (meta.seq <= s.seq) return;                              // already in the snapshot
    if (meta.seq !== s.seq + 1) { this.resync(); return; }      // a gap: start over from a snapshot
    s.seq = meta.seq;
    this.stats.events++;
    applyEvent(s, msg.topic, msg.payload, meta.pluginID, this.logLines);
    this._emit({ kind: "event", topic: msg.topic, payload: msg.payload, meta });
  }
}

/** The state change an event makes (the same rules as the bridge's hub, so snapshots and events agree). */
export function applyEvent(s, topic, payload, plugin, logLines = 500) {
  if (topic === STATUS && payload && typeof payload === "object") {
    const prev = s.plugins[plugin] || {};
    s.plugins = { ...s.plugins, [plugin]: payload };
    if (payload.goStatus === "ready" && prev.goStatus !== "ready") delete s.errors[plugin];
  } else if (topic === LOG && Array.isArray(payload)) {
    const buf = s.logs[plugin] || (s.logs[plugin] = []);
    for (const e of payload) buf.push(e);
    if (buf.length > logLines) buf.splice(0, buf.length - logLines);
  } else if (topic === ERROR && payload && typeof payload === "object") {
    if (payload.errors && payload.errors.length) s.errors[plugin] = payload.errors;
    else delete s.errors[plugin];
  } else if (topic === RELOAD_COMPLETE) {
    delete s.errors[plugin];
  } else if (topic === CONFIG && payload && typeof payload === "object") {
    s.configError = typeof payload.error === "string" ? payload.error : "";
  }
}

/**
 * A React hook without bundling React: pass React (or {useState, useEffect}) in.
 *   const useDevServer = makeUseDevServer(React, omni);
 *   function Footer({ id }) { const { state, logs, errors, reloadKey, connected } = useDevServer(id); ... }
 * `reloadKey` increments on plugin/dev_reload_complete for that plugin: use it as the `key` of the plugin's view to
 * remount it after a Go reload. Without an id it returns every plugin's state.
 */
export function makeUseDevServer(React, client) {
  const { useState, useEffect } = React;
  return function useDevServer(pluginID) {
    const snap = () => ({
      state: pluginID ? client.state.plugins[pluginID] || null : client.state.plugins,
      logs: pluginID ? client.state.logs[pluginID] || [] : client.state.logs,
      errors: pluginID ? client.state.errors[pluginID] || [] : client.state.errors,
      connected: client.state.connected && client.state.brokerConnected,
    });
    const [value, setValue] = useState(() => ({ ...snap(), reloadKey: 0 }));
    useEffect(() => client.subscribe((change) => {
      if (change.kind === "event" && pluginID && change.meta.pluginID !== pluginID) return;
      const reload = change.kind === "event" && change.topic === RELOAD_COMPLETE;
      setValue((v) => ({ ...snap(), reloadKey: v.reloadKey + (reload ? 1 : 0) }));
    }), [pluginID]);
    return {
      ...value,
      start: (props = {}) => client.request("start", { plugin: pluginID, ...props }),
      stop: () => client.request("stop", { plugin: pluginID }),
      restart: () => client.request("restart", { plugin: pluginID }),
      rebuild: () => client.request("rebuild", { plugin: pluginID }),
      attach: () => client.request("attach", { plugin: pluginID }),
      detach: () => client.request("detach", { plugin: pluginID }),
    };
  };
}

// --- bytes helpers (for invoke) ---------------------------------------------------------------------------------
export function bytesToBase64(bytes) {
  let bin = "";
  for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
  return btoa(bin);
}

export function base64ToBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// --- protobuf: a message whose field 1 is a string (hello.GreetRequest / GreetReply) ------------------------------
export function encodeStringField1(text) {
  const raw = new TextEncoder().encode(text);
  if (raw.length === 0) return new Uint8Array();     // proto3 omits default values
  const len = [];
  let n = raw.length;
  while (n > 0x7f) { len.push((n & 0x7f) | 0x80); n >>>= 7; }
  len.push(n);
  const out = new Uint8Array(1 + len.length + raw.length);
  out[0] = 0x0a;                                     // field 1, wire type 2 (length-delimited)
  out.set(len, 1);
  out.set(raw, 1 + len.length);
  return out;
}

export function decodeStringField1(bytes) {
  let pos = 0;
  let result = "";
  const varint = () => {
    let value = 0, shift = 0, b;
    do {
      if (pos >= bytes.length) throw new Error("truncated varint");
      b = bytes[pos++];
      value += (b & 0x7f) * 2 ** shift;
      shift += 7;
    } while (b & 0x80);
    return value;
  };
  while (pos < bytes.length) {
    const key = varint();
    const field = Math.floor(key / 8), wire = key & 7;
    if (wire === 0) varint();
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      const len = varint();
      if (pos + len > bytes.length) throw new Error("truncated field");
      if (field === 1) result = new TextDecoder().decode(bytes.subarray(pos, pos + len));
      pos += len;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
  return result;
}
