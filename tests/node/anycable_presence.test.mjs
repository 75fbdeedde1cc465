// Presence and whispers with the unmodified @anycable/web client, against
// cable-server configured by environment variables alone: on one node
// (the memory broker), clients on `$pubsub` streams see each other join and
// leave (`channel.presence`), `presence.info()` lists who is there, and a
// whisper reaches the others and not the sender (public streams always;
// signed ones only with ANYCABLE_STREAMS_WHISPER). Across two nodes sharing
// Redis (ANYCABLE_PUBSUB=redis, ANYCABLE_BROKER=redis) and two sharing
// PostgreSQL (CABLE_ADAPTER / CABLE_BROKER postgres://), a client joining on
// node 1 is seen on node 2, and one that goes away leaves after the presence
// TTL. Clients are identified by JWTs made by `jsonwebtoken` in AnyCable's
// layout.
//
//   cargo build -p cable-standalone --bin cable-server
//   cd tests/node && npm ci && node --test anycable_presence.test.mjs
//
// Env: CABLE_SERVER_BIN overrides the server binary; REDIS_URL,
// DATABASE_URL and NATS_URL (defaults on 127.0.0.1) name the backends, whose tests print
// SKIPPED when they are unreachable, unless CI is set.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, afterEach, before, describe, it } from "node:test";

import {
  RecordingCable,
  Scope,
  anycableToken,
  broadcastKey,
  killAllServers,
  postBroadcast,
  serviceSkip,
  sleep,
} from "./helpers.mjs";

const SECRET = "anycable-presence-secret-1234";
const BROADCAST_KEY = broadcastKey(SECRET);
// Unique per run: parallel runs may share the backends.
const TAG = `${process.pid}_${Date.now()}`;

after(killAllServers);

/** AnyCable's signed stream name: base64(JSON(name)) + "--" + hex HMAC-SHA256. */
function signed(name) {
  const encoded = Buffer.from(JSON.stringify(name)).toString("base64");
  return `${encoded}--${createHmac("sha256", SECRET).update(encoded).digest("hex")}`;
}

async function broadcast(server, stream, data) {
  assert.equal(await postBroadcast(server, stream, data, BROADCAST_KEY), 201, "broadcast accepted");
}

/** A recording @anycable/web cable for `user`, identified by a JWT. */
class Client extends RecordingCable {
  constructor(url, user) {
    super(url, { name: user, auth: { token: anycableToken({ user_id: user }, 600, SECRET) } });
    this.user = user;
  }

  /** The `info` replies the server sent. */
  infoReplies() {
    return this.framesIn().filter((f) => f.type === "presence" && f.message?.type === "info").map((f) => f.message);
  }

  /** Subscribes to `name` (signed with `{signed: true}`), recording what comes. */
  async stream(name, { signed: isSigned = false } = {}) {
    const channel = isSigned ? this.cable.streamFromSigned(signed(name)) : this.cable.streamFrom(name);
    const sub = { channel, messages: [], presence: [] };
    channel.on("message", (m) => sub.messages.push(m));
    channel.on("presence", (e) => sub.presence.push(e));
    await channel.ensureSubscribed();
    return sub;
  }
}

class PresenceScope extends Scope {
  client(server, user) {
    return this.keepClient(new Client(server.cableUrl, user));
  }

  /** cable-server on a free port, configured by `env` only. */
  server(env) {
    return this.anycableServer({
      ANYCABLE_SECRET: SECRET,
      ANYCABLE_PUBLIC_STREAMS: "true",
      ANYCABLE_BROADCAST_ADAPTER: "http",
      ...env,
    });
  }
}

const joined = (sub, id) => sub.presence.some((e) => e.type === "join" && e.id === id);
const left = (sub, id) => sub.presence.some((e) => e.type === "leave" && e.id === id);

