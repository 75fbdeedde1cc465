// Helpers for driving the unmodified @rails/actioncable client (under Node,
// with the `ws` package) against the `chat` example server.
//
// Nothing here patches the client: every client gets its own instance of the
// package's ESM build (imported with a distinct query string, so each instance
// has its own `adapters` object) and `ActionCable.adapters.WebSocket` is set to
// a `ws` subclass that injects the Origin and Cookie headers a browser would
// send. This is what a Node user of the client does (see the protocol
// reference, section 6), once per identity.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import net from "node:net";
import { fileURLToPath } from "node:url";
import { before } from "node:test";
import jwt from "jsonwebtoken";
import WebSocket from "ws";
import { createCable } from "@anycable/web";

import { Scope as BaseScope, freePort, postJson, sleep, waitFor } from "./harness.mjs";

export { freePort, sleep, waitFor };

export const ORIGIN = "http://localhost:3000";
export const PROTOCOL = "actioncable-v1-json";

const HERE = fileURLToPath(new URL(".", import.meta.url));
export const CHAT_BIN =
  process.env.CHAT_BIN || fileURLToPath(new URL("../../target/debug/chat", import.meta.url));
// cable-standalone's generic server.
export const CABLE_SERVER_BIN =
  process.env.CABLE_SERVER_BIN ||
  fileURLToPath(new URL("../../target/debug/cable-server", import.meta.url));

const ACTIONCABLE_ESM = import.meta.resolve(
  "@rails/actioncable/app/assets/javascripts/actioncable.esm.js",
);

// ConnectionMonitor.start()/stop() call the global add/removeEventListener
// ("visibilitychange"), which Node 20 does not have.
if (typeof globalThis.addEventListener !== "function") {
  globalThis.addEventListener = () => {};
}
if (typeof globalThis.removeEventListener !== "function") {
  globalThis.removeEventListener = () => {};
}

const DEBUG = !!process.env.ACTIONCABLE_DEBUG;

// ---------------------------------------------------------------------------
// small utilities


const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "");

function tail(text, lines = 40) {
  const all = text.split("\n");
  return all.slice(Math.max(0, all.length - lines)).join("\n");
}

function tcpProbe(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => resolve(false));
  });
}


/** Whether a TCP connection to `url`'s host and port opens within 2 s. */
export function reachable(url, defaultPort) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const sock = net.connect({ host: hostname, port: Number(port || defaultPort) });
    sock.setTimeout(2_000, () => {
      sock.destroy();
      resolve(false);
    });
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => resolve(false));
  });
}

/**
 * null when `name` at `url` is reachable; else (printed) the reason to skip,
 * or, when CI is set, an error: CI has its services up.
 */
export async function serviceSkip(name, url, defaultPort) {
  if (await reachable(url, defaultPort)) return null;
  if (process.env.CI) throw new Error(`${name} at ${url} is unreachable (CI is set)`);
  const why = `SKIPPED: ${name} at ${url} is unreachable`;
  console.log(why);
  return why;
}

/**
 * Registers a `before` hook in the current suite that checks `name` at `url`
 * (see serviceSkip); returns a function giving the skip reason or null.
 */
export function skipUnlessReachable(name, url, defaultPort) {
  let why = null;
  before(async () => {
    why = await serviceSkip(name, url, defaultPort);
  });
  return () => why;
}

// ---------------------------------------------------------------------------
// AnyCable: keys, tokens, broadcasts, the @anycable/web client

/** AnyCable's broadcast key derived from `secret` (HMAC-SHA256 of "broadcast-cable"). */
export const broadcastKey = (secret) => createHmac("sha256", secret).update("broadcast-cable").digest("hex");

/** A token in AnyCable's layout: identifiers as JSON text in `ext`, `exp` in s. */
export function anycableToken(ids, ttlSeconds, secret) {
  const exp = Math.floor(Date.now() / 1000) + ttlSeconds;
  return jwt.sign({ ext: JSON.stringify(ids), exp }, secret, { algorithm: "HS256" });
}

