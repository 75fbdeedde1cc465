// AnyCable's broadcast intakes, with the unmodified @anycable/web client
// against cable-server configured by ANYCABLE_* variables alone:
// - POST /_broadcast with X-Socket-ID (AnyCable's to_others) reaches every
//   subscriber but that session;
// - `redis-cli PUBLISH __anycable__ <json>` (broadcast_adapter redis);
// - `redis-cli XADD __anycable__ * payload <json>` on two nodes sharing
//   Redis (pubsub redis, broadcast_adapter redisx): received once by each
//   subscriber on each node, not once per node.
// Two nodes on NATS (ANYCABLE_PUBSUB=nats) pass a /_broadcast between them.
// The Redis and NATS ones are SKIPPED when the server is unreachable, unless
// CI is set.
//
//   cargo build -p cable-standalone --bin cable-server
//   cd tests/node && npm ci && node --test anycable_broadcast.test.mjs
//
// Env: CABLE_SERVER_BIN overrides the server binary; REDIS_URL (default
// redis://127.0.0.1:6379).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import net from "node:net";
import { after, before, describe, it } from "node:test";
import WebSocket from "ws";
import { createCable } from "@anycable/web";

import { Scope, freePort, killAllServers, sleep, startServer } from "./helpers.mjs";

const SECRET = "anycable-test-secret-1234";
const BROADCAST_KEY = createHmac("sha256", SECRET).update("broadcast-cable").digest("hex");
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const NATS_URL = process.env.NATS_URL || "nats://127.0.0.1:4222";
// Unique per run: parallel runs share Redis.
const TAG = `${process.pid}_${Date.now()}`;

after(killAllServers);

/** An @anycable/web cable that records the frames it receives. */
class Client {
  constructor(url, name) {
    this.name = name;
    this.wire = [];
    this.sockets = [];
    const client = this;
    class RecordingWebSocket extends WebSocket {
      constructor(address, protocols, opts = {}) {
        const origin = new URL(String(address)).origin.replace(/^ws/, "http");
        super(address, protocols, { ...opts, headers: { Origin: origin, ...(opts.headers || {}) } });
        client.sockets.push(this);
        this.on("message", (d) => client.wire.push(d.toString("utf8")));
      }
    }
    this.cable = createCable(url, {
      protocol: "actioncable-v1-ext-json",
      websocketImplementation: RecordingWebSocket,
      reconnectStrategy: () => 100,
      logLevel: "error",
    });
    this.got = [];
  }

  /** Streams from public stream `stream`, recording what arrives. */
  listen(stream) {
    const channel = this.cable.streamFrom(stream);
    channel.on("message", (m) => this.got.push(m));
    return channel;
  }

  framesIn() {
    return this.wire.map((w) => JSON.parse(w)).filter((f) => f.type !== "ping");
  }

  subscribed() {
    return this.framesIn().some((f) => f.type === "confirm_subscription");
  }

  dump() {
    return `--- ${this.name} ---\n${this.wire.join("\n")}\ngot ${JSON.stringify(this.got)}`;
  }

  async close() {
    this.cable.disconnect();
    for (const s of this.sockets) if (s.readyState <= WebSocket.OPEN) s.terminate();
  }
}

class BroadcastScope extends Scope {
  client(url, name) {
    return this.keepClient(new Client(url, name));
  }

  /** cable-server on a free port, configured by `env` (ANYCABLE_*) only. */
  async server(env) {
    const port = await freePort();
    return this.keepServer(await startServer({ port, env: { ANYCABLE_PORT: String(port), ...env } }));
  }
}

