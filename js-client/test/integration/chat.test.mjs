// @cable-rs/client under Node (with `ws`) against the real chat example
// server (examples/chat): subscribe/confirm, reject, perform/receive,
// unsubscribe, unauthorized, remote disconnect, server restart; AnyCable's
// presence and whispers on the extended protocol.
//
// The client's monitor notices a dead server only at a poll (6-12 s after the
// last message, then backing off), so the restart test allows 40 s.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { ConnectionClosedError, EXT_PROTOCOL, SubscriptionRejectedError } from "../../dist/index.js";
import { cableClient } from "../support/clients.mjs";
import { ChatServer, Scope, freePort, requireChatBin, sleep, waitFor } from "../support/server.mjs";

const RECONNECT_TIMEOUT = 40_000;
const chat = (room) => ({ channel: "ChatChannel", room });
/** Client `c` subscribes to ChatChannel in `room`, its callbacks recorded under `room`. */
const join = (c, room) => c.consumer.subscribe(chat(room), c.callbacks(room));
const connectedOnce = [{ cb: "initialized" }, { cb: "connected", arg: { reconnected: false } }];

const skip = requireChatBin();
// When skipped, one skipped test stands for the suite (a skipped describe counts none).
if (skip.skip) it("@cable-rs/client against the chat server", skip, () => {});

/** Clients and servers of a suite, closed after each test / the suite; logs on failure. */
class ChatScope extends Scope {
  client(opts) {
    return this.keepClient(cableClient(opts));
  }
  async server(opts) {
    return this.keepServer(await ChatServer.start(opts));
  }
}

