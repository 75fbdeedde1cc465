// What the SSE suites share (sse.test.mjs, nginx.test.mjs): an EventSource
// from the `eventsource` package that records what it gets, a TCP proxy that
// can cut connections, AnyCable's signed stream names, and the chat room
// heard over SSE.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import net from "node:net";

import { EventSource } from "eventsource";

import { ORIGIN, Scope, freePort } from "./helpers.mjs";

export { EventSource };

/** The secret cable-server is given by SseScope.cableServer. */
export const SSE_SECRET = "sse-test-secret-1234";

/** AnyCable's signed stream name: base64(JSON name) "--" hex HMAC-SHA256. */
export function signedStream(name, secret = SSE_SECRET) {
  const encoded = Buffer.from(JSON.stringify(name)).toString("base64");
  return `${encoded}--${createHmac("sha256", secret).update(encoded).digest("hex")}`;
}

/**
 * An EventSource that records what it gets: `messages` (the data of
 * message events, parsed, with their ids), `events` (named events by type),
 * `errors`. `headers` go on every request it makes (reconnects included).
 */
export class RecordingSource {
  constructor(url, { headers = {}, method = "GET", body } = {}) {
    this.messages = [];
    this.events = [];
    this.errors = 0;
    this.opened = 0;
    this.source = new EventSource(url, {
      fetch: (input, init) =>
        fetch(input, { ...init, method, body, headers: { ...init.headers, ...headers } }),
    });
    this.source.addEventListener("open", () => this.opened++);
    this.source.addEventListener("error", () => this.errors++);
    this.source.addEventListener("message", (e) => this.messages.push({ data: JSON.parse(e.data), id: e.lastEventId }));
    for (const type of ["welcome", "confirm_subscription", "reject_subscription", "confirm_history", "reject_history", "disconnect"]) {
      this.source.addEventListener(type, (e) => this.events.push({ type, data: JSON.parse(e.data) }));
    }
  }

  has(type) {
    return this.events.some((e) => e.type === type);
  }

  close() {
    this.source.close();
  }
}

/** A TCP proxy to `port` whose connections `cut()` destroys at once. */
export class CuttingProxy {
  static async start(port) {
    const proxy = new CuttingProxy();
    proxy.sockets = new Set();
    proxy.server = net.createServer((client) => {
      const upstream = net.connect(port, "127.0.0.1");
      for (const s of [client, upstream]) {
        proxy.sockets.add(s);
        s.on("close", () => proxy.sockets.delete(s));
        s.on("error", () => {});
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    proxy.port = await freePort();
    await new Promise((ok) => proxy.server.listen(proxy.port, "127.0.0.1", ok));
    return proxy;
  }

  cut() {
    for (const s of this.sockets) s.destroy();
  }

  close() {
    this.cut();
    this.server.close();
  }
}

export class SseScope extends Scope {
  constructor() {
    super();
    this.sources = [];
    this.proxies = [];
  }

  source(url, options) {
    const s = new RecordingSource(url, options);
    this.sources.push(s);
    return s;
  }

  async closeAll() {
    for (const s of this.sources.splice(0)) s.close();
    for (const p of this.proxies.splice(0)) p.close();
    await super.closeAll();
  }

  cableServer() {
    return this.anycableServer({
      ANYCABLE_SECRET: SSE_SECRET,
      ANYCABLE_PUBLIC_STREAMS: "true",
      ANYCABLE_BROADCAST_ADAPTER: "http",
      ANYCABLE_SSE: "true",
      CABLE_HISTORY_ALL_STREAMS: "true",
    });
  }
}

/**
 * The chat example at `base` (`http://host:port`, directly or through a
 * proxy): an EventSource subscribed by channel and params hears what a
 * @rails/actioncable client says in the room.
 */
export async function chatOverSse(scope, base, cableUrl) {
  const params = encodeURIComponent(JSON.stringify({ room: "lobby" }));
  const sse = scope.source(`${base}/events?user=eve&channel=ChatChannel&params=${params}`, {
    headers: { Origin: ORIGIN },
  });
  await scope.waitFor("subscribed by channel", () => sse.has("confirm_subscription"));
  const alice = await scope.client({ url: cableUrl, user: "alice" });
  const sub = alice.subscribe({ channel: "ChatChannel", room: "lobby" });
  await scope.waitFor("alice in the room", () => alice.has("lobby", "connected"));
  sub.perform("speak", { body: "over sse" });
  await scope.waitFor("eve heard it", () => sse.messages.length >= 1);
  assert.deepEqual(sse.messages[0].data, { user: "alice", body: "over sse" });
  assert.match(sse.messages[0].id, /^\d+\/[^/]+\/chat_lobby$/, "the room keeps history for SSE");
}