/** POSTs `data` to `stream` by `server`'s /_broadcast with `key`; resolves with the status. */
export async function postBroadcast(server, stream, data, key, { headers = {}, meta } = {}) {
  const res = await fetch(`${server.httpUrl}/_broadcast`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}`, ...headers },
    body: JSON.stringify({ stream, data: JSON.stringify(data), ...(meta ? { meta } : {}) }),
  });
  return res.status;
}

/**
 * An @anycable/web cable (extended protocol, reconnects 100 ms apart) on a
 * `ws` subclass that records every socket it makes (`wire`: { kind:
 * "construct" | "in", data }). `origin`: the Origin header; default the
 * server's own, null for none. Other options go to createCable.
 */
export class RecordingCable {
  constructor(url, { name = "client", origin, ...options } = {}) {
    this.name = name;
    this.wire = [];
    this.sockets = [];
    const client = this;
    class RecordingWebSocket extends WebSocket {
      constructor(address, protocols, opts = {}) {
        const own = new URL(String(address)).origin.replace(/^ws/, "http");
        const headers = { ...(opts.headers || {}) };
        if (origin !== null) headers.Origin = origin ?? own;
        super(address, protocols, { ...opts, headers });
        client.sockets.push(this);
        client.wire.push({ kind: "construct", data: { address: String(address), protocols } });
        this.on("message", (d) => client.wire.push({ kind: "in", data: d.toString("utf8") }));
      }
    }
    this.cable = createCable(url, {
      protocol: "actioncable-v1-ext-json",
      websocketImplementation: RecordingWebSocket,
      reconnectStrategy: () => 100,
      logLevel: "error",
      ...options,
    });
  }

  /** The frames received, pings left out. */
  framesIn() {
    return this.wire
      .filter((w) => w.kind === "in")
      .map((w) => JSON.parse(w.data))
      .filter((f) => f.type !== "ping");
  }

  dump() {
    return `--- ${this.name} ---\n${this.wire.map((w) => `${w.kind} ${JSON.stringify(w.data)}`).join("\n")}`;
  }

  async close() {
    this.cable.disconnect();
    for (const s of this.sockets) if (s.readyState <= WebSocket.OPEN) s.terminate();
  }
}

// ---------------------------------------------------------------------------
// the chat server process

const liveServers = new Set();

process.on("exit", () => {
  for (const s of liveServers) {
    try {
      s.child.kill("SIGKILL");
    } catch {
      /* already gone */
    }
  }
});

export class ChatServer {
  constructor({ port, admin, origins, child, args }) {
    this.port = port;
    this.admin = admin;
    this.origins = origins;
    this.child = child;
    this.args = args;
    this.log = "";
    this.exit = null; // { code, signal } once exited
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.exit = { code, signal };
        liveServers.delete(this);
        resolve(this.exit);
      });
    });
    const onData = (chunk) => {
      this.log += stripAnsi(chunk.toString("utf8"));
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
  }

  get cableUrl() {
    return `ws://127.0.0.1:${this.port}/cable`;
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  get running() {
    return this.exit === null;
  }

  logTail(lines = 40) {
    return tail(this.log, lines);
  }

  /** Sends `signal` and waits for the process to exit (SIGKILL after `timeout`). */
  async stop({ signal = "SIGTERM", timeout = 15_000 } = {}) {
    if (!this.running) return { ...this.exit, killed: false };
    this.child.kill(signal);
    const timer = sleep(timeout, "timeout");
    const result = await Promise.race([this.exited, timer]);
    if (result === "timeout") {
      this.child.kill("SIGKILL");
      await this.exited;
      return { ...this.exit, killed: true };
    }
    return { ...result, killed: false };
  }

  async kill() {
    if (!this.running) return this.exit;
    this.child.kill("SIGKILL");
    return this.exited;
  }

  /** POSTs JSON to an admin endpoint; returns { status, body }. */
  post(path, json) {
    return postJson(`${this.httpUrl}${path}`, json);
  }
}

/**
 * Spawns the chat example and resolves once it is accepting connections.
 * With `env`, spawns `bin` (default cable-server) configured by those
 * variables alone: no flags, and no CABLE_* / ANYCABLE_* of this process.
 */