describe("presence and whispers on one node, with @anycable/web", () => {
  const scope = new PresenceScope();
  let server;
  let whispering;

  before(async () => {
    server = await scope.server({});
    whispering = await scope.server({ ANYCABLE_STREAMS_WHISPER: "true" });
  });
  afterEach(() => scope.closeClients());
  after(() => scope.closeAll());

  it(
    "a join is seen by the other client, info() lists the members on both, a leave is seen",
    { timeout: 30_000 },
    scope.wrap(async () => {
      const room = `presence_room_${TAG}`;
      const ann = scope.client(server, "ann");
      const bob = scope.client(server, "bob");
      const a = await ann.stream(room);
      const b = await bob.stream(room);
      assert.deepEqual(await b.channel.presence.info(), {}, "nobody there yet");

      await a.channel.presence.join("ann", { name: "Ann" });
      await scope.waitFor("bob sees ann join", () => joined(b, "ann"));
      assert.deepEqual(b.presence.find((e) => e.type === "join"), { type: "join", id: "ann", info: { name: "Ann" } });
      await scope.waitFor("ann sees her own join too", () => joined(a, "ann"));
      assert.deepEqual(await a.channel.presence.info(), { ann: { name: "Ann" } });
      assert.deepEqual(await b.channel.presence.info(), { ann: { name: "Ann" } });
      assert.deepEqual(ann.infoReplies().at(-1), { type: "info", total: 1, records: [{ id: "ann", info: { name: "Ann" } }] });

      await b.channel.presence.join("bob", { name: "Bob" });
      await scope.waitFor("ann sees bob join", () => joined(a, "bob"));
      // A third client asks the server afresh: both, oldest first.
      const cy = scope.client(server, "cy");
      const c = await cy.stream(room);
      assert.deepEqual(await c.channel.presence.info(), { ann: { name: "Ann" }, bob: { name: "Bob" } });
      assert.deepEqual(cy.infoReplies().at(-1), {
        type: "info",
        total: 2,
        records: [
          { id: "ann", info: { name: "Ann" } },
          { id: "bob", info: { name: "Bob" } },
        ],
      });

      await a.channel.presence.leave();
      await scope.waitFor("bob sees ann leave", () => left(b, "ann"));
      assert.deepEqual(b.presence.find((e) => e.type === "leave"), { type: "leave", id: "ann" });
      assert.deepEqual(await b.channel.presence.info(), { bob: { name: "Bob" } }, "kept up to date by the events");
      const dan = scope.client(server, "dan");
      const d = await dan.stream(room);
      assert.deepEqual(await d.channel.presence.info(), { bob: { name: "Bob" } });
      assert.deepEqual(dan.infoReplies().at(-1), { type: "info", total: 1, records: [{ id: "bob", info: { name: "Bob" } }] });
    }),
  );

  /** ann whispers on `sub`s of ann and bob; then a broadcast fences what came. */
  async function whisperAndFence(srv, stream, a, b) {
    await a.channel.whisper({ event: "typing", user: "ann" });
    await sleep(300);
    await broadcast(srv, stream, { fence: true });
    await scope.waitFor("the fence on both", () =>
      [a, b].every((s) => s.messages.some((m) => m.fence)),
    );
  }

  it(
    "a whisper on a public stream reaches the other client, not the sender",
    { timeout: 30_000 },
    scope.wrap(async () => {
      const room = `whisper_public_${TAG}`;
      const a = await scope.client(server, "ann").stream(room);
      const b = await scope.client(server, "bob").stream(room);
      await whisperAndFence(server, room, a, b);
      assert.deepEqual(b.messages, [{ event: "typing", user: "ann" }, { fence: true }]);
      assert.deepEqual(a.messages, [{ fence: true }], "not echoed to the sender");
    }),
  );

  it(
    "on a signed stream a whisper is refused, unless ANYCABLE_STREAMS_WHISPER is set",
    { timeout: 30_000 },
    scope.wrap(async () => {
      const room = `whisper_signed_${TAG}`;
      const a = await scope.client(server, "ann").stream(room, { signed: true });
      const b = await scope.client(server, "bob").stream(room, { signed: true });
      await whisperAndFence(server, room, a, b);
      assert.deepEqual(b.messages, [{ fence: true }], "no whisper without streams_whisper");
      assert.deepEqual(a.messages, [{ fence: true }]);

      const a2 = await scope.client(whispering, "ann").stream(room, { signed: true });
      const b2 = await scope.client(whispering, "bob").stream(room, { signed: true });
      await whisperAndFence(whispering, room, a2, b2);
      assert.deepEqual(b2.messages, [{ event: "typing", user: "ann" }, { fence: true }]);
      assert.deepEqual(a2.messages, [{ fence: true }]);
    }),
  );
});