describe("@cable-rs/client against the chat server", { ...skip, concurrency: true }, () => {
  describe("one server (with --admin)", { concurrency: true }, () => {
    const scope = new ChatScope();
    let server;
    /** A client identified by the Cookie header, with a same-origin Origin, as a browser on the page. */
    const user = (name) =>
      scope.client({ url: server.cableUrl, headers: { Cookie: `user=${name}`, Origin: server.origin }, name });

    before(async () => {
      server = await scope.server({ admin: true });
    });
    after(() => scope.closeAll());

    it(
      "subscribe() resolves on confirm; a message performed by one user reaches both (Cookie header and ?user=)",
      { timeout: 20_000 },
      scope.wrap(async () => {
        const ann = user("ann");
        const bob = scope.client({ url: `${server.cableUrl}?user=bob`, headers: { Origin: server.origin }, name: "bob" });
        const [annSub, bobSub] = await Promise.all([
          join(ann, "t1"),
          join(bob, "t1"),
        ]);
        assert.equal(annSub.identifier, '{"channel":"ChatChannel","room":"t1"}');
        assert.equal(ann.sockets[0].protocol, "actioncable-v1-json");
        assert.deepEqual(ann.wire[0].data.headers, { Cookie: "user=ann", Origin: server.origin }, "headers option reached ws");
        assert.deepEqual(ann.framesIn()[0], { type: "welcome" });

        assert.equal(annSub.perform("speak", { body: "hello" }), true);
        await scope.waitFor("both to receive ann's message", () => ann.has("t1", "received") && bob.has("t1", "received"));
        await sleep(300);
        const expected = [...connectedOnce, { cb: "received", arg: { user: "ann", body: "hello" } }];
        assert.deepEqual(ann.seq("t1"), expected);
        assert.deepEqual(bob.seq("t1"), expected);
        assert.ok(bobSub.consumer === bob.consumer);
      }),
    );

    it(
      "presence and whispers on the extended protocol: info lists both, join/leave events, a whisper reaches the other only",
      { timeout: 20_000 },
      scope.wrap(async () => {
        const ext = (name) =>
          scope.client({
            url: server.cableUrl,
            headers: { Cookie: `user=${name}`, Origin: server.origin },
            name,
            protocol: EXT_PROTOCOL,
          });
        const ann = ext("ann");
        const bob = ext("bob");
        const changes = { ann: [], bob: [] };
        const callbacks = (rec, who) => ({
          ...rec.callbacks("p1"),
          presenceChanged(event) {
            changes[who].push(event);
          },
        });
        const annSub = await ann.consumer.subscribe(chat("p1"), callbacks(ann, "ann"));
        assert.equal(ann.sockets[0].protocol, EXT_PROTOCOL);
        assert.equal(typeof ann.consumer.connection.sessionId, "string");
        assert.equal(annSub.presence.join("ann", { name: "ann" }), true);
        const bobSub = bob.consumer.subscriptions.create(chat("p1"), callbacks(bob, "bob"));
        bobSub.presence.join("bob", { name: "bob" }); // kept until the confirmation
        await scope.waitFor("ann to hear of bob", () => changes.ann.some((e) => e.type === "join" && e.id === "bob"));
        const info = await bobSub.presence.info();
        assert.equal(info.total, 2);
        assert.deepEqual(
          info.records.sort((a, b) => a.id.localeCompare(b.id)),
          [
            { id: "ann", info: { name: "ann" } },
            { id: "bob", info: { name: "bob" } },
          ],
        );
        assert.deepEqual(changes.ann, [
          { type: "join", id: "ann", info: { name: "ann" } },
          { type: "join", id: "bob", info: { name: "bob" } },
        ]);

        const typing = { event: "typing", user: "ann" };
        assert.equal(annSub.whisper(typing), true);
        await scope.waitFor("bob to get the whisper", () => bob.has("p1", "received", (d) => d?.event === "typing"));
        await sleep(300);
        assert.deepEqual(bob.seq("p1").at(-1), { cb: "received", arg: typing });
        assert.ok(!ann.has("p1", "received"), "the sender gets no whisper, and presence frames never reach received");

        annSub.unsubscribe();
        await scope.waitFor("bob to hear ann leave", () => changes.bob.some((e) => e.type === "leave" && e.id === "ann"));
        assert.deepEqual((await bobSub.presence.info()).records, [{ id: "bob", info: { name: "bob" } }]);
      }),
    );

    it(
      "perform() sends the data with the action last (the echo action returns it)",
      { timeout: 20_000 },
      scope.wrap(async () => {
        const cat = user("cat");
        const sub = await join(cat, "t2");
        const data = { text: "ping", n: 42, nested: { list: [1, "two", null], ok: true }, html: "<b>&</b>" };
        sub.perform("echo", data);
        await scope.waitFor("the echo", () => cat.has("t2", "received"));
        assert.deepEqual(cat.seq("t2").at(-1), { cb: "received", arg: { ...data, action: "echo" } });
        assert.deepEqual(data, { text: "ping", n: 42, nested: { list: [1, "two", null], ok: true }, html: "<b>&</b>" });
        // The server escapes <, > and & like ActiveSupport::JSON; JSON.parse restores them.
        assert.ok(cat.wire.some((w) => w.kind === "in" && w.data.includes("\\u003cb\\u003e\\u0026")));
      }),
    );

    it(
      "room 'forbidden': subscribe() rejects with SubscriptionRejectedError, create() gets rejected(); the socket stays usable",
      { timeout: 20_000 },
      scope.wrap(async () => {
        const dan = user("dan");
        await assert.rejects(dan.consumer.subscribe(chat("forbidden"), dan.callbacks("promise")), (err) => {
          assert.ok(err instanceof SubscriptionRejectedError, String(err));
          assert.equal(err.identifier, '{"channel":"ChatChannel","room":"forbidden"}');
          return true;
        });
        dan.create(chat("forbidden"), "create");
        await scope.waitFor("the second rejection", () => dan.has("create", "rejected"));
        await sleep(1200); // the guarantor would re-send by now if it still held them
        assert.deepEqual(dan.seq("promise"), [{ cb: "initialized" }, { cb: "rejected" }]);
        assert.deepEqual(dan.seq("create"), [{ cb: "initialized" }, { cb: "rejected" }]);
        const subscribes = dan.framesOut().filter((f) => f.includes('"subscribe"'));
        assert.equal(subscribes.length, 2, `one subscribe per rejected subscription: ${subscribes}`);
        assert.ok(!dan.framesOut().some((f) => f.includes('"unsubscribe"')), "no unsubscribe for rejected ones");
        assert.equal(dan.consumer.subscriptions.subscriptions.length, 0);

        await join(dan, "t3");
        assert.equal(dan.sockets.length, 1, "same socket throughout");
      }),
    );

    it(
      "unsubscribe() stops delivery to that subscription only",
      { timeout: 20_000 },
      scope.wrap(async () => {
        const eve = user("eve");
        const fay = user("fay");
        const eveSub = await join(eve, "t4");
        const faySub = await join(fay, "t4");
        faySub.unsubscribe();
        await scope.waitFor("the unsubscribe frame", () => fay.framesOut().some((f) => f.includes('"unsubscribe"')));
        await sleep(200);
        eveSub.perform("speak", { body: "after fay left" });
        await scope.waitFor("eve's own message", () => eve.has("t4", "received"));
        await sleep(700);
        assert.deepEqual(fay.seq("t4"), connectedOnce, "fay got nothing after unsubscribing");
        assert.ok(!fay.framesIn().some((f) => f.message), "and the server sent fay nothing");
        assert.deepEqual(
          JSON.parse(fay.framesOut().at(-1)),
          { command: "unsubscribe", identifier: '{"channel":"ChatChannel","room":"t4"}' },
        );
      }),
    );

    it(
      "unauthorized ('banned', or no user): disconnected({willAttemptReconnect:false}), subscribe() rejects, no retries",
      { timeout: 30_000 },
      scope.wrap(async () => {
        const banned = user("banned");
        const nobody = scope.client({ url: server.cableUrl, headers: { Origin: server.origin }, name: "nobody" });
        const results = await Promise.allSettled([
          join(banned, "t5"),
          join(nobody, "t5"),
        ]);
        for (const r of results) {
          assert.equal(r.status, "rejected");
          assert.ok(r.reason instanceof ConnectionClosedError, String(r.reason));
          assert.equal(r.reason.reason, "unauthorized");
        }
        // Longer than a monitor poll (6-12 s) would take, were it running.
        await sleep(13_000);
        for (const c of [banned, nobody]) {
          assert.deepEqual(c.framesIn(), [{ type: "disconnect", reason: "unauthorized", reconnect: false }]);
          assert.deepEqual(c.seq("t5"), [{ cb: "initialized" }, { cb: "disconnected", arg: { willAttemptReconnect: false } }]);
          assert.equal(c.sockets.length, 1, `${c.name}: one connection attempt`);
          assert.deepEqual(c.framesOut(), [], "nothing sent without a welcome");
          assert.equal(c.consumer.connection.monitor.isRunning(), false);
        }
      }),
    );

    it(
      "POST /admin/disconnect with reconnect:false: disconnected for good; with reconnect:true: reconnects",
      { timeout: 60_000 },
      scope.wrap(async () => {
        const gus = user("gus");
        const hal = user("hal");
        await join(gus, "t6");
        await join(hal, "t6");

        let res = await server.post("/admin/disconnect", { user: "gus", reconnect: false });
        assert.equal(res.status, 200, res.body);
        await scope.waitFor("gus's disconnect", () => gus.has("t6", "disconnected"));
        assert.deepEqual(gus.framesIn().at(-1), { type: "disconnect", reason: "remote", reconnect: false });

        res = await server.post("/admin/disconnect", { user: "hal" });
        assert.equal(res.status, 200, res.body);
        await scope.waitFor("hal to reconnect", () => hal.count("t6", "connected") === 2, RECONNECT_TIMEOUT);
        assert.deepEqual(hal.seq("t6"), [
          ...connectedOnce,
          { cb: "disconnected", arg: { willAttemptReconnect: true } },
          { cb: "connected", arg: { reconnected: true } },
        ]);
        assert.deepEqual(gus.seq("t6"), [...connectedOnce, { cb: "disconnected", arg: { willAttemptReconnect: false } }]);
        assert.equal(gus.sockets.length, 1, "gus never reconnected");
      }),
    );

    it(
      "disconnect() then connect(): the subscriptions come back",
      { timeout: 20_000 },
      scope.wrap(async () => {
        const ivy = user("ivy");
        const sub = await join(ivy, "t7");
        ivy.consumer.disconnect();
        await scope.waitFor("the disconnected callback", () => ivy.has("t7", "disconnected"));
        ivy.consumer.connect();
        await scope.waitFor("connected again", () => ivy.count("t7", "connected") === 2);
        sub.perform("speak", { body: "back" });
        await scope.waitFor("the message", () => ivy.has("t7", "received"));
        assert.deepEqual(ivy.seq("t7"), [
          ...connectedOnce,
          { cb: "disconnected", arg: { willAttemptReconnect: false } },
          { cb: "connected", arg: { reconnected: true } },
          { cb: "received", arg: { user: "ivy", body: "back" } },
        ]);
      }),
    );
  });

  describe("server restart", () => {
    const scope = new ChatScope();
    after(() => scope.closeAll());

    it(
      "SIGTERM: server_restart, disconnected({willAttemptReconnect:true}); a new server on the port: reconnect, resubscribe, messages flow",
      { timeout: 90_000 },
      scope.wrap(async () => {
        const port = await freePort();
        const first = await scope.server({ port });
        const headers = { Cookie: "user=kim", Origin: first.origin };
        const kim = scope.client({ url: first.cableUrl, headers, name: "kim" });
        const lobby = await join(kim, "r1");
        const other = await join(kim, "r2");
        lobby.perform("speak", { body: "before" });
        await scope.waitFor("the first message", () => kim.has("r1", "received"));

        assert.deepEqual(await first.stop("SIGTERM"), { code: 0, signal: null });
        await scope.waitFor("the disconnected callbacks", () => kim.has("r1", "disconnected") && kim.has("r2", "disconnected"));
        assert.deepEqual(kim.framesIn().at(-1), { type: "disconnect", reason: "server_restart", reconnect: true });

        const restartedAt = Date.now();
        await scope.server({ port });
        await scope.waitFor(
          "kim to reconnect and resubscribe both",
          () => kim.count("r1", "connected") === 2 && kim.count("r2", "connected") === 2,
          RECONNECT_TIMEOUT,
        );
        const secs = ((Date.now() - restartedAt) / 1000).toFixed(1);
        other.perform("speak", { body: "after" });
        await scope.waitFor("the message after the restart", () => kim.has("r2", "received"));

        assert.deepEqual(kim.seq("r1"), [
          ...connectedOnce,
          { cb: "received", arg: { user: "kim", body: "before" } },
          { cb: "disconnected", arg: { willAttemptReconnect: true } },
          { cb: "connected", arg: { reconnected: true } },
        ], `reconnected ${secs} s after the restart`);
        assert.deepEqual(kim.seq("r2"), [
          ...connectedOnce,
          { cb: "disconnected", arg: { willAttemptReconnect: true } },
          { cb: "connected", arg: { reconnected: true } },
          { cb: "received", arg: { user: "kim", body: "after" } },
        ]);
        const last = kim.sockets.at(-1);
        assert.equal(last.protocol, "actioncable-v1-json");
        assert.ok(kim.wire.filter((w) => w.kind === "construct").every((w) => w.data.headers.Cookie === "user=kim"), "headers on every connect");
      }),
    );
  });
});
