// AnyCable's broadcast intakes, with the unmodified @anycable/web client
// against cable-server configured by ANYCABLE_* variables alone:
// - POST /_broadcast with X-Socket-ID (AnyCable's to_others) reaches every
//   subscriber but that session;
// - `redis-cli PUBLISH __anycable__ <json>` (broadcast_adapter redis);
// - `redis-cli XADD __anycable__ * payload <json>` on two nodes sharing
//   Redis (pubsub redis, broadcast_adapter redisx): received once by each
//   subscriber on each node, not once per node.
// Two nodes on NATS (ANYCABLE_PUBSUB=nats) pass a /_broadcast between them,
// and a raw NATS publish on the broadcaster's subject (broadcast_adapter
// nats) reaches a subscriber on each node once.
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
import net from "node:net";
import { after, describe, it } from "node:test";

import {
  RecordingCable,
  Scope,
  broadcastKey,
  killAllServers,
  postBroadcast,
  skipUnlessReachable,
  sleep,
} from "./helpers.mjs";

const SECRET = "anycable-test-secret-1234";
const BROADCAST_KEY = broadcastKey(SECRET);
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const NATS_URL = process.env.NATS_URL || "nats://127.0.0.1:4222";
// Unique per run: parallel runs share Redis.
const TAG = `${process.pid}_${Date.now()}`;

after(killAllServers);

/** A recording @anycable/web cable that keeps what its stream receives. */
class Client extends RecordingCable {
  constructor(url, name) {
    super(url, { name });
    this.got = [];
  }

  /** Streams from public stream `stream`, recording what arrives. */
  listen(stream) {
    const channel = this.cable.streamFrom(stream);
    channel.on("message", (m) => this.got.push(m));
    return channel;
  }

  subscribed() {
    return this.framesIn().some((f) => f.type === "confirm_subscription");
  }

  dump() {
    return `${super.dump()}\ngot ${JSON.stringify(this.got)}`;
  }
}

class BroadcastScope extends Scope {
  client(url, name) {
    return this.keepClient(new Client(url, name));
  }

  /** A client per [url, name] of `who`, listening to `stream`; resolves once all are subscribed. */
  async listening(stream, ...who) {
    const clients = who.map(([url, name]) => this.client(url, name));
    for (const c of clients) c.listen(stream);
    await this.waitFor(`${who.map(([, name]) => name).join(", ")} subscribed`, () =>
      clients.every((c) => c.subscribed()),
    );
    return clients;
  }
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

/**
 * Publishes `payload` on `subject` with the NATS protocol itself (what
 * `nats pub` sends): CONNECT, PUB, then PING; resolves on the PONG, which
 * the server sends only after it has handled the PUB.
 */
function natsPublish(url, subject, payload) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port || 4222), hostname);
    let seen = "";
    let sent = false;
    socket.on("error", reject);
    socket.on("data", (chunk) => {
      seen += chunk;
      if (!sent && seen.includes("INFO ")) {
        sent = true;
        const size = Buffer.byteLength(payload);
        socket.write(`CONNECT {"verbose":false}\r\nPUB ${subject} ${size}\r\n${payload}\r\nPING\r\n`);
      }
      if (seen.includes("-ERR")) reject(new Error(`nats: ${seen}`));
      if (seen.includes("PONG")) {
        socket.end();
        resolve();
      }
    });
  });
}

/**
 * Suite `title` of one test, `test(scope)`, that needs `service` ([name, url,
 * port]): skipped when that is unreachable (CI fails instead).
 */
function testNeeding(title, [name, url, port], testTitle, timeout, test) {
  describe(title, () => {
    const scope = new BroadcastScope();
    scope.closeAfterEach();
    const skip = skipUnlessReachable(name, url, port);
    it(
      testTitle,
      { timeout },
      scope.wrap((t) => (skip() ? t.skip(skip()) : test(scope))),
    );
  });
}
const REDIS = ["Redis", REDIS_URL, 6379];

describe("POST /_broadcast with X-Socket-ID (to_others), @anycable/web", () => {
  const scope = new BroadcastScope();
  scope.closeAfterEach();

  it(
    "reaches the other client and not the session named in X-Socket-ID",
    { timeout: 30_000 },
    scope.wrap(async () => {
      const server = await scope.anycableServer({
        ANYCABLE_SECRET: SECRET,
        ANYCABLE_PUBLIC_STREAMS: "true",
        ANYCABLE_BROADCAST_ADAPTER: "http",
      });
      const stream = `others_${TAG}`;
      const [a, b] = await scope.listening(stream, [server.cableUrl, "A"], [server.cableUrl, "B"]);
      const welcome = a.framesIn().find((f) => f.type === "welcome");
      assert.ok(welcome?.sid, JSON.stringify(welcome));
      // What @anycable/turbo-stream sends as X-Socket-ID.
      assert.equal(a.cable.sessionId, welcome.sid);
      const post = (data, headers = {}) =>
        postBroadcast(server, stream, data, BROADCAST_KEY, { headers, meta: { broadcast_type: "turbo" } });
      assert.equal(await post({ n: 1 }, { "X-Socket-ID": a.cable.sessionId }), 201);
      // To everyone: once it is in, anything for A would have come before.
      assert.equal(await post({ n: 2 }), 201);
      await scope.waitFor("both got n 2", () => a.got.length >= 1 && b.got.length >= 2);
      assert.deepEqual(b.got, [{ n: 1 }, { n: 2 }]);
      assert.deepEqual(a.got, [{ n: 2 }]);
    }),
  );
});

