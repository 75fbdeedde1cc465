// The connection monitor's timing, with a fake clock (setTimeout, clearTimeout
// and Date.now replaced, Math.random pinned; see support/fake.mjs) and a
// scripted WebSocket.

import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";

import { ConnectionMonitor } from "../../dist/index.js";
import { fakeBrowserGlobals, fakeTime, setup } from "../support/fake.mjs";

const LOBBY = { channel: "ChatChannel", room: "lobby" };
const lobbyId = JSON.stringify(LOBBY);

let time;
beforeEach(() => {
  time = fakeTime({ random: 0 });
});
afterEach(() => time.restore());

/** Asserts that `c` keeps its one socket for `ms` - 1 ms more and opens a second at `ms`. */
function reopensAfter(c, ms, message = `a second socket ${ms} ms on`) {
  time.tick(ms - 1);
  assert.equal(c.sockets.length, 1, `still one socket ${ms - 1} ms on`);
  time.tick(1);
  assert.equal(c.sockets.length, 2, message);
}

/** The server welcomes `c`'s socket and confirms its lobby subscription. */
function welcomeToLobby(c) {
  c.socket.welcome();
  c.socket.receive({ identifier: lobbyId, type: "confirm_subscription" });
}

/** A client subscribed to the lobby whose socket is welcomed, then drops 1 s later. */
function droppedAfterASecond() {
  const c = setup();
  c.subscribe(LOBBY);
  c.socket.welcome();
  time.tick(1000);
  c.socket.drop();
  return c;
}

/** Ticks in 100 ms steps for `ms`, refusing every handshake on the way (server down). */
function serverDown(c, ms, step = 100) {
  for (let t = 0; t < ms; t += step) {
    time.tick(step);
    for (const s of c.sockets) if (s.readyState === 0) s.refuse();
  }
}

describe("poll interval (backoff and jitter)", () => {
  it("is 6 s × (1 + jitter) with jitter in [0, 1) before any failed attempt", () => {
    const { consumer } = setup();
    const monitor = consumer.connection.monitor;
    assert.equal(ConnectionMonitor.staleThreshold, 6);
    time.setRandom(0);
    assert.equal(monitor.getPollInterval(), 6000);
    time.setRandom(0.5);
    assert.equal(monitor.getPollInterval(), 9000);
    time.setRandom(1 - Number.EPSILON);
    assert.ok(monitor.getPollInterval() < 12000);
  });

  it("grows by 1.15 per attempt up to 10 attempts, with jitter in [0, 0.15)", () => {
    const { consumer } = setup();
    const monitor = consumer.connection.monitor;
    for (let attempts = 1; attempts <= 14; attempts++) {
      monitor.reconnectAttempts = attempts;
      const base = 6000 * 1.15 ** Math.min(attempts, 10);
      time.setRandom(0);
      assert.ok(Math.abs(monitor.getPollInterval() - base) < 1e-6, `attempt ${attempts}: min`);
      time.setRandom(1 - Number.EPSILON);
      const max = monitor.getPollInterval();
      // (1 - EPSILON) * 0.15 rounds to 0.15 here; the sampling test checks the open bound.
      assert.ok(max <= base * 1.15 + 1e-6 && max > base * 1.1499, `attempt ${attempts}: max ${max} vs ${base * 1.15}`);
    }
    monitor.reconnectAttempts = 10;
    const capped = monitor.getPollInterval();
    monitor.reconnectAttempts = 50;
    assert.equal(monitor.getPollInterval(), capped, "capped after 10 attempts");
  });

  it("stays within the bounds for random jitter (1000 samples per attempt count)", () => {
    time.rnd.mock.restore(); // the real Math.random
    const { consumer } = setup();
    const monitor = consumer.connection.monitor;
    for (const attempts of [0, 1, 5, 10, 20]) {
      monitor.reconnectAttempts = attempts;
      const base = 6000 * 1.15 ** Math.min(attempts, 10);
      const jitterMax = attempts === 0 ? 1 : 0.15;
      for (let i = 0; i < 1000; i++) {
        const v = monitor.getPollInterval();
        assert.ok(v >= base && v < base * (1 + jitterMax), `attempts ${attempts}: ${v}`);
      }
    }
  });
});

