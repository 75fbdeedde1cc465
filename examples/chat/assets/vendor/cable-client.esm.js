// @cable-rs/client 0.1.0: built from js-client/src by js-client/scripts/build-asset.mjs.
// Do not edit: change the TypeScript source and run `npm run build:asset` in js-client.

// src/adapters.ts
var adapters = {
  WebSocket: void 0,
  logger: typeof console !== "undefined" ? console : void 0
};
var logger = {
  enabled: false,
  log(...messages) {
    if (this.enabled) adapters.logger?.log("[cable]", ...messages, Date.now());
  }
};

// src/internal.ts
var INTERNAL = {
  message_types: {
    welcome: "welcome",
    disconnect: "disconnect",
    ping: "ping",
    confirmation: "confirm_subscription",
    rejection: "reject_subscription"
  },
  disconnect_reasons: {
    unauthorized: "unauthorized",
    invalid_request: "invalid_request",
    server_restart: "server_restart",
    remote: "remote"
  },
  default_mount_path: "/cable",
  protocols: ["actioncable-v1-json", "actioncable-unsupported"]
};
var PROTOCOL = INTERNAL.protocols[0];
var EXT_PROTOCOL = "actioncable-v1-ext-json";

// src/monitor.ts
var g = globalThis;
var now = () => Date.now();
var secondsSince = (time) => (now() - time) / 1e3;
var ConnectionMonitor = class {
  constructor(connection) {
    /** Reopens since the last welcome. */
    this.reconnectAttempts = 0;
    this.connection = connection;
    this.visibilityDidChange = this.visibilityDidChange.bind(this);
    this.online = this.online.bind(this);
  }
  get config() {
    return this.constructor;
  }
  start() {
    if (!this.isRunning()) {
      this.startedAt = now();
      this.stoppedAt = void 0;
      this.startPolling();
      this.listen("addEventListener");
    }
  }
  stop() {
    if (this.isRunning()) {
      this.stoppedAt = now();
      this.stopPolling();
      this.listen("removeEventListener");
    }
  }
  isRunning() {
    return this.startedAt !== void 0 && this.stoppedAt === void 0;
  }
  recordMessage() {
    this.pingedAt = now();
  }
  recordConnect() {
    this.reconnectAttempts = 0;
    this.disconnectedAt = void 0;
  }
  recordDisconnect() {
    this.disconnectedAt = now();
  }
  /** Milliseconds until the next staleness check. */
  getPollInterval() {
    const { staleThreshold, reconnectionBackoffRate: rate } = this.config;
    const backoff = (1 + rate) ** Math.min(this.reconnectAttempts, 10);
    const jitter = (this.reconnectAttempts === 0 ? 1 : rate) * Math.random();
    return staleThreshold * 1e3 * backoff * (1 + jitter);
  }
  reconnectIfStale() {
    if (this.connectionIsStale()) {
      this.reconnectAttempts++;
      if (!this.disconnectedRecently()) {
        logger.log("stale: reopening, attempt", this.reconnectAttempts);
        this.connection.reopen();
      }
    }
  }
  /** When the server was last heard from (or the monitor started). */
  get refreshedAt() {
    return this.pingedAt ?? this.startedAt ?? now();
  }
  connectionIsStale() {
    return secondsSince(this.refreshedAt) > this.config.staleThreshold;
  }
  disconnectedRecently() {
    return this.disconnectedAt !== void 0 && secondsSince(this.disconnectedAt) < this.config.staleThreshold;
  }
  startPolling() {
    this.stopPolling();
    this.poll();
  }
  stopPolling() {
    clearTimeout(this.pollTimeout);
  }
  poll() {
    this.pollTimeout = setTimeout(() => {
      this.reconnectIfStale();
      this.poll();
    }, this.getPollInterval());
  }
  listen(method) {
    if (typeof g[method] === "function") g[method]("online", this.online);
    if (typeof g.document?.[method] === "function") g.document[method]("visibilitychange", this.visibilityDidChange);
  }
  /** The page became visible: reopen if the connection is stale or closed. */
  visibilityDidChange() {
    if (g.document?.visibilityState === "visible") {
      setTimeout(() => {
        if (this.connectionIsStale() || !this.connection.isOpen()) {
          this.connection.reopen();
        }
      }, this.config.visibilityDelay);
    }
  }
  /** The network is back: reconnect now instead of at the next poll. */
  online() {
    if (!this.connection.isOpen()) {
      this.connection.reopen();
    }
  }
};
/** Seconds without a message after which the connection counts as stale (two missed pings). */
ConnectionMonitor.staleThreshold = 6;
/** Growth of the poll interval per reconnect attempt. */
ConnectionMonitor.reconnectionBackoffRate = 0.15;
/** Delay before checking the connection after the page became visible, in ms. */
ConnectionMonitor.visibilityDelay = 200;

