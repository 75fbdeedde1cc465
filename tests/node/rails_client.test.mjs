// Compatibility tests: the unmodified @rails/actioncable npm client, running
// under Node with `ws`, against the `chat` example server.
//
//   cargo build -p chat-example
//   cd tests/node && npm ci && npm test
//
// Needs Node >= 20.19: the package's actioncable.esm.js is ESM in a package
// without "type": "module", which Node only loads with module syntax detection
// (on by default from 20.19 / 22.7).
//
// Env: CHAT_BIN overrides the server binary; ACTIONCABLE_DEBUG=1 turns on the
// client's own logger.
//
// The client's ConnectionMonitor only notices a dropped connection at its next
// poll (6 s * (1 + jitter)) and backs off from there, so reconnection takes
// 6-20 s by design: the reconnect tests allow 40 s.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { PROTOCOL, Scope, freePort, killAllServers, sleep } from "./helpers.mjs";

const RECONNECT_TIMEOUT = 40_000;

const connectedOnce = [{ cb: "initialized" }, { cb: "connected", arg: { reconnected: false } }];

after(killAllServers);

describe("chat server (default options)", () => {
  const scope = new Scope();
  let server;

  before(async () => {
    server = await scope.startServer({ port: await freePort() });
  });
  scope.closeAfterEach();

  it(
    "1. subscribe, speak: both lobby members receive it, another room does not",
    { timeout: 30_000 },
    scope.wrap(async () => {
      const { alice, bob, carol, subs } = await scope.inRooms(server.cableUrl, {
        alice: "lobby",
        bob: "lobby",
        carol: "other",
      });
      const aliceSub = subs.alice;

      // The handshake as the client saw it.
      for (const c of [alice, bob, carol]) {
        assert.equal(c.sockets[0].protocol, PROTOCOL, `${c.name}: negotiated subprotocol`);
        const frames = c.framesIn({ includePings: false });
        assert.deepEqual(frames[0], { type: "welcome" }, `${c.name}: first non-ping frame is the welcome`);
      }
      const aliceConfirm = alice.framesIn().find((f) => f.type === "confirm_subscription");
      assert.deepEqual(aliceConfirm, { identifier: aliceSub.identifier, type: "confirm_subscription" });

      assert.equal(aliceSub.perform("speak", { body: "hi" }), true, "perform() sent the frame");

      const hi = { user: "alice", body: "hi" };
      await scope.waitFor("alice and bob to receive alice's message", () =>
        alice.has("lobby", "received") && bob.has("lobby", "received"),
      );
      // Give a misrouted broadcast time to show up.
      await sleep(1_000);

      assert.deepEqual(alice.seq("lobby"), [...connectedOnce, { cb: "received", arg: hi }]);
      assert.deepEqual(bob.seq("lobby"), [...connectedOnce, { cb: "received", arg: hi }]);
      assert.deepEqual(carol.seq("other"), connectedOnce, "room 'other' gets nothing");
      for (const c of [alice, bob, carol]) assert.equal(c.attempts, 1, `${c.name}: one connection`);
    }),
  );

  it(
    "2. echo transmits the whole data object back, including action",
    { timeout: 20_000 },
    scope.wrap(async () => {
      const { dave, subs } = await scope.inRooms(server.cableUrl, { dave: "echo" });
      const sub = subs.dave;

      sub.perform("echo", { text: "ping", n: 42, nested: { list: [1, "two", null], ok: true } });
      await scope.waitFor("the echo", () => dave.has("echo", "received"));
      await sleep(300);

      assert.deepEqual(dave.seq("echo"), [
        ...connectedOnce,
        {
          cb: "received",
          arg: { text: "ping", n: 42, nested: { list: [1, "two", null], ok: true }, action: "echo" },
        },
      ]);
    }),
  );

  it(
    "3. room 'forbidden' is rejected; the connection stays usable",
    { timeout: 20_000 },
    scope.wrap(async () => {
      const erin = await scope.client({ url: server.cableUrl, user: "erin" });
      const forbidden = erin.subscribe({ channel: "ChatChannel", room: "forbidden" });
      await scope.waitFor("the rejection", () => erin.has("forbidden", "rejected"));
      // The guarantor re-sends subscribe every 500 ms until an answer arrives;
      // make sure no late confirm follows.
      await sleep(1_500);

      assert.deepEqual(erin.seq("forbidden"), [{ cb: "initialized" }, { cb: "rejected" }]);
      const answers = erin
        .framesIn()
        .filter((f) => f.identifier === forbidden.identifier && f.type !== undefined);
      assert.deepEqual(answers, [{ identifier: forbidden.identifier, type: "reject_subscription" }]);
      assert.equal(erin.consumer.subscriptions.subscriptions.length, 0, "the client dropped it");

      // Same socket, another room: works.
      erin.subscribe({ channel: "ChatChannel", room: "after-reject" });
      await scope.waitFor("erin to be connected to another room", () =>
        erin.has("after-reject", "connected"),
      );
      assert.equal(erin.attempts, 1);
    }),
  );

  it(
    "5. unauthorized (user 'banned', or no user): disconnected without reconnect, and no retries",
    { timeout: 40_000 },
    scope.wrap(async () => {
      const banned = await scope.client({ url: server.cableUrl, user: "banned" });
      const nobody = await scope.client({ url: server.cableUrl, name: "no-user" });
      banned.subscribe({ channel: "ChatChannel", room: "lobby" });
      nobody.subscribe({ channel: "ChatChannel", room: "lobby" });

      const unauthorized = { type: "disconnect", reason: "unauthorized", reconnect: false };
      for (const c of [banned, nobody]) {
        await scope.waitFor(`${c.name}: the unauthorized disconnect and socket close`, () =>
          c.wire.some((w) => w.kind === "close"),
        );
      }

      // Long enough for at least one ConnectionMonitor poll (6-12 s) and then some.
      await sleep(15_000);

      for (const c of [banned, nobody]) {
        assert.deepEqual(c.framesIn(), [unauthorized], `${c.name}: frames received`);
        assert.ok(!c.has("lobby", "connected"), `${c.name}: never connected`);
        assert.deepEqual(c.seq("lobby"), [
          { cb: "initialized" },
          { cb: "disconnected", arg: { willAttemptReconnect: false } },
        ]);
        assert.equal(c.attempts, 1, `${c.name}: connection attempts over ~15 s`);
        assert.deepEqual(c.framesOut(), [], `${c.name}: nothing sent (no welcome, so no subscribe)`);
      }
    }),
  );

  it(
    "identity from the ?user= query parameter",
    { timeout: 20_000 },
    scope.wrap(async () => {
      const grace = await scope.client({ url: `${server.cableUrl}?user=grace`, name: "grace(query)" });
      const sub = grace.subscribe({ channel: "ChatChannel", room: "query" });
      await scope.waitFor("grace to be connected", () => grace.has("query", "connected"));
      sub.perform("speak", { body: "via query" });
      await scope.waitFor("grace's message", () => grace.has("query", "received"));
      assert.deepEqual(grace.seq("query"), [
        ...connectedOnce,
        { cb: "received", arg: { user: "grace", body: "via query" } },
      ]);
    }),
  );

  it(
    "an Origin outside the allowlist is refused with HTTP 404 before the upgrade",
    { timeout: 20_000 },
    scope.wrap(async () => {
      const mallory = await scope.client({
        url: server.cableUrl,
        user: "mallory",
        origin: "http://evil.example",
      });
      mallory.subscribe({ channel: "ChatChannel", room: "lobby" });
      await scope.waitFor("the refused handshake", () => mallory.wire.some((w) => w.kind === "close"));
      const errors = mallory.wire.filter((w) => w.kind === "error").map((w) => w.data);
      assert.deepEqual(errors, ["Unexpected server response: 404"]);
      assert.ok(!mallory.wire.some((w) => w.kind === "open"), "socket never opened");
      // The socket never opened, so the client never reports a disconnect.
      assert.deepEqual(mallory.seq("lobby"), [{ cb: "initialized" }]);
    }),
  );

  it(
    "heartbeat: pings every 3 s keep the connection from going stale",
    { timeout: 30_000 },
    scope.wrap(async () => {
      const { heidi } = await scope.inRooms(server.cableUrl, { heidi: "heartbeat" });
      // Longer than the client's 6 s stale threshold plus its first poll.
      await sleep(13_000);

      const pings = heidi.framesIn().filter((f) => f.type === "ping");
      assert.ok(pings.length >= 3, `expected >= 3 pings in ~13 s, got ${pings.length}`);
      const nowSecs = Date.now() / 1000;
      for (const p of pings) {
        assert.deepEqual(Object.keys(p), ["type", "message"]);
        assert.ok(Number.isInteger(p.message), `ping message is an integer: ${JSON.stringify(p)}`);
        assert.ok(Math.abs(nowSecs - p.message) < 30, `ping message is Unix seconds: ${p.message}`);
      }
      assert.deepEqual(heidi.seq("heartbeat"), connectedOnce, "no disconnect, no reconnect");
      assert.equal(heidi.attempts, 1);
    }),
  );
});