export async function startServer({
  port,
  admin = false,
  origins = [ORIGIN],
  readyTimeout = 20_000,
  extraArgs = [],
  env,
  bin = env ? CABLE_SERVER_BIN : CHAT_BIN,
} = {}) {
  if (!existsSync(bin)) {
    throw new Error(
      `server binary not found at ${bin}: run \`cargo build -p chat-example\` ` +
        "(or -p cable-standalone) or set CHAT_BIN / CABLE_SERVER_BIN",
    );
  }
  if (!port) port = await freePort();
  const args = [];
  if (!env) {
    args.push("--bind", `127.0.0.1:${port}`);
    for (const o of origins) args.push("--allowed-origin", o);
    if (admin) args.push("--admin");
  }
  args.push(...extraArgs);
  const childEnv = env && {
    ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(ANY)?CABLE_/.test(k))),
    ...env,
  };

  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], cwd: HERE, env: childEnv });
  const server = new ChatServer({ port, admin, origins, child, args });
  liveServers.add(server);
  child.once("error", (err) => {
    server.log += `\n[spawn error] ${err.message}\n`;
  });

  const started = Date.now();
  try {
    await waitFor(
      `chat server on port ${port} to be ready`,
      async () => {
        if (!server.running) {
          throw new Error(
            `chat server exited early (${JSON.stringify(server.exit)}) ` +
              `args=${JSON.stringify(args)}\n--- server log ---\n${server.logTail()}`,
          );
        }
        if (/listening on/i.test(server.log)) return true;
        // Fallback in case the log line is worded differently.
        if (Date.now() - started > 3_000) return tcpProbe(port);
        return false;
      },
      { timeout: readyTimeout, diag: () => `--- server log ---\n${server.logTail()}` },
    );
  } catch (err) {
    await server.kill();
    throw err;
  }
  return server;
}

export async function killAllServers() {
  await Promise.all([...liveServers].map((s) => s.kill()));
}

// ---------------------------------------------------------------------------
// the Action Cable client

let instanceCounter = 0;

/**
 * One identity = one instance of the @rails/actioncable module + one consumer.
 *
 * Options:
 *   url      the cable URL (ws://127.0.0.1:PORT/cable[?query])
 *   user     sent as `Cookie: user=NAME` (omit for no cookie)
 *   origin   the Origin header (default http://localhost:3000; null for none)
 *   name     a label for diagnostics
 */
export class CableClient {
  static async create(opts) {
    const name = opts.name ?? opts.user ?? "anonymous";
    const ActionCable = await import(`${ACTIONCABLE_ESM}?client=${++instanceCounter}-${encodeURIComponent(name)}`);
    return new CableClient(ActionCable, { ...opts, name });
  }

  constructor(ActionCable, { url, user, origin = ORIGIN, name }) {
    this.ActionCable = ActionCable;
    this.name = name;
    this.url = url;
    this.events = []; // subscription callbacks, in order: { sub, cb, arg, at }
    this.wire = []; // socket-level log: { socket, kind, data, at }
    this.sockets = [];
    this.closed = false;

    const headers = {};
    if (origin) headers.Origin = origin;
    if (user !== undefined && user !== null) headers.Cookie = `user=${user}`;
    this.headers = headers;

    const client = this;
    const SOCKET_NO = Symbol("socketNo");

    // NB: no static fields on this class: Connection#getState() enumerates
    // the adapter's enumerable statics to map readyState to a name.
    class HeaderInjectingWebSocket extends WebSocket {
      constructor(address, protocols, options = {}) {
        super(address, protocols, {
          ...options,
          headers: { ...headers, ...(options.headers || {}) },
        });
        client.sockets.push(this);
        const n = client.sockets.length;
        this[SOCKET_NO] = n;
        const rec = (kind, data) => client.wire.push({ socket: n, kind, data, at: Date.now() });
        rec("construct", { address: String(address), protocols });
        this.on("open", () => rec("open", { protocol: this.protocol }));
        this.on("message", (data, isBinary) =>
          rec(isBinary ? "in-binary" : "in", isBinary ? data.length : data.toString("utf8")),
        );
        this.on("close", (code, reason) => rec("close", { code, reason: reason.toString("utf8") }));
        this.on("error", (err) => rec("error", err.message));
        if (client.closed) this.terminate();
      }

      send(data, ...rest) {
        client.wire.push({ socket: this[SOCKET_NO], kind: "out", data: String(data), at: Date.now() });
        return super.send(data, ...rest);
      }
    }

    ActionCable.adapters.WebSocket = HeaderInjectingWebSocket;
    if (DEBUG) {
      ActionCable.logger.enabled = true;
      ActionCable.adapters.logger = {
        log: (...args) => console.error(`[${name}]`, ...args),
      };
    }
    this.consumer = ActionCable.createConsumer(url);
  }

  /** Number of WebSocket connection attempts (ws constructor calls) so far. */
  get attempts() {
    return this.sockets.length;
  }

  /** Subscribes with `params`; callbacks are recorded under `tag`. */
  subscribe(params, tag = params.room ?? params.channel) {
    const record = (cb) => (arg) => {
      const ev = { sub: tag, cb, at: Date.now() };
      if (arg !== undefined) ev.arg = arg;
      this.events.push(ev);
    };
    const subscription = this.consumer.subscriptions.create(params, {
      initialized: record("initialized"),
      connected: record("connected"),
      received: record("received"),
      rejected: record("rejected"),
      disconnected: record("disconnected"),
    });
    return subscription;
  }

