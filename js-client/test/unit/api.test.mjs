// The public API without a server: URL resolution, subscriptions, the promise
// API, headers and subprotocols, the WebSocket lookup.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  ConnectionClosedError,
  INTERNAL,
  SubscriptionRejectedError,
  adapters,
  createConsumer,
  createWebSocketURL,
  getConfig,
  logger,
} from "../../dist/index.js";
import { FakeWebSocket, LOBBY, fakeTimeEachTest, lobbyId, setup } from "../support/fake.mjs";

fakeTimeEachTest();

/** Installs a fake `document` (and `location`) for one test. */
function withPage({ href = "https://app.example/rooms/1", meta } = {}) {
  const saved = { document: globalThis.document, location: globalThis.location };
  globalThis.document = {
    baseURI: href,
    head: {
      querySelector(sel) {
        const m = /^meta\[name='action-cable-(.+)'\]$/.exec(sel);
        return m && meta && m[1] in meta ? { getAttribute: (a) => (a === "content" ? meta[m[1]] : null) } : null;
      },
    },
  };
  globalThis.location = { href };
  return () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete globalThis[k];
      else globalThis[k] = v;
    }
  };
}

describe("URL resolution", () => {
  it("keeps ws:/wss: URLs and turns http(s) into ws(s)", () => {
    assert.equal(createWebSocketURL("ws://h:1/cable?x=1"), "ws://h:1/cable?x=1");
    assert.equal(createWebSocketURL("WSS://h/cable"), "WSS://h/cable");
    assert.equal(createWebSocketURL("http://h:3000/cable"), "ws://h:3000/cable");
    assert.equal(createWebSocketURL("https://h/cable"), "wss://h/cable");
  });

  it("calls a function URL on every connect", () => {
    let n = 0;
    const c = setup({ url: () => `ws://h/cable?token=${++n}` });
    c.consumer.connect();
    c.socket.refuse();
    c.consumer.connect();
    assert.deepEqual(
      c.sockets.map((s) => s.url),
      ["ws://h/cable?token=1", "ws://h/cable?token=2"],
    );
  });

  it("resolves relative URLs against the page (http -> ws, https -> wss)", () => {
    const restore = withPage({ href: "https://app.example/rooms/1" });
    try {
      assert.equal(createWebSocketURL("/cable"), "wss://app.example/cable");
      assert.equal(createWebSocketURL("cable"), "wss://app.example/rooms/cable");
      assert.equal(createWebSocketURL("//other.example:8080/c"), "wss://other.example:8080/c");
    } finally {
      restore();
    }
  });

  it("without a page a relative URL is a clear TypeError", () => {
    assert.throws(() => createWebSocketURL("/cable"), TypeError);
    assert.throws(() => createWebSocketURL("/cable"), /absolute URL/);
  });

  it("createConsumer() defaults to the action-cable-url meta tag, else /cable", () => {
    let restore = withPage({ href: "http://app.example/", meta: { url: "https://cable.example/socket" } });
    try {
      assert.equal(getConfig("url"), "https://cable.example/socket");
      assert.equal(createConsumer().url, "wss://cable.example/socket");
    } finally {
      restore();
    }
    restore = withPage({ href: "http://app.example:3000/x" });
    try {
      assert.equal(getConfig("url"), undefined);
      assert.equal(createConsumer().url, "ws://app.example:3000/cable");
    } finally {
      restore();
    }
    assert.equal(INTERNAL.default_mount_path, "/cable");
    assert.equal(getConfig("url"), undefined, "no document in Node");
  });
});