describe("server restart", () => {
  const scope = new Scope();
  let port;

  before(async () => {
    port = await freePort();
    await scope.startServer({ port });
  });
  after(() => scope.closeAll());

  it(
    "4. SIGTERM: client is told server_restart, then reconnects and resubscribes by itself",
    { timeout: 90_000 },
    scope.wrap(async () => {
      const [first] = scope.servers;
      const { ivan, subs } = await scope.inRooms(first.cableUrl, { ivan: "restart" });
      const sub = subs.ivan;

      sub.perform("speak", { body: "before" });
      await scope.waitFor("the first message", () => ivan.has("restart", "received"));

      const exit = await first.stop({ signal: "SIGTERM", timeout: 15_000 });
      assert.deepEqual(exit, { code: 0, signal: null, killed: false }, "server exits 0 on SIGTERM");

      await scope.waitFor("the disconnected callback", () => ivan.has("restart", "disconnected"));
      assert.deepEqual(
        ivan.framesIn({ socket: 1, includePings: false }).at(-1),
        { type: "disconnect", reason: "server_restart", reconnect: true },
        "last frame before shutdown",
      );
      assert.deepEqual(
        ivan.seq("restart").at(-1),
        { cb: "disconnected", arg: { willAttemptReconnect: true } },
      );

      const restartedAt = Date.now();
      await scope.startServer({ port });

      await scope.waitFor(
        "the client to reconnect and resubscribe on its own",
        () => ivan.count("restart", "connected") >= 2,
        RECONNECT_TIMEOUT,
      );
      const reconnectSecs = ((Date.now() - restartedAt) / 1000).toFixed(1);

      sub.perform("speak", { body: "after" });
      await scope.waitFor("the message after the restart", () => ivan.count("restart", "received") >= 2);
      await sleep(300);

      assert.deepEqual(
        ivan.seq("restart"),
        [
          ...connectedOnce,
          { cb: "received", arg: { user: "ivan", body: "before" } },
          { cb: "disconnected", arg: { willAttemptReconnect: true } },
          { cb: "connected", arg: { reconnected: true } },
          { cb: "received", arg: { user: "ivan", body: "after" } },
        ],
        `callback sequence (reconnected ${reconnectSecs} s after the restart)`,
      );
      const last = ivan.sockets.at(-1);
      assert.equal(last.protocol, PROTOCOL);
      assert.deepEqual(
        ivan.framesIn({ socket: ivan.sockets.length, includePings: false })[0],
        { type: "welcome" },
        "the new connection starts with a welcome",
      );
    }),
  );
});