/** Whether a TCP connection to `url`'s host and port opens within 2 s. */
function reachable(url, defaultPort) {
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

/** Runs `redis-cli -u REDIS_URL ...args`; resolves with its output. */
function redisCli(...args) {
  return new Promise((resolve, reject) => {
    const child = spawn("redis-cli", ["-u", REDIS_URL, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.once("error", reject);
    child.once("exit", (code) =>
      code === 0 ? resolve(out.trim()) : reject(new Error(`redis-cli ${args.join(" ")}: ${code} ${err}`)),
    );
  });
}

/** The skip reason when Redis is unreachable (a failure under CI), else null. */
async function serviceSkip(name, url, port) {
  if (await reachable(url, port)) return null;
  if (process.env.CI) throw new Error(`${name} at ${url} is unreachable (CI is set)`);
  const why = `SKIPPED: ${name} at ${url} is unreachable`;
  console.log(why);
  return why;
}
const redisSkip = () => serviceSkip("Redis", REDIS_URL, 6379);

describe("POST /_broadcast with X-Socket-ID (to_others), @anycable/web", () => {
  const scope = new BroadcastScope();
  scope.closeAfterEach();

  it(
    "reaches the other client and not the session named in X-Socket-ID",
    { timeout: 30_000 },
    scope.wrap(async () => {
      const server = await scope.server({
        ANYCABLE_SECRET: SECRET,
        ANYCABLE_PUBLIC_STREAMS: "true",
        ANYCABLE_BROADCAST_ADAPTER: "http",
      });
      const stream = `others_${TAG}`;
      const a = scope.client(server.cableUrl, "A");
      const b = scope.client(server.cableUrl, "B");
      a.listen(stream);
      b.listen(stream);
      await scope.waitFor("both subscribed", () => a.subscribed() && b.subscribed());
      const welcome = a.framesIn().find((f) => f.type === "welcome");
      assert.ok(welcome?.sid, JSON.stringify(welcome));
      // What @anycable/turbo-stream sends as X-Socket-ID.
      assert.equal(a.cable.sessionId, welcome.sid);
      const post = (data, headers = {}) =>
        fetch(`${server.httpUrl}/_broadcast`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${BROADCAST_KEY}`, ...headers },
          body: JSON.stringify({ stream, data: JSON.stringify(data), meta: { broadcast_type: "turbo" } }),
        });
      assert.equal((await post({ n: 1 }, { "X-Socket-ID": a.cable.sessionId })).status, 201);
      // To everyone: once it is in, anything for A would have come before.
      assert.equal((await post({ n: 2 })).status, 201);
      await scope.waitFor("both got n 2", () => a.got.length >= 1 && b.got.length >= 2);
      assert.deepEqual(b.got, [{ n: 1 }, { n: 2 }]);
      assert.deepEqual(a.got, [{ n: 2 }]);
    }),
  );
});

describe("redis-cli PUBLISH __anycable__ (ANYCABLE_BROADCAST_ADAPTER=redis)", () => {
  const scope = new BroadcastScope();
  scope.closeAfterEach();
  let skip = null;
  before(async () => {
    skip = await redisSkip();
  });

  it(
    "reaches a subscriber of the stream",
    { timeout: 30_000 },
    scope.wrap(async (t) => {
      if (skip) return t.skip(skip);
      const server = await scope.server({
        ANYCABLE_REDIS_URL: REDIS_URL,
        ANYCABLE_PUBLIC_STREAMS: "true",
        ANYCABLE_BROADCAST_ADAPTER: "redis",
      });
      await scope.waitFor("the intake subscribed", () =>
        /receiving broadcasts from channel __anycable__/.test(server.log),
      );
      const stream = `legacy_${TAG}`;
      const c = scope.client(server.cableUrl, "C");
      c.listen(stream);
      await scope.waitFor("subscribed", () => c.subscribed());
      const json = JSON.stringify({ stream, data: JSON.stringify({ via: "redis" }) });
      const receivers = await redisCli("PUBLISH", "__anycable__", json);
      assert.ok(Number(receivers) >= 1, `PUBLISH reached ${receivers} subscribers`);
      await scope.waitFor("the message", () => c.got.length === 1);
      assert.deepEqual(c.got, [{ via: "redis" }]);
    }),
  );
});

describe("redis-cli XADD __anycable__ on two nodes (ANYCABLE_PUBSUB=redis, BROADCAST_ADAPTER=redisx)", () => {
  const scope = new BroadcastScope();
  scope.closeAfterEach();
  let skip = null;
  before(async () => {
    skip = await redisSkip();
  });

  it(
    "is received exactly once by a subscriber on each node, then acknowledged and deleted",
    { timeout: 40_000 },
    scope.wrap(async (t) => {
      if (skip) return t.skip(skip);
      const env = {
        ANYCABLE_REDIS_URL: REDIS_URL,
        ANYCABLE_PUBSUB: "redis",
        ANYCABLE_PUBLIC_STREAMS: "true",
        ANYCABLE_BROADCAST_ADAPTER: "redisx",
      };
      const nodeA = await scope.server(env);
      const nodeB = await scope.server(env);
      // The group reads from its creation on: wait for both consumers.
      for (const s of [nodeA, nodeB]) {
        await scope.waitFor("the redisx intake up", () =>
          /receiving broadcasts from stream __anycable__ \(group bx/.test(s.log),
        );
      }
      const stream = `redisx_${TAG}`;
      const a = scope.client(nodeA.cableUrl, "on A");
      const b = scope.client(nodeB.cableUrl, "on B");
      a.listen(stream);
      b.listen(stream);
      await scope.waitFor("both subscribed", () => a.subscribed() && b.subscribed());
      const json = JSON.stringify({ stream, data: JSON.stringify({ via: "redisx" }) });
      const id = await redisCli("XADD", "__anycable__", "*", "payload", json);
      assert.match(id, /^\d+-\d+$/);
      await scope.waitFor("both got it", () => a.got.length >= 1 && b.got.length >= 1);
      // Past the block and claim time (2 s): no node handles it again.
      await sleep(2_500);
      assert.deepEqual(a.got, [{ via: "redisx" }]);
      assert.deepEqual(b.got, [{ via: "redisx" }]);
      assert.equal(await redisCli("XRANGE", "__anycable__", id, id), "", "the entry is deleted");
    }),
  );
});

describe("two nodes on NATS (ANYCABLE_PUBSUB=nats, ANYCABLE_NATS_SERVERS)", () => {
  const scope = new BroadcastScope();
  scope.closeAfterEach();
  let skip = null;
  before(async () => {
    skip = await serviceSkip("NATS", NATS_URL, 4222);
  });

  it(
    "a /_broadcast on node A reaches a subscriber on node B once",
    { timeout: 30_000 },
    scope.wrap(async (t) => {
      if (skip) return t.skip(skip);
      const env = {
        ANYCABLE_SECRET: SECRET,
        ANYCABLE_PUBSUB: "nats",
        ANYCABLE_NATS_SERVERS: NATS_URL,
        ANYCABLE_PUBLIC_STREAMS: "true",
        ANYCABLE_BROADCAST_ADAPTER: "http",
      };
      const nodeA = await scope.server(env);
      const nodeB = await scope.server(env);
      const stream = `nats_${TAG}`;
      const b = scope.client(nodeB.cableUrl, "on B");
      b.listen(stream);
      await scope.waitFor("subscribed on B", () => b.subscribed());
      const res = await fetch(`${nodeA.httpUrl}/_broadcast`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${BROADCAST_KEY}` },
        body: JSON.stringify({ stream, data: JSON.stringify({ via: "nats" }) }),
      });
      assert.equal(res.status, 201);
      await scope.waitFor("B got it", () => b.got.length >= 1);
      await sleep(500);
      assert.deepEqual(b.got, [{ via: "nats" }]);
    }),
  );
});