describe("subscriptions", () => {
  it("create() with a channel name or params; identifier is JSON.stringify(params)", () => {
    const c = setup();
    const byName = c.consumer.subscriptions.create("AppearanceChannel");
    const byParams = c.consumer.subscriptions.create({ channel: "ChatChannel", room: "1", n: 2 });
    assert.equal(byName.identifier, '{"channel":"AppearanceChannel"}');
    assert.equal(byParams.identifier, '{"channel":"ChatChannel","room":"1","n":2}');
    assert.equal(c.sockets.length, 1, "the first subscription connects");
  });

  it("the mixin is copied on; callbacks and helpers run with `this` = the subscription", () => {
    const c = setup();
    const seen = [];
    const sub = c.consumer.subscriptions.create(LOBBY, {
      initialized() {
        seen.push(["initialized", this.identifier]);
      },
      connected() {
        this.greet("hi");
      },
      greet(text) {
        seen.push(["greet", text, this === sub]);
      },
    });
    c.socket.welcome();
    c.socket.receive({ identifier: lobbyId, type: "confirm_subscription" });
    assert.deepEqual(seen, [
      ["initialized", lobbyId],
      ["greet", "hi", true],
    ]);
  });

  it("perform() sends data plus action (last) without mutating it; send() sends data as is", () => {
    const c = setup();
    const sub = c.subscribe(LOBBY);
    assert.equal(sub.perform("speak", { body: "x" }), false, "not open yet");
    c.socket.welcome();
    const data = { body: "hi", n: 1 };
    assert.equal(sub.perform("speak", data), true);
    assert.deepEqual(data, { body: "hi", n: 1 }, "not mutated");
    sub.perform("away");
    sub.send({ raw: true });
    const messages = c.socket.commands("message");
    assert.deepEqual(messages, [
      { command: "message", identifier: lobbyId, data: '{"body":"hi","n":1,"action":"speak"}' },
      { command: "message", identifier: lobbyId, data: '{"action":"away"}' },
      { command: "message", identifier: lobbyId, data: '{"raw":true}' },
    ]);
    // The exact frame bytes (key order as @rails/actioncable).
    assert.equal(
      JSON.stringify(messages[0]),
      '{"command":"message","identifier":"{\\"channel\\":\\"ChatChannel\\",\\"room\\":\\"lobby\\"}","data":"{\\"body\\":\\"hi\\",\\"n\\":1,\\"action\\":\\"speak\\"}"}',
    );
  });

  it("unsubscribe() sends unsubscribe only when no other subscription has the identifier", () => {
    const c = setup();
    const one = c.subscribe(LOBBY, "one");
    const two = c.subscribe(LOBBY, "two");
    c.socket.welcome();
    c.socket.receive({ identifier: lobbyId, type: "confirm_subscription" });
    assert.deepEqual(c.of("one").at(-1), ["connected", { reconnected: false }]);
    assert.deepEqual(c.of("two").at(-1), ["connected", { reconnected: false }]);
    one.unsubscribe();
    assert.deepEqual(c.socket.commands("unsubscribe"), []);
    c.socket.receive({ identifier: lobbyId, message: "after" });
    assert.deepEqual(c.of("one").at(-1), ["connected", { reconnected: false }], "one gets nothing more");
    assert.deepEqual(c.of("two").at(-1), ["received", "after"]);
    two.unsubscribe();
    assert.deepEqual(c.socket.commands("unsubscribe"), [{ command: "unsubscribe", identifier: lobbyId }]);
    assert.equal(c.consumer.subscriptions.subscriptions.length, 0);
  });

  it("frames with an unknown or missing type go to received(); non-JSON frames and frames without identifier are ignored", () => {
    const c = setup();
    c.subscribe(LOBBY);
    c.socket.welcome();
    c.socket.receive({ identifier: lobbyId, message: { a: 1 } });
    c.socket.receive({ identifier: lobbyId, type: "custom", message: 2 });
    c.socket.receive("not json");
    c.socket.receive("null");
    c.socket.receive({ message: "for nobody" });
    assert.deepEqual(c.of("lobby").slice(1), [
      ["received", { a: 1 }],
      ["received", 2],
    ]);
  });
});