describe("admin endpoints (--admin)", () => {
  const scope = new Scope();
  let server;

  before(async () => {
    server = await scope.startServer({ port: await freePort(), admin: true });
  });
  scope.closeAfterEach();

  it(
    "POST /admin/broadcast reaches the stream's subscribers only",
    { timeout: 20_000 },
    scope.wrap(async () => {
      const { judy, kim } = await scope.inRooms(server.cableUrl, { judy: "lobby", kim: "other" });

      const message = { text: "from admin", n: 1, tags: ["a", "b"] };
      const res = await server.post("/admin/broadcast", { stream: "chat_lobby", message });
      assert.ok(res.status >= 200 && res.status < 300, `POST /admin/broadcast -> ${res.status} ${res.body}`);

      await scope.waitFor("the admin broadcast", () => judy.has("lobby", "received"));
      await sleep(1_000);
      assert.deepEqual(judy.seq("lobby"), [...connectedOnce, { cb: "received", arg: message }]);
      assert.deepEqual(kim.seq("other"), connectedOnce);
    }),
  );

  it(
    "6. POST /admin/disconnect: client is told remote, will reconnect, and does",
    { timeout: 90_000 },
    scope.wrap(async () => {
      const { alice, bob } = await scope.inRooms(server.cableUrl, { alice: "lobby", bob: "lobby" });

      const res = await server.post("/admin/disconnect", { user: "alice" });
      assert.ok(res.status >= 200 && res.status < 300, `POST /admin/disconnect -> ${res.status} ${res.body}`);

      await scope.waitFor("alice's disconnected callback", () => alice.has("lobby", "disconnected"));
      assert.deepEqual(
        alice.framesIn({ socket: 1, includePings: false }).at(-1),
        { type: "disconnect", reason: "remote", reconnect: true },
      );
      assert.deepEqual(alice.seq("lobby"), [
        ...connectedOnce,
        { cb: "disconnected", arg: { willAttemptReconnect: true } },
      ]);

      await scope.waitFor(
        "alice to reconnect on her own",
        () => alice.count("lobby", "connected") >= 2,
        RECONNECT_TIMEOUT,
      );
      assert.deepEqual(alice.seq("lobby"), [
        ...connectedOnce,
        { cb: "disconnected", arg: { willAttemptReconnect: true } },
        { cb: "connected", arg: { reconnected: true } },
      ]);
      assert.deepEqual(bob.seq("lobby"), connectedOnce, "bob was not disconnected");
      assert.equal(bob.attempts, 1);
    }),
  );
});