describe("stale detection and reconnect", () => {
  it("pings every 3 s keep it alive; 6 s of silence makes it stale and it reopens", () => {
    const c = setup();
    c.subscribe(LOBBY);
    welcomeToLobby(c);
    // 30 s of pings every 3 s: polls at 6, 12, ... 30 s find it fresh.
    for (let i = 0; i < 10; i++) {
      time.tick(3000);
      c.socket.receive({ type: "ping", message: Math.floor(Date.now() / 1000) });
    }
    assert.equal(c.sockets.length, 1);
    // Silence from 30 s on: the poll at 36 s sees exactly 6 s (not more), the one at 42 s sees 12 s.
    time.tick(6000);
    assert.equal(c.sockets[0].readyState, 1, "not stale at exactly 6 s");
    time.tick(5999);
    assert.equal(c.sockets[0].readyState, 1);
    time.tick(1);
    assert.equal(c.sockets[0].readyState, 3, "closed at the 42 s poll");
    assert.equal(c.consumer.connection.monitor.reconnectAttempts, 1);
    assert.deepEqual(c.of("lobby").at(-1), ["disconnected", { willAttemptReconnect: true }]);
    // reopen() opens the next socket 500 ms after closing.
    reopensAfter(c, 500);

    c.socket.welcome();
    assert.deepEqual(c.socket.commands(), [{ command: "subscribe", identifier: lobbyId }], "resubscribed after the welcome");
    c.socket.receive({ identifier: lobbyId, type: "confirm_subscription" });
    assert.equal(c.consumer.connection.monitor.reconnectAttempts, 0, "the welcome resets the attempts");
    assert.deepEqual(c.of("lobby"), [
      ["initialized"],
      ["connected", { reconnected: false }],
      ["disconnected", { willAttemptReconnect: true }],
      ["connected", { reconnected: true }],
    ]);
  });

  it("any message (not only pings) keeps the connection fresh", () => {
    const c = setup();
    c.subscribe(LOBBY);
    c.socket.welcome();
    for (let i = 0; i < 20; i++) {
      time.tick(2500);
      c.socket.receive({ identifier: lobbyId, message: { n: i } });
    }
    assert.equal(c.sockets.length, 1);
    assert.equal(c.socket.readyState, 1);
  });

  it("server down: attempts back off by 1.15 per failure (capped at 10), and a welcome resets them", () => {
    const c = setup();
    const created = [];
    const origPush = c.sockets.push.bind(c.sockets);
    c.sockets.push = (s) => {
      created.push(Date.now());
      return origPush(s);
    };
    const t0 = Date.now();
    c.subscribe(LOBBY); // socket #1, refused below
    serverDown(c, 8 * 60_000);
    const at = created.map((t) => t - t0);
    assert.equal(at[0], 0);
    // Polls every 6 s while attempts = 0: the one at 6 s is not stale (exactly 6 s), 12 s is.
    assert.equal(at[1], 12_000);
    for (let k = 2; k < at.length; k++) {
      const expected = 6000 * 1.15 ** Math.min(k - 1, 10);
      const gap = at[k] - at[k - 1];
      // 100 ms tick granularity of serverDown().
      assert.ok(Math.abs(gap - expected) <= 100, `gap before attempt ${k}: ${gap} vs ${expected}`);
    }
    assert.ok(at.length >= 14, `enough attempts to reach the cap (${at.length})`);
    assert.equal(c.of("lobby").length, 1, "only initialized: no socket ever opened");

    c.socket.welcome();
    assert.equal(c.consumer.connection.monitor.reconnectAttempts, 0);
    assert.equal(c.consumer.connection.monitor.getPollInterval(), 6000);
  });
});

