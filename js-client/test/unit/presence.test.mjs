// AnyCable's extensions without a server: the extended protocol only when
// asked, whispers, presence join/leave/info and presence events.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { EXT_PROTOCOL } from "../../dist/index.js";
import { LOBBY, fakeTimeEachTest, lobbyId, setup } from "../support/fake.mjs";

fakeTimeEachTest();

/** A consumer subscribed to the lobby, welcomed and confirmed on `protocol`. */
function confirmed(options = {}, protocol = undefined) {
  const c = setup(options);
  const sub = c.subscribe(LOBBY);
  c.socket.accept(protocol);
  c.socket.receive({ type: "welcome", ...(protocol === EXT_PROTOCOL ? { sid: "s1" } : {}) });
  c.socket.receive({ type: "confirm_subscription", identifier: lobbyId });
  return { c, sub };
}

/** Commands other than subscribe, as sent. */
const extCommands = (socket) => socket.sent.filter((f) => f.command !== "subscribe");

describe("the extended protocol", () => {
  it("is offered first only with { protocol: 'actioncable-v1-ext-json' }, before the plain ones", () => {
    const plain = setup({ protocols: ["extra"] });
    plain.consumer.connect();
    assert.deepEqual(plain.socket.protocols, ["actioncable-v1-json", "actioncable-unsupported", "extra"]);
    assert.equal(plain.consumer.extended, false);
    const ext = setup({ protocol: EXT_PROTOCOL, protocols: ["extra"] });
    ext.consumer.connect();
    assert.deepEqual(ext.socket.protocols, [EXT_PROTOCOL, "actioncable-v1-json", "actioncable-unsupported", "extra"]);
    assert.equal(ext.consumer.extended, true);
  });

  it("a plain consumer the server answers on the extended protocol closes, as @rails/actioncable does", () => {
    const c = setup();
    c.consumer.connect();
    c.socket.accept(EXT_PROTOCOL);
    assert.equal(c.socket.readyState, 3, "closed");
  });

  it("an extended consumer speaks either protocol and keeps the welcome's sid while connected", () => {
    const { c, sub } = confirmed({ protocol: EXT_PROTOCOL }, EXT_PROTOCOL);
    assert.equal(c.consumer.connection.sessionId, "s1");
    assert.deepEqual(c.of("lobby"), [["initialized"], ["connected", { reconnected: false }]]);
    c.socket.drop();
    assert.equal(c.consumer.connection.sessionId, undefined);
    assert.equal(sub.isConfirmed, false);
    const fallback = confirmed({ protocol: EXT_PROTOCOL });
    assert.equal(fallback.c.socket.protocol, "actioncable-v1-json");
    assert.deepEqual(fallback.c.of("lobby").at(-1), ["connected", { reconnected: false }]);
    assert.equal(fallback.c.consumer.connection.sessionId, undefined);
  });

  it("broadcasts with a stream position reach `received` as their message only", () => {
    const { c } = confirmed({ protocol: EXT_PROTOCOL }, EXT_PROTOCOL);
    c.socket.receive({ identifier: lobbyId, message: { body: "hi" }, stream_id: "chat_lobby", epoch: "e", offset: 3 });
    assert.deepEqual(c.of("lobby").at(-1), ["received", { body: "hi" }]);
  });
});

describe("whispers", () => {
  it("whisper(data) sends AnyCable's whisper command with data as an object", () => {
    const { c, sub } = confirmed();
    assert.equal(sub.whisper({ event: "typing", user: "ann" }), true);
    assert.deepEqual(extCommands(c.socket), [
      { command: "whisper", identifier: lobbyId, data: { event: "typing", user: "ann" } },
    ]);
  });

  it("returns false while the socket is not open, and sends nothing", () => {
    const c = setup();
    const sub = c.subscribe(LOBBY);
    assert.equal(sub.whisper({ event: "typing" }), false);
    c.socket.accept();
    assert.deepEqual(extCommands(c.socket), []);
  });

  it("a whisper from someone else arrives in `received`", () => {
    const { c } = confirmed();
    c.socket.receive({ identifier: lobbyId, message: { event: "typing", user: "bob" } });
    assert.deepEqual(c.of("lobby").at(-1), ["received", { event: "typing", user: "bob" }]);
  });
});

