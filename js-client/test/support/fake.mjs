// Test doubles for the unit tests: a scriptable WebSocket, a consumer wired
// to it with every callback recorded, and fake timers.

import { afterEach, beforeEach, mock } from "node:test";
import { createConsumer } from "../../dist/index.js";

export const PROTOCOL = "actioncable-v1-json";

/**
 * A WebSocket the test drives by hand. Sends are recorded (parsed); `close()`
 * closes at once (the close event fires synchronously).
 */
export class FakeWebSocket {
  constructor(url, protocols, options) {
    this.args = arguments.length;
    this.url = url;
    this.protocols = protocols;
    this.options = options;
    this.readyState = 0;
    this.protocol = "";
    this.sent = [];
    this.closeCalls = 0;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
  }

  send(data) {
    if (this.readyState !== 1) throw new Error(`send() on a socket in state ${this.readyState}`);
    this.sent.push(JSON.parse(data));
  }

  close() {
    this.closeCalls++;
    if (this.readyState >= 2) return;
    this.readyState = 3;
    this.onclose?.({ code: 1000 });
  }

  // --- the server's side

  /** The handshake succeeds with `protocol`. */
  accept(protocol = PROTOCOL) {
    this.readyState = 1;
    this.protocol = protocol;
    this.onopen?.({});
  }

  /** The handshake fails (connection refused, HTTP 404...). */
  refuse() {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006 });
  }

  /** A frame from the server. */
  receive(frame) {
    this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
  }

  /** The connection drops (server gone). */
  drop() {
    this.readyState = 3;
    this.onclose?.({ code: 1006 });
  }

  /** accept() plus the welcome. */
  welcome() {
    this.accept();
    this.receive({ type: "welcome" });
  }

  /** The commands sent, without `message` frames' data decoded. */
  commands(command) {
    return this.sent.filter((f) => command === undefined || f.command === command);
  }
}

/**
 * A consumer on FakeWebSocket. `events` gets every callback as
 * `[tag, name, arg?]`; `sockets` every socket made, in order.
 */
export function setup({ url = "ws://cable.test/cable", ...options } = {}) {
  const sockets = [];
  class WS extends FakeWebSocket {
    constructor(...args) {
      super(...args);
      this.args = args.length;
      sockets.push(this);
    }
  }
  const consumer = createConsumer(url, { WebSocket: WS, ...options });
  const events = [];
  const callbacks = (tag) => {
    const rec = (name) =>
      function (arg) {
        events.push(arg === undefined ? [tag, name] : [tag, name, arg]);
      };
    return {
      initialized: rec("initialized"),
      connected: rec("connected"),
      disconnected: rec("disconnected"),
      received: rec("received"),
      rejected: rec("rejected"),
    };
  };
  const subscribe = (params, tag = params.room ?? params.channel ?? params) =>
    consumer.subscriptions.create(params, callbacks(tag));
  return {
    consumer,
    sockets,
    events,
    callbacks,
    subscribe,
    get socket() {
      return sockets.at(-1);
    },
    /** Events of one tag, without the tag. */
    of(tag) {
      return events.filter((e) => e[0] === tag).map((e) => e.slice(1));
    },
  };
}

/**
 * A fake clock: replaces the global setTimeout/clearTimeout (the client looks
 * them up at call time) and Date.now, and pins Math.random. `tick(ms)` runs
 * every timer that falls due within `ms`, each at its own due time (in due
 * order, then in order of scheduling), including timers scheduled by those
 * timers. (Node 20's mock.timers runs all due timers at the end time of a
 * tick, which distorts chains like the monitor's poll.) `restore()` undoes it.
 */
/** The subscription the unit tests use, and its identifier. */
export const LOBBY = { channel: "ChatChannel", room: "lobby" };
export const lobbyId = JSON.stringify(LOBBY);

/** Fake timers and clock for every test of the calling file. */
export function fakeTimeEachTest() {
  let time;
  beforeEach(() => {
    time = fakeTime();
  });
  afterEach(() => time.restore());
}

export function fakeTime({ random = 0 } = {}) {
  let now = 1_700_000_000_000;
  let seq = 0;
  const timers = new Map();
  const saved = { setTimeout: globalThis.setTimeout, clearTimeout: globalThis.clearTimeout };
  globalThis.setTimeout = (fn, ms = 0, ...args) => {
    const handle = { id: ++seq };
    timers.set(handle, { at: now + Math.max(0, Number(ms) || 0), seq: handle.id, run: () => fn(...args) });
    return handle;
  };
  globalThis.clearTimeout = (handle) => {
    timers.delete(handle);
  };
  const dateNow = mock.method(Date, "now", () => now);
  const rnd = mock.method(Math, "random", () => (typeof random === "function" ? random() : random));
  return {
    tick(ms) {
      const end = now + ms;
      for (;;) {
        let next;
        for (const [handle, t] of timers) {
          if (t.at <= end && (!next || t.at < next[1].at || (t.at === next[1].at && t.seq < next[1].seq))) {
            next = [handle, t];
          }
        }
        if (!next) break;
        timers.delete(next[0]);
        now = next[1].at;
        next[1].run();
      }
      now = end;
    },
    now: () => now,
    pending: () => timers.size,
    setRandom(r) {
      random = r;
    },
    rnd,
    restore() {
      Object.assign(globalThis, saved);
      dateNow.mock.restore();
      rnd.mock.restore();
    },
  };
}

/** A minimal EventTarget standing in for `window` (online) and `document` (visibilitychange). */
export function fakeBrowserGlobals() {
  const win = new EventTarget();
  const doc = new EventTarget();
  doc.visibilityState = "visible";
  const saved = {
    addEventListener: globalThis.addEventListener,
    removeEventListener: globalThis.removeEventListener,
    document: globalThis.document,
  };
  globalThis.addEventListener = win.addEventListener.bind(win);
  globalThis.removeEventListener = win.removeEventListener.bind(win);
  globalThis.document = doc;
  return {
    win,
    doc,
    restore() {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete globalThis[k];
        else globalThis[k] = v;
      }
    },
  };
}
