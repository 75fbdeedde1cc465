// Compatibility tests: the unmodified @anycable/web npm client (AnyCable's
// extended protocol, `actioncable-v1-ext-json`), running under Node with `ws`,
// against the `chat` example server, whose rooms keep history for such
// clients: a dropped client reconnects by itself, resumes its session by sid
// (no connect hook, same subscriptions) and gets what it missed exactly once;
// a client that was away longer than the history reaches gets
// `history_not_found`; with two nodes on a shared Redis, PostgreSQL or NATS
// with JetStream (`--broker adapter`), a client dropped from one resumes on the other
// (SKIPPED when the backend is unreachable, unless CI is set). And the plain
// @rails/actioncable client still sees Rails' frames (no sid, no positions).
//
//   cargo build -p chat-example
//   cd tests/node && npm ci && npm test
//
// Env: CHAT_BIN overrides the server binary; ANYCABLE_DEBUG=1 turns on the
// client's own logger.
//
// The drop is made from underneath the client: its WebSocket is terminated,
// and while the test holds it "offline" every new socket is pointed at a port
// nobody listens on (as a paused proxy would refuse it), so what is broadcast
// meanwhile is surely missed. Reconnect attempts are 100 ms apart (the
// client's reconnectStrategy option) so the tests take seconds, not the
// default backoff's tens of seconds.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import WebSocket from "ws";
import { createCable } from "@anycable/web";

import { ORIGIN, Scope, freePort, killAllServers, serviceSkip, sleep } from "./helpers.mjs";

const EXT_PROTOCOL = "actioncable-v1-ext-json";
const DEBUG = !!process.env.ANYCABLE_DEBUG;

after(killAllServers);

/**
 * One @anycable/web cable as user `user` (by `?user=`), on a `ws` subclass
 * that sends the Origin header, records every frame in and out, and can be
 * dropped (`drop()`) and kept offline (`offline`).
 */
class AnyCableClient {
  constructor({ url, user, name = user, deadPort }) {
    this.name = name;
    this.url = `${url}?user=${encodeURIComponent(user)}`;
    this.wire = []; // { socket, kind, data, at }
    this.sockets = [];
    this.messages = []; // { room, message, meta }
    this.infos = []; // { room, type }
    this.offline = false;
    // A port later sockets go to instead (another node, as a load balancer
    // could pick).
    this.movedTo = null;
    // Set after the first welcome: later sockets drop `user` from the URL,
    // so only a restored session (no connect hook) can be let in.
    this.anonymousReconnects = false;
    this.closed = false;
    const client = this;

    class RecordingWebSocket extends WebSocket {
      constructor(address, protocols, options = {}) {
        let target = new URL(String(address));
        if (client.anonymousReconnects) target.searchParams.delete("user");
        if (client.movedTo) target.port = String(client.movedTo);
        if (client.offline) target.port = String(deadPort);
        super(target.toString(), protocols, {
          ...options,
          headers: { Origin: ORIGIN, ...(options.headers || {}) },
        });
        client.sockets.push(this);
        const n = client.sockets.length;
        const rec = (kind, data) => client.wire.push({ socket: n, kind, data, at: Date.now() });
        rec("construct", { address: target.toString(), protocols });
        this.on("open", () => rec("open", { protocol: this.protocol }));
        this.on("message", (data) => rec("in", data.toString("utf8")));
        this.on("close", (code) => rec("close", { code }));
        this.on("error", (err) => rec("error", err.message));
        this.sendRecorded = (data) => rec("out", String(data));
        if (client.closed) this.terminate();
      }

      send(data, ...rest) {
        this.sendRecorded(data);
        return super.send(data, ...rest);
      }
    }

    this.cable = createCable(this.url, {
      protocol: EXT_PROTOCOL,
      websocketImplementation: RecordingWebSocket,
      reconnectStrategy: () => 100,
      logLevel: DEBUG ? "debug" : "error",
    });
  }