testNeeding(
  "redis-cli PUBLISH __anycable__ (ANYCABLE_BROADCAST_ADAPTER=redis)",
  REDIS,
  "reaches a subscriber of the stream",
  30_000,
  async (scope) => {
    const server = await scope.anycableServer({
      ANYCABLE_REDIS_URL: REDIS_URL,
      ANYCABLE_PUBLIC_STREAMS: "true",
      ANYCABLE_BROADCAST_ADAPTER: "redis",
    });
    await scope.waitFor("the intake subscribed", () =>
      /receiving broadcasts from channel __anycable__/.test(server.log),
    );
    const stream = `legacy_${TAG}`;
    const [c] = await scope.listening(stream, [server.cableUrl, "C"]);
    const json = JSON.stringify({ stream, data: JSON.stringify({ via: "redis" }) });
    const receivers = await redisCli("PUBLISH", "__anycable__", json);
    assert.ok(Number(receivers) >= 1, `PUBLISH reached ${receivers} subscribers`);
    await scope.waitFor("the message", () => c.got.length === 1);
    assert.deepEqual(c.got, [{ via: "redis" }]);
  },
);

testNeeding(
  "redis-cli XADD __anycable__ on two nodes (ANYCABLE_PUBSUB=redis, BROADCAST_ADAPTER=redisx)",
  REDIS,
  "is received exactly once by a subscriber on each node, then acknowledged and deleted",
  40_000,
  async (scope) => {
    const env = {
      ANYCABLE_REDIS_URL: REDIS_URL,
      ANYCABLE_PUBSUB: "redis",
      ANYCABLE_PUBLIC_STREAMS: "true",
      ANYCABLE_BROADCAST_ADAPTER: "redisx",
    };
    const nodeA = await scope.anycableServer(env);
    const nodeB = await scope.anycableServer(env);
    // The group reads from its creation on: wait for both consumers.
    for (const s of [nodeA, nodeB]) {
      await scope.waitFor("the redisx intake up", () =>
        /receiving broadcasts from stream __anycable__ \(group bx/.test(s.log),
      );
    }
    const stream = `redisx_${TAG}`;
    const [a, b] = await scope.listening(stream, [nodeA.cableUrl, "on A"], [nodeB.cableUrl, "on B"]);
    const json = JSON.stringify({ stream, data: JSON.stringify({ via: "redisx" }) });
    const id = await redisCli("XADD", "__anycable__", "*", "payload", json);
    assert.match(id, /^\d+-\d+$/);
    await scope.waitFor("both got it", () => a.got.length >= 1 && b.got.length >= 1);
    // Past the block and claim time (2 s): no node handles it again.
    await sleep(2_500);
    assert.deepEqual(a.got, [{ via: "redisx" }]);
    assert.deepEqual(b.got, [{ via: "redisx" }]);
    assert.equal(await redisCli("XRANGE", "__anycable__", id, id), "", "the entry is deleted");
  },
);

testNeeding(
  "two nodes on NATS (ANYCABLE_PUBSUB=nats, ANYCABLE_NATS_SERVERS)",
  ["NATS", NATS_URL, 4222],
  "a /_broadcast on node A reaches a subscriber on node B once",
  30_000,
  async (scope) => {
    const env = {
      ANYCABLE_SECRET: SECRET,
      ANYCABLE_PUBSUB: "nats",
      ANYCABLE_NATS_SERVERS: NATS_URL,
      ANYCABLE_PUBLIC_STREAMS: "true",
      ANYCABLE_BROADCAST_ADAPTER: "http",
    };
    const nodeA = await scope.anycableServer(env);
    const nodeB = await scope.anycableServer(env);
    const stream = `nats_${TAG}`;
    const [b] = await scope.listening(stream, [nodeB.cableUrl, "on B"]);
    assert.equal(await postBroadcast(nodeA, stream, { via: "nats" }, BROADCAST_KEY), 201);
    await scope.waitFor("B got it", () => b.got.length >= 1);
    await sleep(500);
    assert.deepEqual(b.got, [{ via: "nats" }]);
  },
);

testNeeding(
  "a raw NATS publish on two nodes (ANYCABLE_PUBSUB=nats, BROADCAST_ADAPTER=nats)",
  ["NATS", NATS_URL, 4222],
  "is received exactly once by a subscriber on each node",
  30_000,
  async (scope) => {
    const subject = `cable_it_${TAG}.__anycable__`;
    const env = {
      ANYCABLE_PUBSUB: "nats",
      ANYCABLE_NATS_SERVERS: NATS_URL,
      ANYCABLE_PUBLIC_STREAMS: "true",
      ANYCABLE_BROADCAST_ADAPTER: "nats",
      ANYCABLE_NATS_CHANNEL: subject,
    };
    const nodeA = await scope.anycableServer(env);
    const nodeB = await scope.anycableServer(env);
    for (const s of [nodeA, nodeB]) {
      await scope.waitFor("the nats intake subscribed", () =>
        s.log.includes(`receiving broadcasts from subject ${subject}`),
      );
    }
    const stream = `nats_intake_${TAG}`;
    const [a, b] = await scope.listening(stream, [nodeA.cableUrl, "on A"], [nodeB.cableUrl, "on B"]);
    await natsPublish(NATS_URL, subject, JSON.stringify({ stream, data: JSON.stringify({ via: "nats" }) }));
    await scope.waitFor("both got it", () => a.got.length >= 1 && b.got.length >= 1);
    await sleep(500);
    assert.deepEqual(a.got, [{ via: "nats" }]);
    assert.deepEqual(b.got, [{ via: "nats" }]);
  },
);