// src/connection.ts
var { message_types: types } = INTERNAL;
var STATES = ["connecting", "open", "closing", "closed"];
var _Connection = class _Connection {
  constructor(consumer) {
    /** True until a socket opens, and again after it closed. */
    this.disconnected = true;
    /** `disconnect()` came while the socket was still connecting: close it once it opens. */
    this.closeOnOpen = false;
    this.consumer = consumer;
    this.subscriptions = consumer.subscriptions;
    this.monitor = new ConnectionMonitor(this);
    this.open = this.open.bind(this);
  }
  /** Sends a command if the socket is open; returns whether it was sent. */
  send(data) {
    if (this.isOpen()) {
      this.webSocket.send(JSON.stringify(data));
      return true;
    }
    return false;
  }
  /** Opens a new socket unless one is open or connecting; starts the monitor. */
  open() {
    if (this.isActive()) {
      if (this.closeOnOpen) {
        this.closeOnOpen = false;
        this.monitor.start();
      }
      return false;
    }
    const protocols = [...INTERNAL.protocols, ...this.consumer.subprotocols];
    if (this.consumer.extended) protocols.unshift(EXT_PROTOCOL);
    this.closeOnOpen = false;
    const socket = this.webSocket = this.consumer.createWebSocket(protocols);
    const handler = (fn) => (event) => {
      if (socket === this.webSocket) fn.call(this, event);
    };
    socket.onopen = handler(this.onOpen);
    socket.onmessage = handler(this.onMessage);
    socket.onclose = handler(this.onClose);
    socket.onerror = () => {
    };
    this.monitor.start();
    return true;
  }
  /**
   * Closes the socket. With `allowReconnect: false` the monitor stops, so
   * nothing reconnects until `open()`. A socket that is still connecting is not
   * closed (Safari mishandles that), but with `allowReconnect: false` it is
   * closed as soon as it opens, before the server's welcome is read.
   */
  close(options = { allowReconnect: true }) {
    if (!options.allowReconnect) this.monitor.stop();
    if (this.isOpen()) this.webSocket.close();
    else if (!options.allowReconnect && this.isState("connecting")) this.closeOnOpen = true;
  }
  /** Closes the socket and opens a new one `reopenDelay` ms later (at once if none is active). */
  reopen() {
    if (this.isActive()) {
      try {
        this.close();
      } finally {
        setTimeout(this.open, _Connection.reopenDelay);
      }
    } else {
      this.open();
    }
  }
  getProtocol() {
    return this.webSocket?.protocol;
  }
  isOpen() {
    return this.isState("open");
  }
  isActive() {
    return this.isState("open", "connecting");
  }
  /** "connecting", "open", "closing", "closed", or null without a socket. */
  getState() {
    return this.webSocket ? STATES[this.webSocket.readyState] ?? null : null;
  }
  isState(...states) {
    return states.includes(this.getState());
  }
  isProtocolSupported() {
    const protocol = this.getProtocol();
    return protocol === PROTOCOL || this.consumer.extended && protocol === EXT_PROTOCOL;
  }
  onOpen() {
    if (this.closeOnOpen) {
      this.closeOnOpen = false;
      this.webSocket.close();
      return;
    }
    logger.log("open", this.getProtocol());
    this.disconnected = false;
    if (!this.isProtocolSupported()) {
      this.close({ allowReconnect: false });
    }
  }
  onMessage({ data }) {
    if (!this.isProtocolSupported() || typeof data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(data) ?? {};
    } catch {
      return;
    }
    const { identifier, type } = frame;
    this.monitor.recordMessage();
    switch (type) {
      case types.welcome:
        if (this.getProtocol() === EXT_PROTOCOL && typeof frame.sid === "string") this.sessionId = frame.sid;
        this.monitor.recordConnect();
        this.subscriptions.reload();
        break;
      case types.disconnect:
        logger.log("disconnect", frame.reason);
        this.disconnectReason = frame.reason;
        this.close({ allowReconnect: !!frame.reconnect });
        break;
      case types.ping:
        break;
      case types.confirmation:
        this.subscriptions.confirmSubscription(identifier);
        break;
      case types.rejection:
        this.subscriptions.reject(identifier);
        break;
      // AnyCable's presence events and replies, on either protocol.
      case "presence":
        if (typeof identifier === "string") this.subscriptions.presenceMessage(identifier, frame.message);
        break;
      default:
        if (typeof identifier === "string") this.subscriptions.notify(identifier, "received", frame.message);
    }
  }
  onClose() {
    if (this.disconnected) return;
    this.disconnected = true;
    this.sessionId = void 0;
    this.subscriptions.disconnected();
    this.monitor.recordDisconnect();
    this.subscriptions.notifyAll("disconnected", { willAttemptReconnect: this.monitor.isRunning() });
  }
};
/** Milliseconds between closing a socket and opening the next one in `reopen()`. */
_Connection.reopenDelay = 500;
var Connection = _Connection;