describe("consumer.subscribe() (promise API)", () => {
  it("resolves with the subscription on confirm; callbacks still run", async () => {
    const c = setup();
    const got = [];
    const pending = c.consumer.subscribe(LOBBY, {
      connected(d) {
        got.push(["connected", d, this.identifier]);
      },
      received(data) {
        got.push(["received", data]);
      },
    });
    c.socket.welcome();
    c.socket.receive({ identifier: lobbyId, type: "confirm_subscription" });
    const sub = await pending;
    assert.equal(sub.identifier, lobbyId);
    assert.equal(sub.perform("speak", { body: "x" }), true);
    c.socket.receive({ identifier: lobbyId, message: "m" });
    assert.deepEqual(got, [
      ["connected", { reconnected: false }, lobbyId],
      ["received", "m"],
    ]);
  });

  it("rejects with SubscriptionRejectedError when the server rejects", async () => {
    const c = setup();
    const forbidden = { channel: "ChatChannel", room: "forbidden" };
    let rejectedCalled = false;
    const pending = c.consumer.subscribe(forbidden, {
      rejected() {
        rejectedCalled = true;
      },
    });
    c.socket.welcome();
    c.socket.receive({ identifier: JSON.stringify(forbidden), type: "reject_subscription" });
    await assert.rejects(pending, (err) => {
      assert.ok(err instanceof SubscriptionRejectedError);
      assert.ok(err instanceof Error);
      assert.equal(err.name, "SubscriptionRejectedError");
      assert.equal(err.identifier, JSON.stringify(forbidden));
      return true;
    });
    assert.ok(rejectedCalled);
    assert.equal(c.consumer.subscriptions.subscriptions.length, 0);
    assert.deepEqual(c.socket.commands("unsubscribe"), [], "no unsubscribe for a rejected subscription");
  });

  it("rejects with ConnectionClosedError when the server refuses the connection (reconnect:false)", async () => {
    const c = setup();
    const pending = c.consumer.subscribe(LOBBY);
    c.socket.accept();
    c.socket.receive({ type: "disconnect", reason: "unauthorized", reconnect: false });
    await assert.rejects(pending, (err) => {
      assert.ok(err instanceof ConnectionClosedError);
      assert.equal(err.reason, "unauthorized");
      assert.equal(err.identifier, lobbyId);
      return true;
    });
    assert.equal(c.consumer.subscriptions.subscriptions.length, 0, "removed");
  });

  it("keeps waiting across a reconnect (willAttemptReconnect:true)", async () => {
    const c = setup();
    let settled = false;
    const pending = c.consumer.subscribe(LOBBY).then((s) => ((settled = true), s));
    c.socket.welcome();
    c.socket.drop();
    await Promise.resolve();
    assert.equal(settled, false);
    c.consumer.connect();
    c.socket.welcome();
    c.socket.receive({ identifier: lobbyId, type: "confirm_subscription" });
    assert.equal((await pending).identifier, lobbyId);
  });

  it("an AbortSignal removes the subscription and rejects with its reason", async () => {
    const c = setup();
    const ac = new AbortController();
    const pending = c.consumer.subscribe(LOBBY, {}, { signal: ac.signal });
    c.socket.welcome();
    ac.abort(new Error("gave up"));
    await assert.rejects(pending, /gave up/);
    assert.deepEqual(c.socket.commands("unsubscribe"), [{ command: "unsubscribe", identifier: lobbyId }]);
    await assert.rejects(c.consumer.subscribe(LOBBY, {}, { signal: AbortSignal.abort() }), { name: "AbortError" });
  });
});

describe("WebSocket, headers and subprotocols", () => {
  it("offers actioncable-v1-json, actioncable-unsupported, then options.protocols and addSubProtocol()", () => {
    const c = setup({ protocols: ["extra-1"] });
    c.consumer.addSubProtocol("extra-2");
    c.consumer.connect();
    assert.deepEqual(c.socket.protocols, ["actioncable-v1-json", "actioncable-unsupported", "extra-1", "extra-2"]);
  });

  it("passes headers as the constructor's third argument (ws), a function on every connect", () => {
    const plain = setup();
    plain.consumer.connect();
    assert.equal(plain.socket.args, 2, "no options argument without headers (browser-compatible)");

    let n = 0;
    const c = setup({ headers: () => ({ Cookie: `user=ann; n=${++n}`, Origin: "http://localhost:3000" }) });
    c.consumer.connect();
    c.socket.refuse();
    c.consumer.connect();
    assert.deepEqual(
      c.sockets.map((s) => s.options),
      [
        { headers: { Cookie: "user=ann; n=1", Origin: "http://localhost:3000" } },
        { headers: { Cookie: "user=ann; n=2", Origin: "http://localhost:3000" } },
      ],
    );
  });

  it("falls back to adapters.WebSocket, then the global WebSocket; a clear error without one", () => {
    const saved = globalThis.WebSocket;
    try {
      delete globalThis.WebSocket;
      assert.throws(() => createConsumer("ws://h/cable").connect(), /no WebSocket/);
      const made = [];
      adapters.WebSocket = class extends FakeWebSocket {
        constructor(...a) {
          super(...a);
          made.push("adapter");
        }
      };
      createConsumer("ws://h/cable").connect();
      adapters.WebSocket = undefined;
      globalThis.WebSocket = class extends FakeWebSocket {
        constructor(...a) {
          super(...a);
          made.push("global");
        }
      };
      createConsumer("ws://h/cable").connect();
      assert.deepEqual(made, ["adapter", "global"]);
    } finally {
      adapters.WebSocket = undefined;
      if (saved === undefined) delete globalThis.WebSocket;
      else globalThis.WebSocket = saved;
    }
  });

  it("the logger is off by default and goes to adapters.logger when enabled", () => {
    const lines = [];
    const savedLogger = adapters.logger;
    adapters.logger = { log: (...a) => lines.push(a) };
    try {
      const c = setup();
      c.consumer.connect();
      c.socket.accept();
      assert.deepEqual(lines, []);
      logger.enabled = true;
      c.socket.receive({ type: "disconnect", reason: "remote", reconnect: true });
      assert.equal(lines.length, 1);
      assert.equal(lines[0][0], "[cable]");
    } finally {
      logger.enabled = false;
      adapters.logger = savedLogger;
    }
  });
});