  /** Subscribes to `room`; messages and info events are recorded under it. */
  join(room) {
    const channel = this.cable.subscribeTo("ChatChannel", { room });
    channel.on("message", (message, meta) => this.messages.push({ room, message, meta }));
    channel.on("info", (info) => this.infos.push({ room, type: info.type }));
    return channel;
  }

  /** The `n`s of the messages received in `room`, in order. */
  ns(room) {
    return this.messages.filter((m) => m.room === room).map((m) => m.message.n);
  }

  framesIn(socket) {
    return this.wire
      .filter((w) => w.kind === "in" && (socket === undefined || w.socket === socket))
      .map((w) => JSON.parse(w.data))
      .filter((f) => f.type !== "ping");
  }

  framesOut(socket) {
    return this.wire
      .filter((w) => w.kind === "out" && (socket === undefined || w.socket === socket))
      .map((w) => JSON.parse(w.data));
  }

  welcomes() {
    return this.framesIn().filter((f) => f.type === "welcome");
  }

  /** Kills the open socket from underneath; the client is not told. */
  drop() {
    const open = this.sockets.filter((s) => s.readyState === WebSocket.OPEN);
    assert.equal(open.length, 1, `${this.name}: one open socket to drop`);
    open[0].terminate();
  }

  dump() {
    const t0 = this.wire[0]?.at ?? Date.now();
    const lines = [`--- @anycable/web client ${this.name} (${this.url}) ---`];
    let pings = 0;
    for (const w of this.wire) {
      const text = typeof w.data === "string" ? w.data : JSON.stringify(w.data);
      if (/"type":"ping"/.test(text)) {
        pings++;
        continue;
      }
      lines.push(`+${((w.at - t0) / 1000).toFixed(3)}s #${w.socket} ${w.kind} ${text}`);
    }
    if (pings) lines.push(`(${pings} ping frames omitted)`);
    lines.push(`infos: ${JSON.stringify(this.infos)}`);
    return lines.join("\n");
  }

  async close() {
    this.closed = true;
    this.cable.disconnect();
    for (const s of this.sockets) {
      if (s.readyState === WebSocket.CONNECTING || s.readyState === WebSocket.OPEN) s.terminate();
    }
    // A reconnect already scheduled is 100 ms away; outlast it.
    await sleep(200);
    for (const s of this.sockets) {
      if (s.readyState === WebSocket.CONNECTING || s.readyState === WebSocket.OPEN) s.terminate();
    }
  }
}