describe("server disconnect messages", () => {
  it("reconnect:false (unauthorized): disconnected({willAttemptReconnect:false}) and never reconnects", () => {
    const c = setup();
    c.subscribe(LOBBY);
    c.socket.accept();
    c.socket.receive({ type: "disconnect", reason: "unauthorized", reconnect: false });
    assert.equal(c.sockets[0].readyState, 3);
    assert.equal(c.consumer.connection.monitor.isRunning(), false);
    time.tick(30 * 60_000);
    assert.equal(c.sockets.length, 1, "no second connection in 30 min");
    assert.deepEqual(c.of("lobby"), [["initialized"], ["disconnected", { willAttemptReconnect: false }]]);
    assert.equal(c.consumer.connection.disconnectReason, "unauthorized");
  });

  it("a disconnect without `reconnect` counts as reconnect:false", () => {
    const c = setup();
    c.subscribe(LOBBY);
    c.socket.welcome();
    c.socket.receive({ type: "disconnect", reason: "remote" });
    time.tick(10 * 60_000);
    assert.equal(c.sockets.length, 1);
    assert.deepEqual(c.of("lobby").at(-1), ["disconnected", { willAttemptReconnect: false }]);
  });

  it("reconnect:true (server_restart): reconnects at the first poll that finds it stale", () => {
    const c = setup();
    c.subscribe(LOBBY);
    welcomeToLobby(c);
    time.tick(1000);
    c.socket.receive({ type: "disconnect", reason: "server_restart", reconnect: true });
    assert.deepEqual(c.of("lobby").at(-1), ["disconnected", { willAttemptReconnect: true }]);
    assert.equal(c.consumer.connection.monitor.isRunning(), true);
    // Last message at 1 s: the poll at 6 s finds 5 s, the one at 12 s finds 11 s.
    reopensAfter(c, 11_000, "reopened at 12 s");
    welcomeToLobby(c);
    assert.deepEqual(c.of("lobby").at(-1), ["connected", { reconnected: true }]);
  });

  it("does not reopen within 6 s of a disconnect, even when stale", () => {
    const c = setup();
    c.subscribe(LOBBY);
    c.socket.welcome(); // last message at 0 s
    time.tick(11_000);
    c.socket.drop(); // closed at 11 s
    time.tick(1000); // poll at 12 s: stale (12 s), but disconnected 1 s ago
    assert.equal(c.sockets.length, 1);
    assert.equal(c.consumer.connection.monitor.reconnectAttempts, 1);
    reopensAfter(c, 6900); // next poll at 12 + 6.9 s
  });
});

describe("subscriptions across connections", () => {
  it("every welcome re-sends subscribe for every subscription", () => {
    const c = setup();
    const a = { channel: "ChatChannel", room: "a" };
    const b = { channel: "ChatChannel", room: "b" };
    c.subscribe(a);
    c.subscribe(b);
    assert.equal(c.sockets.length, 1, "one socket for both");
    assert.deepEqual(c.socket.commands(), [], "nothing sent while connecting");
    c.socket.welcome();
    assert.deepEqual(c.socket.commands().map((f) => f.identifier), [JSON.stringify(a), JSON.stringify(b)]);
    for (const p of [a, b]) c.socket.receive({ identifier: JSON.stringify(p), type: "confirm_subscription" });

    c.socket.drop();
    const d = { channel: "ChatChannel", room: "d" };
    c.subscribe(d); // created while disconnected: ensureActiveConnection opens at once
    assert.equal(c.sockets.length, 2);
    c.socket.welcome();
    assert.deepEqual(
      c.socket.commands().map((f) => [f.command, f.identifier]),
      [a, b, d].map((p) => ["subscribe", JSON.stringify(p)]),
    );
    for (const p of [a, b, d]) c.socket.receive({ identifier: JSON.stringify(p), type: "confirm_subscription" });
    assert.deepEqual(c.of("a").at(-1), ["connected", { reconnected: true }]);
    assert.deepEqual(c.of("b").at(-1), ["connected", { reconnected: true }]);
    assert.deepEqual(c.of("d").at(-1), ["connected", { reconnected: false }], "d is new on this connection");
  });

  it("the guarantor re-sends subscribe every 500 ms until confirmed", () => {
    const c = setup();
    c.subscribe(LOBBY);
    c.socket.welcome();
    assert.equal(c.socket.commands("subscribe").length, 1);
    time.tick(499);
    assert.equal(c.socket.commands("subscribe").length, 1);
    time.tick(1);
    assert.equal(c.socket.commands("subscribe").length, 2);
    time.tick(1500);
    assert.equal(c.socket.commands("subscribe").length, 5);
    c.socket.receive({ identifier: lobbyId, type: "confirm_subscription" });
    time.tick(5000);
    assert.equal(c.socket.commands("subscribe").length, 5, "no resend after the confirm");
    assert.deepEqual(c.of("lobby"), [["initialized"], ["connected", { reconnected: false }]], "one connected");
  });

  it("the guarantor stops on reject, and pauses while the socket is closed", () => {
    const c = setup();
    const forbidden = { channel: "ChatChannel", room: "forbidden" };
    c.subscribe(forbidden);
    c.subscribe(LOBBY);
    c.socket.welcome();
    time.tick(1000);
    c.socket.receive({ identifier: JSON.stringify(forbidden), type: "reject_subscription" });
    const afterReject = c.socket.commands("subscribe").filter((f) => f.identifier === JSON.stringify(forbidden)).length;
    time.tick(2000);
    assert.equal(
      c.socket.commands("subscribe").filter((f) => f.identifier === JSON.stringify(forbidden)).length,
      afterReject,
      "no resend after the reject",
    );
    assert.deepEqual(c.of("forbidden"), [["initialized"], ["rejected"]]);
    assert.equal(c.consumer.subscriptions.subscriptions.length, 1, "the rejected one is gone");

    // lobby still pending; the socket drops: nothing can be sent, no errors.
    c.socket.drop();
    time.tick(3000);
    assert.equal(c.sockets.length, 1);
    // The next connection's welcome sends it again, and the guarantor resumes.
    c.consumer.connect();
    c.socket.welcome();
    assert.deepEqual(c.socket.commands(), [{ command: "subscribe", identifier: lobbyId }]);
    time.tick(500);
    assert.equal(c.socket.commands().length, 2);
  });
});

