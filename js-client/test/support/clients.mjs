// The two clients under the same recording harness: @cable-rs/client (this
// package, built in dist/) and the unmodified @rails/actioncable, both on the
// `ws` package under Node. Every subscription callback is recorded as
// { tag, cb, arg? } in one list per client, in call order; every frame in and
// out is recorded per socket.

import WebSocket from "ws";
import { createConsumer } from "../../dist/index.js";

// @rails/actioncable's ConnectionMonitor calls the global add/removeEventListener,
// which Node 20 lacks (see the protocol reference, section 6). @cable-rs/client
// needs no such shim (it checks), and does nothing with these no-ops.
globalThis.addEventListener ??= () => {};
globalThis.removeEventListener ??= () => {};

const RAILS_ESM = import.meta.resolve("@rails/actioncable/app/assets/javascripts/actioncable.esm.js");
let instances = 0;

class Recorder {
  constructor(kind, name) {
    this.kind = kind;
    this.name = name;
    this.events = [];
    this.wire = [];
    this.sockets = [];
  }

  /** A `ws` subclass that records frames; `headers` are injected when given. */
  socketClass(headers) {
    const rec = this;
    // No static members: @rails/actioncable maps readyState to a name by
    // enumerating the class's enumerable statics.
    return class RecordingWebSocket extends WebSocket {
      constructor(url, protocols, options = {}) {
        super(url, protocols, headers ? { ...options, headers: { ...headers, ...options.headers } } : options);
        rec.sockets.push(this);
        const n = rec.sockets.length;
        this.no = n;
        rec.wire.push({ socket: n, kind: "construct", data: { url: String(url), protocols, headers: options.headers } });
        this.on("open", () => rec.wire.push({ socket: n, kind: "open", data: this.protocol }));
        this.on("message", (data, binary) => rec.wire.push({ socket: n, kind: "in", data: binary ? "<binary>" : data.toString() }));
        this.on("close", (code) => rec.wire.push({ socket: n, kind: "close", data: code }));
      }

      send(data, ...rest) {
        rec.wire.push({ socket: this.no, kind: "out", data: String(data) });
        return super.send(data, ...rest);
      }
    };
  }

  /** Callbacks that record under `tag`. */
  callbacks(tag) {
    const record = (cb) =>
      function (arg) {
        rec.events.push(arg === undefined ? { tag, cb } : { tag, cb, arg });
      };
    const rec = this;
    return {
      initialized: record("initialized"),
      connected: record("connected"),
      disconnected: record("disconnected"),
      received: record("received"),
      rejected: record("rejected"),
    };
  }

  create(params, tag) {
    return this.consumer.subscriptions.create(params, this.callbacks(tag));
  }

  seq(tag) {
    return this.events.filter((e) => tag === undefined || e.tag === tag).map(({ tag: _t, ...rest }) => rest);
  }

  count(tag, cb) {
    return this.events.filter((e) => e.tag === tag && e.cb === cb).length;
  }

  has(tag, cb, pred = () => true) {
    return this.events.some((e) => e.tag === tag && e.cb === cb && pred(e.arg));
  }

  framesIn({ pings = false } = {}) {
    return this.wire
      .filter((w) => w.kind === "in")
      .map((w) => JSON.parse(w.data))
      .filter((f) => pings || f.type !== "ping");
  }

  framesOut() {
    return this.wire.filter((w) => w.kind === "out").map((w) => w.data);
  }

  dump() {
    return [
      `--- ${this.kind} client ${this.name}`,
      ...this.wire.filter((w) => !/"type":"ping"/.test(w.data)).map((w) => `  #${w.socket} ${w.kind} ${JSON.stringify(w.data)}`),
      ...this.events.map((e) => `  ${e.tag}.${e.cb}(${e.arg === undefined ? "" : JSON.stringify(e.arg)})`),
    ].join("\n");
  }

  async close() {
    this.consumer.disconnect();
    for (const s of this.sockets) if (s.readyState <= 1) s.terminate();
    // reopen() may still have an open() pending (500 ms).
    await new Promise((ok) => setTimeout(ok, 600));
    this.consumer.disconnect();
    for (const s of this.sockets) if (s.readyState <= 1) s.terminate();
  }
}

/**
 * @cable-rs/client with `ws`: headers go through the `headers` option (the
 * feature under test), not through the socket class.
 */
export function cableClient({ url, headers, name = "cable", protocol }) {
  const rec = new Recorder("@cable-rs/client", name);
  rec.consumer = createConsumer(url, { WebSocket: rec.socketClass(), headers, ...(protocol ? { protocol } : {}) });
  return rec;
}

/** The unmodified @rails/actioncable (its own module instance), with `ws` injecting the headers. */
export async function railsClient({ url, headers, name = "rails" }) {
  const rec = new Recorder("@rails/actioncable", name);
  const ActionCable = await import(`${RAILS_ESM}?instance=${++instances}`);
  ActionCable.adapters.WebSocket = rec.socketClass(headers);
  rec.consumer = ActionCable.createConsumer(url);
  return rec;
}