class AnyCableScope extends Scope {
  anycable(opts) {
    return this.keepClient(new AnyCableClient({ deadPort: this.deadPort, ...opts }));
  }
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

async function broadcast(server, room, from, to) {
  for (const n of range(from, to)) {
    const res = await server.post("/admin/broadcast", { stream: `chat_${room}`, message: { n } });
    assert.equal(res.status, 200, `broadcast ${n}: ${res.body}`);
  }
}

/**
 * Drops `c`'s socket and keeps it offline while `whileAway` runs, then lets
 * it reconnect; resolves with the socket number of the reconnect that got a
 * welcome.
 */
async function dropAndReconnect(scope, c, whileAway, { to } = {}) {
  const welcomed = c.welcomes().length;
  c.offline = true;
  if (to) c.movedTo = to;
  c.anonymousReconnects = true;
  c.drop();
  // At least one reconnect attempt fails while offline: the client is
  // retrying by itself, not waiting for the test.
  const before = c.sockets.length;
  await scope.waitFor(`${c.name}: a refused reconnect attempt`, () =>
    c.wire.some((w) => w.socket > before && (w.kind === "close" || w.kind === "error")),
  );
  await whileAway();
  c.offline = false;
  await scope.waitFor(`${c.name}: a welcome after the reconnect`, () => c.welcomes().length > welcomed, 20_000);
  return c.wire.find((w) => w.kind === "in" && w.socket > before && JSON.parse(w.data).type === "welcome").socket;
}

describe("@anycable/web against the chat server (extended protocol, reliable rooms)", () => {
  const scope = new AnyCableScope();
  let server;
  let small; // --history-limit 3

  before(async () => {
    // A port that refuses connections, for clients held offline.
    scope.deadPort = await freePort();
    // A history deep enough for any outage these tests make: the nonstop
    // test broadcasts as fast as HTTP allows, and on a loaded machine the
    // resume can take long enough for the default 100 messages to be
    // evicted (reject_history, a gap), which is the next test's subject.
    server = await scope.startServer({
      port: await freePort(),
      admin: true,
      extraArgs: ["--history-limit", "100000"],
    });
    small = await scope.startServer({
      port: await freePort(),
      admin: true,
      extraArgs: ["--history-limit", "3"],
    });
  });
  scope.closeAfterEach();

  it(
    "a dropped client reconnects by itself, resumes by sid and gets every message exactly once, in order",
    { timeout: 60_000 },
    scope.wrap(async () => {
      const ann = scope.anycable({ url: server.cableUrl, user: "ann" });
      const room = ann.join("reliable");
      await scope.waitFor("ann subscribed", () =>
        ann.framesIn().some((f) => f.type === "confirm_subscription"),
      );
      assert.equal(ann.sockets[0].protocol, EXT_PROTOCOL, "negotiated subprotocol");
      const [welcome] = ann.welcomes();
      assert.equal(typeof welcome.sid, "string", `the welcome carries a sid: ${JSON.stringify(welcome)}`);
      assert.ok(welcome.sid.length > 0);
      const identifier = ann.framesOut().find((f) => f.command === "subscribe").identifier;

      await broadcast(server, "reliable", 1, 5);
      await scope.waitFor("messages 1-5", () => ann.ns("reliable").length === 5);
      // Live broadcasts carry their position in the room's history.
      const last = ann.framesIn().filter((f) => f.message)
        .at(-1);
      assert.equal(last.stream_id, "chat_reliable");
      assert.equal(last.offset, 5);
      assert.equal(typeof last.epoch, "string");
      assert.deepEqual(ann.messages.at(-1).meta, { stream: "chat_reliable", epoch: last.epoch, offset: 5 });

      // Dropped; 6-12 are broadcast while it is away.
      const socket = await dropAndReconnect(scope, ann, () => broadcast(server, "reliable", 6, 12));

      // Resumed: the old sid was offered, the welcome says restored, with
      // the same subscription, and a new sid.
      const construct = ann.wire.find((w) => w.socket === socket && w.kind === "construct");
      const offered = new URL(construct.data.address);
      assert.equal(offered.searchParams.get("sid"), welcome.sid, "the reconnect offers the old sid");
      assert.equal(offered.searchParams.get("user"), null, "the reconnect carries no user");
      const resumed = ann.framesIn(socket)[0];
      assert.equal(resumed.type, "welcome");
      assert.equal(resumed.restored, true, `restored: ${JSON.stringify(resumed)}`);
      assert.deepEqual(resumed.restored_ids, [identifier]);
      assert.notEqual(resumed.sid, welcome.sid, "a new sid");
      // No subscribe again: the client asked for what it missed instead.
      const out = ann.framesOut(socket);
      assert.ok(!out.some((f) => f.command === "subscribe"), `no resubscribe: ${JSON.stringify(out)}`);
      const ask = out.find((f) => f.command === "history");
      assert.deepEqual(ask.history.streams, { chat_reliable: { epoch: last.epoch, offset: 5 } });

      await scope.waitFor("messages 6-12 replayed", () => ann.ns("reliable").length >= 12);
      await scope.waitFor("confirm_history", () =>
        ann.framesIn(socket).some((f) => f.type === "confirm_history" && f.identifier === identifier),
      );
      assert.ok(ann.infos.some((i) => i.type === "history_received"), "history_received fired");

      // Live again, and on the identity of before: the connect hook did not
      // run (it would have refused a URL without a user).
      await broadcast(server, "reliable", 13, 15);
      room.perform("speak", { body: "back" });
      await scope.waitFor("messages 13-15 and ann's own", () =>
        ann.messages.some((m) => m.message.body === "back"),
      );
      const spoken = ann.messages.find((m) => m.message.body === "back").message;
      assert.deepEqual(spoken, { user: "ann", body: "back" }, "identifiers kept");
      assert.deepEqual(
        ann.messages.filter((m) => m.message.n !== undefined).map((m) => m.message.n),
        range(1, 15),
        "every message exactly once, in order",
      );
      const offsets = ann.messages.map((m) => m.meta.offset);
      assert.deepEqual(offsets, range(1, 16), "offsets with no gap and no repeat");
      assert.ok(!/Unauthorized|rejected connection/i.test(server.log), "no connection was refused");
    }),
  );

  // A resumed subscription streams live from the welcome on, and the
  // history the client asks for right after it is read later: the server
  // holds the live frames back until the replay is out (and drops those it
  // replayed), since @anycable/web 1.1.1 does not drop repeated offsets.
  it(
    "broadcasts that never pause through the drop and the resume still arrive exactly once, in order",
    { timeout: 60_000 },
    scope.wrap(async () => {
      for (let round = 1; round <= 3; round++) {
        const room = `nonstop${round}`;
        const dan = scope.anycable({ url: server.cableUrl, user: `dan${round}` });
        dan.join(room);
        await scope.waitFor("dan subscribed", () => dan.framesIn().some((f) => f.type === "confirm_history"));
        let sent = 0;
        let stop = false;
        const loop = (async () => {
          while (!stop) await broadcast(server, room, ++sent, sent);
        })();
        await scope.waitFor("a few live messages", () => dan.ns(room).length >= 5);
        dan.drop();
        await scope.waitFor("the resume", () => dan.welcomes().length === 2, 20_000);
        await scope.waitFor("a few more after it", () => dan.ns(room).at(-1) > sent - 1 && dan.ns(room).length > 10);
        stop = true;
        await loop;
        await scope.waitFor(`message ${sent}`, () => dan.ns(room).includes(sent));
        assert.ok(
          !dan.framesIn().some((f) => f.type === "reject_history"),
          `round ${round}: the history did not cover the outage (${sent} sent)`,
        );
        assert.deepEqual(dan.ns(room), range(1, sent), `round ${round}: exactly once, in order`);
      }
    }),
  );

  it(
    "a client away longer than the history reaches gets reject_history and history_not_found",
    { timeout: 60_000 },
    scope.wrap(async () => {
      const bea = scope.anycable({ url: small.cableUrl, user: "bea" });
      bea.join("evicted");
      await scope.waitFor("bea subscribed", () =>
        bea.framesIn().some((f) => f.type === "confirm_subscription"),
      );
      await broadcast(small, "evicted", 1, 1);
      await scope.waitFor("message 1", () => bea.ns("evicted").length === 1);

      // 2-6 while away: the history keeps 4-6 only, so 2 and 3 are lost.
      const socket = await dropAndReconnect(scope, bea, () => broadcast(small, "evicted", 2, 6));
      const resumed = bea.framesIn(socket)[0];
      assert.equal(resumed.restored, true, `restored: ${JSON.stringify(resumed)}`);
      await scope.waitFor("history_not_found", () =>
        bea.infos.some((i) => i.room === "evicted" && i.type === "history_not_found"),
      );
      const frames = bea.framesIn(socket);
      assert.ok(frames.some((f) => f.type === "reject_history"), "reject_history sent");
      assert.ok(!frames.some((f) => f.type === "confirm_history"), "no confirm_history");
      assert.ok(!frames.some((f) => f.message), "nothing replayed");
      assert.deepEqual(bea.ns("evicted"), [1]);
      // Still subscribed: live broadcasts arrive.
      await broadcast(small, "evicted", 7, 7);
      await scope.waitFor("message 7", () => bea.ns("evicted").includes(7));
      assert.deepEqual(bea.ns("evicted"), [1, 7]);
    }),
  );

  it(
    "the plain @rails/actioncable client still gets Rails' frames: no sid, no positions",
    { timeout: 30_000 },
    scope.wrap(async () => {
      const { carl } = await scope.inRooms(server.cableUrl, { carl: "plain" });
      assert.equal(carl.sockets[0].protocol, "actioncable-v1-json");
      await broadcast(server, "plain", 1, 1);
      await scope.waitFor("carl's message", () => carl.has("plain", "received"));
      const frames = carl.framesIn({ includePings: false });
      assert.deepEqual(frames[0], { type: "welcome" });
      const message = frames.find((f) => f.message);
      assert.deepEqual(Object.keys(message), ["identifier", "message"], JSON.stringify(message));
      assert.deepEqual(message.message, { n: 1 });
    }),
  );
});

const BACKENDS = [
  ["Redis", process.env.REDIS_URL || "redis://127.0.0.1:6379", 6379, "redis"],
  ["PostgreSQL", process.env.DATABASE_URL || "postgres://postgres@127.0.0.1:5432/test", 5432, "postgres"],
  // NATS pub/sub and the JetStream broker (issue 17).
  ["NATS", process.env.NATS_URL || "nats://127.0.0.1:4222", 4222, "nats jetstream"],
];

for (const [backend, url, defaultPort, logName] of BACKENDS) {
  describe(`@anycable/web across two chat nodes sharing ${backend} (--adapter URL --broker adapter)`, () => {
    const scope = new AnyCableScope();
    let a;
    let b;
    let skip = null;
    // Unique per run: parallel runs share the backend.
    const tag = `${process.pid}_${Date.now()}`;

    before(async () => {
      skip = await serviceSkip(backend, url, defaultPort);
      if (skip) return;
      scope.deadPort = await freePort();
      const extraArgs = ["--adapter", url, "--channel-prefix", `web_${tag}`, "--broker", "adapter"];
      a = await scope.startServer({ port: await freePort(), admin: true, extraArgs });
      b = await scope.startServer({ port: await freePort(), admin: true, extraArgs });
    });
    scope.closeAfterEach();

    it(
      "a client dropped from one node resumes its session on the other and gets what it missed",
      { timeout: 60_000 },
      scope.wrap(async (t) => {
        if (skip) return t.skip(skip);
        assert.match(a.log, new RegExp(`broker: ${logName} at`));
        const room = `nodes_${tag}`;
        const eve = scope.anycable({ url: a.cableUrl, user: "eve" });
        eve.join(room);
        await scope.waitFor("eve subscribed on node A", () =>
          eve.framesIn().some((f) => f.type === "confirm_subscription"),
        );
        await broadcast(a, room, 1, 3);
        await scope.waitFor("messages 1-3", () => eve.ns(room).length === 3);
        // Broadcast on node B while eve is away, and she comes back on B:
        // both nodes read the one history in the shared broker.
        const socket = await dropAndReconnect(scope, eve, () => broadcast(b, room, 4, 7), { to: b.port });
        const construct = eve.wire.find((w) => w.socket === socket && w.kind === "construct");
        assert.equal(new URL(construct.data.address).port, String(b.port), "the reconnect went to node B");
        const resumed = eve.framesIn(socket)[0];
        assert.equal(resumed.restored, true, `restored on node B: ${JSON.stringify(resumed)}`);
        await scope.waitFor("messages 4-7 replayed on node B", () => eve.ns(room).length >= 7);
        await scope.waitFor("confirm_history", () =>
          eve.framesIn(socket).some((f) => f.type === "confirm_history"),
        );
        await broadcast(a, room, 8, 9);
        await scope.waitFor("messages 8-9, broadcast on node A", () => eve.ns(room).length >= 9);
        assert.deepEqual(eve.ns(room), range(1, 9), "exactly once, in order");
        assert.deepEqual(eve.messages.map((m) => m.meta.offset), range(1, 9));
      }),
    );
  });
}