const TTL_SECONDS = 2;

const BACKENDS = [
  [
    "Redis (ANYCABLE_PUBSUB=redis, ANYCABLE_BROKER=redis)",
    process.env.REDIS_URL || "redis://127.0.0.1:6379",
    6379,
    (url) => ({ ANYCABLE_PUBSUB: "redis", ANYCABLE_BROKER: "redis", ANYCABLE_REDIS_URL: url }),
    "redis",
  ],
  [
    "PostgreSQL (CABLE_ADAPTER and CABLE_BROKER postgres://)",
    process.env.DATABASE_URL || "postgres://postgres@127.0.0.1:5432/test",
    5432,
    (url) => ({ CABLE_ADAPTER: url, CABLE_BROKER: url }),
    "postgres",
  ],
  [
    "NATS JetStream (ANYCABLE_PUBSUB=nats, ANYCABLE_BROKER=nats)",
    process.env.NATS_URL || "nats://127.0.0.1:4222",
    4222,
    (url) => ({ ANYCABLE_PUBSUB: "nats", ANYCABLE_BROKER: "nats", ANYCABLE_NATS_SERVERS: url }),
    "nats",
  ],
];

for (const [backend, url, defaultPort, env, logName] of BACKENDS) {
  describe(`presence across two cable-server nodes on ${backend}`, () => {
    const scope = new PresenceScope();
    let one;
    let two;
    let skip = null;

    before(async () => {
      skip = await serviceSkip(backend, url, defaultPort);
      if (skip) return;
      // A short TTL, and heartbeats (which renew and sweep) every second.
      const nodeEnv = { ...env(url), ANYCABLE_PRESENCE_TTL: String(TTL_SECONDS), ANYCABLE_PING_INTERVAL: "1" };
      one = await scope.server(nodeEnv);
      two = await scope.server(nodeEnv);
    });
    afterEach(() => scope.closeClients());
    after(() => scope.closeAll());

    it(
      "a join on node 1 is seen on node 2, and a client gone from node 1 leaves after the TTL",
      { timeout: 60_000 },
      scope.wrap(async (t) => {
        if (skip) return t.skip(skip);
        const room = `presence_nodes_${logName}_${TAG}`;
        const ann = scope.client(one, "ann");
        const bob = scope.client(two, "bob");
        const a = await ann.stream(room);
        const b = await bob.stream(room);

        await a.channel.presence.join("ann", { name: "Ann", node: 1 });
        await scope.waitFor("bob on node 2 sees ann join on node 1", () => joined(b, "ann"));
        assert.deepEqual(await b.channel.presence.info(), { ann: { name: "Ann", node: 1 } });
        assert.deepEqual(bob.infoReplies().at(-1), {
          type: "info",
          total: 1,
          records: [{ id: "ann", info: { name: "Ann", node: 1 } }],
        }, "node 2 read node 1's join from the shared broker");

        await b.channel.presence.join("bob", { name: "Bob", node: 2 });
        await scope.waitFor("ann on node 1 sees bob join", () => joined(a, "bob"));
        // Renewed by its node's heartbeats, ann stays well past the TTL.
        await sleep(TTL_SECONDS * 1000 + 1500);
        assert.ok(!left(b, "ann"), `ann stays while connected\n${bob.dump()}`);

        const gone = Date.now();
        await ann.close();
        await scope.waitFor("bob sees ann leave", () => left(b, "ann"), 15_000);
        const after = Date.now() - gone;
        // Kept for the TTL after its last renewal (at most a heartbeat
        // before the disconnect).
        assert.ok(after >= (TTL_SECONDS - 1) * 1000 - 100, `left ${after} ms after the disconnect`);
        assert.ok(!left(b, "bob"), "bob is still there");
        const cy = scope.client(one, "cy");
        const c = await cy.stream(room);
        assert.deepEqual(await c.channel.presence.info(), { bob: { name: "Bob", node: 2 } });
      }),
    );
  });
}