// src/errors.ts
var SubscriptionRejectedError = class extends Error {
  constructor(identifier) {
    super(`rejected: ${identifier}`);
    this.name = "SubscriptionRejectedError";
    this.identifier = identifier;
  }
};
var ConnectionClosedError = class extends Error {
  constructor(identifier, reason) {
    super(`connection closed (${reason}): ${identifier}`);
    this.name = "ConnectionClosedError";
    this.identifier = identifier;
    this.reason = reason;
  }
};

// src/subscriptions.ts
var Subscription = class {
  constructor(consumer, params = {}, mixin) {
    /** Whether the server has confirmed this subscription at least once. */
    this.hasBeenConnected = false;
    /** Whether the server has confirmed this subscription on the current connection. */
    this.isConfirmed = false;
    this.consumer = consumer;
    this.identifier = JSON.stringify(params);
    this.presence = new SubscriptionPresence(this);
    if (mixin) {
      for (const key in mixin) this[key] = mixin[key];
    }
  }
  /** Calls the channel's action with `data` (plus `action`); false if the socket is not open. */
  perform(action, data) {
    return this.send({ ...data, action });
  }
  /** Sends `data` to the channel's `receive`; false if the socket is not open. */
  send(data) {
    return this.consumer.send({ command: "message", identifier: this.identifier, data: JSON.stringify(data) });
  }
  /**
   * Sends `data` to everyone else on the channel's whisper stream (AnyCable's
   * `whisper` command: "ann is typing"); they get it in `received`, the
   * sender does not. Transient: never kept in history. False if the socket
   * is not open.
   */
  whisper(data) {
    return this.consumer.send({ command: "whisper", identifier: this.identifier, data });
  }
  /** Removes the subscription; tells the server unless another one has the same identifier. */
  unsubscribe() {
    this.consumer.subscriptions.remove(this);
    return this;
  }
};
var SubscriptionPresence = class {
  constructor(subscription) {
    this.pending = [];
    this.subscription = subscription;
  }
  /** Joins as `id` with `info` (now if confirmed, else on confirmation); true if sent now. */
  join(id, info) {
    this.state = { id, info };
    return this.sendJoin();
  }
  /** Leaves the presence (and stops joining on reconnects); true if sent now. */
  leave() {
    if (!this.state) return false;
    this.state = void 0;
    return this.subscription.isConfirmed && this.send({ command: "leave" });
  }
  /**
   * Who is present now: resolves with the server's reply; rejects when the
   * server cannot tell (`{"type":"error"}`), the subscription is not
   * confirmed, or the connection closes first.
   */
  info() {
    if (!this.subscription.isConfirmed || !this.send({ command: "presence", data: {} })) {
      return Promise.reject(new Error(`cable: presence info of ${this.subscription.identifier}: not connected`));
    }
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
  }
  /** Sends the kept join, if any, when the subscription is confirmed. @internal */
  sendJoin() {
    const { state } = this;
    return !!state && this.subscription.isConfirmed && this.send({ command: "join", presence: state });
  }
  /** Settles the oldest `info()` with a reply; false if none waits. @internal */
  settle(message) {
    const waiting = this.pending.shift();
    if (!waiting) return false;
    if (message.type === "info") waiting.resolve({ total: message.total ?? 0, records: message.records ?? [] });
    else waiting.reject(new Error(`cable: presence info of ${this.subscription.identifier}: the server could not tell`));
    return true;
  }
  /** Rejects every pending `info()` (the connection closed, or the subscription ended). @internal */
  abandon(why) {
    for (const { reject } of this.pending.splice(0)) {
      reject(new Error(`cable: presence info of ${this.subscription.identifier}: ${why}`));
    }
  }
  send(command) {
    return this.subscription.consumer.send({ ...command, identifier: this.subscription.identifier });
  }
};
var _SubscriptionGuarantor = class _SubscriptionGuarantor {
  constructor(subscriptions) {
    this.pendingSubscriptions = [];
    this.subscriptions = subscriptions;
  }
  guarantee(subscription) {
    if (!this.pendingSubscriptions.includes(subscription)) this.pendingSubscriptions.push(subscription);
    this.startGuaranteeing();
  }
  forget(subscription) {
    this.pendingSubscriptions = this.pendingSubscriptions.filter((s) => s !== subscription);
    if (!this.pendingSubscriptions.length) this.stopGuaranteeing();
  }
  startGuaranteeing() {
    this.stopGuaranteeing();
    this.retryTimeout = setTimeout(() => {
      for (const subscription of this.pendingSubscriptions) this.subscriptions.subscribe(subscription);
    }, _SubscriptionGuarantor.retryDelay);
  }
  stopGuaranteeing() {
    clearTimeout(this.retryTimeout);
  }
};
_SubscriptionGuarantor.retryDelay = 500;
var SubscriptionGuarantor = _SubscriptionGuarantor;
var Subscriptions = class {
  constructor(consumer) {
    this.subscriptions = [];
    this.consumer = consumer;
    this.guarantor = new SubscriptionGuarantor(this);
  }
  /**
   * Subscribes to a channel: `channel` is the channel name or the params
   * (`{ channel: "ChatChannel", room: "lobby" }`). Connects the consumer if it
   * is not connected, calls `initialized`, then `connected` once confirmed.
   */
  create(channel, mixin) {
    const params = typeof channel === "object" ? channel : { channel };
    return this.add(new Subscription(this.consumer, params, mixin));
  }
  add(subscription) {
    this.subscriptions.push(subscription);
    this.consumer.ensureActiveConnection();
    this.notify(subscription, "initialized");
    this.subscribe(subscription);
    return subscription;
  }
  remove(subscription) {
    this.forget(subscription);
    if (!this.findAll(subscription.identifier).length) this.sendCommand(subscription, "unsubscribe");
    return subscription;
  }
  /** The server rejected `identifier`: drop its subscriptions and call `rejected`. */
  reject(identifier) {
    return this.findAll(identifier).map((subscription) => {
      this.forget(subscription);
      this.notify(subscription, "rejected");
      return subscription;
    });
  }
  forget(subscription) {
    subscription.isConfirmed = false;
    subscription.presence.state = void 0;
    subscription.presence.abandon("unsubscribed");
    this.guarantor.forget(subscription);
    this.subscriptions = this.subscriptions.filter((s) => s !== subscription);
    return subscription;
  }
  findAll(identifier) {
    return this.subscriptions.filter((s) => s.identifier === identifier);
  }
  /** Sends `subscribe` for every subscription (after each welcome). */
  reload() {
    for (const subscription of this.subscriptions) this.subscribe(subscription);
  }
  notifyAll(callbackName, ...args) {
    for (const subscription of this.subscriptions) this.notify(subscription, callbackName, ...args);
  }
  /** Calls `callbackName` on a subscription, or on every subscription with that identifier. */
  notify(subscription, callbackName, ...args) {
    const targets = typeof subscription === "string" ? this.findAll(subscription) : [subscription];
    for (const target of targets) {
      const callback = target[callbackName];
      if (typeof callback === "function") callback.apply(target, args);
    }
  }
  subscribe(subscription) {
    if (this.sendCommand(subscription, "subscribe")) this.guarantor.guarantee(subscription);
  }
  /** The server confirmed `identifier`: stop re-sending and call `connected`. */
  confirmSubscription(identifier) {
    for (const subscription of this.findAll(identifier)) {
      this.guarantor.forget(subscription);
      const reconnected = subscription.hasBeenConnected;
      subscription.hasBeenConnected = true;
      subscription.isConfirmed = true;
      subscription.presence.sendJoin();
      this.notify(subscription, "connected", { reconnected });
    }
  }
  /** The connection closed: nothing is confirmed any more, pending `info()`s fail. */
  disconnected() {
    for (const subscription of this.subscriptions) {
      subscription.isConfirmed = false;
      subscription.presence.abandon("the connection closed");
    }
  }
  /**
   * A `presence` frame: an `info` or `error` reply settles the oldest
   * pending `info()`; a `join` or `leave` goes to `presenceChanged`.
   */
  presenceMessage(identifier, message) {
    if (!message || typeof message !== "object") return;
    const targets = this.findAll(identifier);
    if (message.type === "info" || message.type === "error") {
      targets.some((subscription) => subscription.presence.settle(message));
    } else if ((message.type === "join" || message.type === "leave") && typeof message.id === "string") {
      for (const subscription of targets) this.notify(subscription, "presenceChanged", message);
    }
  }
  sendCommand(subscription, command) {
    return this.consumer.send({ command, identifier: subscription.identifier });
  }
};