describe("browser events", () => {
  let globals;
  beforeEach(() => {
    globals = fakeBrowserGlobals();
  });
  afterEach(() => globals.restore());

  it("`online` reopens a closed connection at once", () => {
    const c = droppedAfterASecond();
    time.tick(100);
    assert.equal(c.sockets.length, 1);
    globals.win.dispatchEvent(new Event("online"));
    assert.equal(c.sockets.length, 2, "a new socket without waiting for a poll");
    c.socket.welcome();
    globals.win.dispatchEvent(new Event("online"));
    assert.equal(c.sockets.length, 2, "an open connection is left alone");

    c.consumer.disconnect();
    globals.win.dispatchEvent(new Event("online"));
    assert.equal(c.sockets.length, 2, "after disconnect() the listener is gone");
  });

  it("visibilitychange to visible reopens a closed connection after 200 ms", () => {
    const c = droppedAfterASecond();
    globals.doc.visibilityState = "hidden";
    globals.doc.dispatchEvent(new Event("visibilitychange"));
    time.tick(1000);
    assert.equal(c.sockets.length, 1);
    globals.doc.visibilityState = "visible";
    globals.doc.dispatchEvent(new Event("visibilitychange"));
    reopensAfter(c, 200);
  });
});

describe("connection edge cases", () => {
  it("an unsupported subprotocol closes for good and ignores frames", () => {
    const c = setup();
    c.subscribe(LOBBY);
    c.socket.accept("");
    assert.equal(c.socket.readyState, 3);
    c.socket.onmessage?.({ data: JSON.stringify({ type: "welcome" }) });
    time.tick(30 * 60_000);
    assert.equal(c.sockets.length, 1);
    assert.deepEqual(c.of("lobby"), [["initialized"], ["disconnected", { willAttemptReconnect: false }]]);
  });

  it("disconnect() while connecting closes the socket when it opens, before any welcome", () => {
    const c = setup();
    c.subscribe(LOBBY);
    c.consumer.disconnect();
    assert.equal(c.socket.closeCalls, 0, "a connecting socket is not closed (Safari)");
    c.socket.accept();
    assert.equal(c.socket.closeCalls, 1);
    c.socket.receive({ type: "welcome" });
    time.tick(30 * 60_000);
    assert.equal(c.sockets.length, 1);
    assert.deepEqual(c.sockets[0].sent, []);
    assert.deepEqual(c.of("lobby"), [["initialized"]]);

    c.consumer.connect();
    welcomeToLobby(c);
    assert.deepEqual(c.of("lobby").at(-1), ["connected", { reconnected: false }]);
  });

  it("connect() after disconnect() while still connecting keeps that socket", () => {
    const c = setup();
    c.subscribe(LOBBY);
    c.consumer.disconnect();
    assert.equal(c.consumer.connect(), false, "the socket is still connecting");
    c.socket.welcome();
    assert.equal(c.socket.readyState, 1);
    assert.equal(c.consumer.connection.monitor.isRunning(), true);
    assert.deepEqual(c.socket.commands(), [{ command: "subscribe", identifier: lobbyId }]);
  });

  it("events of a replaced socket are ignored", () => {
    const c = setup();
    c.subscribe(LOBBY);
    const first = c.socket;
    first.welcome();
    first.close = function () {
      this.closeCalls++;
      this.readyState = 2; // closing; the close event comes late
    };
    c.consumer.connection.reopen();
    time.tick(500);
    assert.equal(c.sockets.length, 2);
    first.readyState = 3;
    first.onclose({ code: 1006 });
    first.onmessage({ data: JSON.stringify({ identifier: lobbyId, message: "stale" }) });
    assert.deepEqual(c.of("lobby"), [["initialized"]]);
  });
});