describe("presence", () => {
  it("join before the confirmation is sent on it, before `connected`; again after every reconnect", () => {
    const c = setup();
    let sentAtConnected;
    const sub = c.consumer.subscriptions.create(LOBBY, {
      connected() {
        sentAtConnected = extCommands(c.socket).length;
      },
    });
    assert.equal(sub.presence.join("ann", { name: "ann" }), false, "not confirmed yet");
    c.socket.welcome();
    assert.deepEqual(extCommands(c.socket), []);
    c.socket.receive({ type: "confirm_subscription", identifier: lobbyId });
    const join = { command: "join", identifier: lobbyId, presence: { id: "ann", info: { name: "ann" } } };
    assert.deepEqual(extCommands(c.socket), [join]);
    assert.equal(sentAtConnected, 1, "joined before connected() ran");
    // The connection drops; the monitor reconnects; the subscription is confirmed again.
    c.socket.drop();
    c.consumer.connection.reopen();
    c.socket.welcome();
    c.socket.receive({ type: "confirm_subscription", identifier: lobbyId });
    assert.deepEqual(extCommands(c.socket), [join]);
  });

  it("join when confirmed is sent at once; leave sends leave and stops the re-joins", () => {
    const { c, sub } = confirmed();
    assert.equal(sub.presence.join("ann"), true);
    assert.equal(sub.presence.leave(), true);
    assert.equal(sub.presence.leave(), false, "not joined any more");
    assert.deepEqual(extCommands(c.socket), [
      { command: "join", identifier: lobbyId, presence: { id: "ann" } },
      { command: "leave", identifier: lobbyId },
    ]);
    assert.equal(sub.presence.state, undefined);
    c.socket.drop();
    c.consumer.connection.reopen();
    c.socket.welcome();
    c.socket.receive({ type: "confirm_subscription", identifier: lobbyId });
    assert.deepEqual(extCommands(c.socket), []);
  });

  it("unsubscribe forgets the join (the server takes the session off itself)", () => {
    const { c, sub } = confirmed();
    sub.presence.join("ann");
    sub.unsubscribe();
    assert.equal(sub.presence.state, undefined);
    assert.deepEqual(extCommands(c.socket).map((f) => f.command), ["join", "unsubscribe"]);
  });

  it("info() resolves with the info reply (records default to [])", async () => {
    const { c, sub } = confirmed();
    const first = sub.presence.info();
    const second = sub.presence.info();
    assert.deepEqual(extCommands(c.socket), [
      { command: "presence", identifier: lobbyId, data: {} },
      { command: "presence", identifier: lobbyId, data: {} },
    ]);
    const records = [{ id: "ann", info: { name: "ann" } }];
    c.socket.receive({ type: "presence", identifier: lobbyId, message: { type: "info", total: 1, records } });
    c.socket.receive({ type: "presence", identifier: lobbyId, message: { type: "info", total: 0 } });
    assert.deepEqual(await first, { total: 1, records });
    assert.deepEqual(await second, { total: 0, records: [] });
    assert.equal(c.of("lobby").filter(([name]) => name === "received").length, 0, "replies are not received()");
  });

  it("info() rejects on the error reply, when not confirmed, and when the connection closes", async () => {
    const { c, sub } = confirmed();
    const failing = sub.presence.info();
    c.socket.receive({ type: "presence", identifier: lobbyId, message: { type: "error", total: 0 } });
    await assert.rejects(failing, /could not tell/);
    const abandoned = sub.presence.info();
    c.socket.drop();
    await assert.rejects(abandoned, /connection closed/);
    await assert.rejects(sub.presence.info(), /not connected/);
  });

  it("join and leave events go to presenceChanged, not received; to every subscription of the identifier", () => {
    const c = setup();
    const seen = [];
    const mixin = (tag) => ({
      presenceChanged(event) {
        seen.push([tag, event]);
      },
      received(data) {
        seen.push([tag, "received", data]);
      },
    });
    c.consumer.subscriptions.create(LOBBY, mixin("a"));
    c.consumer.subscriptions.create(LOBBY, mixin("b"));
    c.consumer.subscriptions.create({ channel: "ChatChannel", room: "other" }, mixin("other"));
    c.socket.welcome();
    const joined = { type: "join", id: "bob", info: { name: "bob" } };
    c.socket.receive({ type: "presence", identifier: lobbyId, message: joined });
    c.socket.receive({ type: "presence", identifier: lobbyId, message: { type: "leave", id: "bob" } });
    // Malformed events are dropped.
    c.socket.receive({ type: "presence", identifier: lobbyId, message: { type: "join" } });
    c.socket.receive({ type: "presence", identifier: lobbyId, message: "x" });
    assert.deepEqual(seen, [
      ["a", joined],
      ["b", joined],
      ["a", { type: "leave", id: "bob" }],
      ["b", { type: "leave", id: "bob" }],
    ]);
  });
});