// src/url.ts
var g2 = globalThis;
function getConfig(name) {
  const element = g2.document?.head?.querySelector(`meta[name='action-cable-${name}']`);
  return element ? element.getAttribute("content") ?? void 0 : void 0;
}
function createWebSocketURL(url) {
  if (typeof url === "function") url = url();
  if (url && !/^wss?:/i.test(url)) {
    let href;
    try {
      href = new URL(url, g2.document?.baseURI ?? g2.location?.href).href;
    } catch {
      throw new TypeError(`cable: no page to resolve "${url}" against: use an absolute URL`);
    }
    return href.replace(/^http/, "ws");
  }
  return url;
}

// src/consumer.ts
var Consumer = class {
  constructor(url, options = {}) {
    this._url = url;
    this.options = options;
    this.subprotocols = [...options.protocols ?? []];
    this.subscriptions = new Subscriptions(this);
    this.connection = new Connection(this);
  }
  /** Whether AnyCable's extended protocol is offered (`{ protocol: "actioncable-v1-ext-json" }`). */
  get extended() {
    return this.options.protocol === EXT_PROTOCOL;
  }
  /** The URL to connect to, resolved again on every connect. */
  get url() {
    return createWebSocketURL(this._url);
  }
  send(data) {
    return this.connection.send(data);
  }
  connect() {
    return this.connection.open();
  }
  /** Closes the connection and stops reconnecting (until `connect()`). */
  disconnect() {
    this.connection.close({ allowReconnect: false });
  }
  ensureActiveConnection() {
    if (!this.connection.isActive()) return this.connection.open();
    return void 0;
  }
  /** Offers one more subprotocol from the next connect on. */
  addSubProtocol(subprotocol) {
    this.subprotocols = [...this.subprotocols, subprotocol];
  }
  /**
   * Subscribes and waits for the server's answer: resolves with the
   * subscription once confirmed; rejects with `SubscriptionRejectedError` if
   * the server rejects it, or with `ConnectionClosedError` if the connection
   * closes for good first (both remove the subscription). `callbacks` are
   * those of `subscriptions.create` and keep being called afterwards.
   */
  subscribe(channel, callbacks = {}, { signal } = {}) {
    return new Promise((resolve, reject) => {
      let settled = false;
      let subscription;
      const settle = (error) => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener("abort", onAbort);
        if (error === void 0) return resolve(subscription);
        if (subscription && this.subscriptions.subscriptions.includes(subscription)) {
          this.subscriptions.remove(subscription);
        }
        reject(error);
      };
      const onAbort = () => settle(signal.reason ?? new Error("aborted"));
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      const { connection } = this;
      subscription = this.subscriptions.create(channel, {
        ...callbacks,
        connected(details) {
          settle();
          callbacks.connected?.call(this, details);
        },
        rejected() {
          settle(new SubscriptionRejectedError(this.identifier));
          callbacks.rejected?.call(this);
        },
        disconnected(details) {
          callbacks.disconnected?.call(this, details);
          if (!details.willAttemptReconnect) {
            settle(new ConnectionClosedError(this.identifier, connection.disconnectReason));
          }
        }
      });
    });
  }
  /** Opens a socket to `url` with the configured implementation and headers. @internal */
  createWebSocket(protocols) {
    const { options } = this;
    const Impl = options.WebSocket ?? adapters.WebSocket ?? globalThis.WebSocket;
    if (!Impl) {
      throw new Error("cable: no WebSocket: pass createConsumer(url, { WebSocket })");
    }
    const headers = typeof options.headers === "function" ? options.headers() : options.headers;
    return headers ? new Impl(this.url, protocols, { headers }) : new Impl(this.url, protocols);
  }
};
function createConsumer(url = getConfig("url") || INTERNAL.default_mount_path, options) {
  return new Consumer(url, options);
}
export {
  Connection,
  ConnectionClosedError,
  ConnectionMonitor,
  Consumer,
  EXT_PROTOCOL,
  INTERNAL,
  Subscription,
  SubscriptionGuarantor,
  SubscriptionPresence,
  SubscriptionRejectedError,
  Subscriptions,
  adapters,
  createConsumer,
  createWebSocketURL,
  getConfig,
  logger
};