  /** The recorded callbacks of one subscription as [{cb, arg?}]. */
  seq(tag) {
    return this.events
      .filter((e) => e.sub === tag)
      .map(({ cb, arg }) => (arg === undefined ? { cb } : { cb, arg }));
  }

  has(tag, cb, argPredicate = () => true) {
    return this.seq(tag).some((e) => e.cb === cb && argPredicate(e.arg));
  }

  count(tag, cb) {
    return this.seq(tag).filter((e) => e.cb === cb).length;
  }

  /** Parsed JSON frames received from the server (all sockets, in order). */
  framesIn({ socket, includePings = true } = {}) {
    return this.wire
      .filter((w) => w.kind === "in" && (socket === undefined || w.socket === socket))
      .map((w) => {
        try {
          return JSON.parse(w.data);
        } catch {
          return { unparseable: w.data };
        }
      })
      .filter((f) => includePings || f.type !== "ping");
  }

  framesOut() {
    return this.wire.filter((w) => w.kind === "out").map((w) => JSON.parse(w.data));
  }

  dump() {
    const t0 = this.wire[0]?.at ?? this.events[0]?.at ?? Date.now();
    const lines = [`--- client ${this.name} (${this.url}, headers ${JSON.stringify(this.headers)}) ---`];
    const all = [
      ...this.wire.map((w) => ({ at: w.at, text: `#${w.socket} ${w.kind} ${typeof w.data === "string" ? w.data : JSON.stringify(w.data)}` })),
      ...this.events.map((e) => ({ at: e.at, text: `callback ${e.sub}.${e.cb}(${e.arg === undefined ? "" : JSON.stringify(e.arg)})` })),
    ].sort((a, b) => a.at - b.at);
    // Pings are numerous; keep the log readable.
    let pings = 0;
    for (const { at, text } of all) {
      if (/"type":"ping"/.test(text)) {
        pings++;
        continue;
      }
      lines.push(`+${((at - t0) / 1000).toFixed(3)}s ${text}`);
    }
    if (pings) lines.push(`(${pings} ping frames omitted)`);
    return lines.join("\n");
  }

  /** Disconnects without reconnecting and makes sure no socket stays open. */
  async close() {
    this.closed = true;
    const terminateAll = () => {
      for (const s of this.sockets) {
        if (s.readyState === WebSocket.CONNECTING || s.readyState === WebSocket.OPEN) s.terminate();
      }
    };
    this.consumer.disconnect();
    terminateAll();
    // Connection#reopen() schedules open() 500 ms later; outlast it.
    await sleep(600);
    this.consumer.disconnect();
    terminateAll();
  }
}

// ---------------------------------------------------------------------------
// per-suite bookkeeping

/** Tracks servers and clients of a test suite, for cleanup and diagnostics. */
export class Scope extends BaseScope {
  async startServer(opts) {
    return this.keepServer(await startServer(opts));
  }

  async client(opts) {
    return this.keepClient(await CableClient.create(opts));
  }

  /** cable-server on a free port, configured by `env` (ANYCABLE_*) only. */
  async anycableServer(env) {
    const port = await freePort();
    return this.startServer({ port, env: { ANYCABLE_PORT: String(port), ...env } });
  }

  /**
   * A client of `url` per `user: room` entry of `rooms`, connected in that
   * order, each subscribed to ChatChannel in its room; resolves once every
   * subscription is connected, with the clients by user and `subs`, their
   * subscriptions by user.
   */
  async inRooms(url, rooms) {
    const entries = Object.entries(rooms);
    const clients = {};
    for (const [user] of entries) clients[user] = await this.client({ url, user });
    const subs = {};
    for (const [user, room] of entries) subs[user] = clients[user].subscribe({ channel: "ChatChannel", room });
    await this.waitFor(`${Object.keys(rooms).join(", ")} to be connected`, () =>
      entries.every(([user, room]) => clients[user].has(room, "connected")),
    );
    return { ...clients, subs };
  }

  serverDump(s) {
    const state = s.running ? "running" : `exited ${JSON.stringify(s.exit)}`;
    return `--- server ${s.args.join(" ")} (${state}) log tail ---\n${s.logTail()}`;
  }

  stopServer(s) {
    return s.stop({ timeout: 5_000 });
  }
}
