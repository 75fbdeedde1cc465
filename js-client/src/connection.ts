import { logger } from "./adapters.js";
import type { Consumer } from "./consumer.js";
import { EXT_PROTOCOL, INTERNAL, PROTOCOL } from "./internal.js";
import { ConnectionMonitor } from "./monitor.js";
import type { Subscriptions } from "./subscriptions.js";
import type { WebSocketLike } from "./types.js";

const { message_types: types } = INTERNAL;
const STATES = ["connecting", "open", "closing", "closed"] as const;

/** A server frame, as far as the client reads it. */
interface ServerMessage {
  type?: string;
  identifier?: string;
  message?: unknown;
  reason?: string | null;
  reconnect?: boolean;
  sid?: string;
}

/**
 * The consumer's WebSocket: opens and reopens it, reads server frames and
 * dispatches them to the subscriptions. Internal, as in @rails/actioncable:
 * use the consumer's methods.
 */
export class Connection {
  /** Milliseconds between closing a socket and opening the next one in `reopen()`. */
  static reopenDelay = 500;

  readonly consumer: Consumer;
  readonly subscriptions: Subscriptions;
  readonly monitor: ConnectionMonitor;
  webSocket?: WebSocketLike;
  /** True until a socket opens, and again after it closed. */
  disconnected = true;
  /** The session id of AnyCable's extended protocol (its welcome's `sid`), while connected on it. */
  sessionId?: string;
  /** The reason of the last `disconnect` message from the server (e.g. "unauthorized"). */
  disconnectReason?: string | null;
  /** `disconnect()` came while the socket was still connecting: close it once it opens. */
  private closeOnOpen = false;

  constructor(consumer: Consumer) {
    this.consumer = consumer;
    this.subscriptions = consumer.subscriptions;
    this.monitor = new ConnectionMonitor(this);
    this.open = this.open.bind(this);
  }

  /** Sends a command if the socket is open; returns whether it was sent. */
  send(data: object): boolean {
    if (this.isOpen()) {
      this.webSocket!.send(JSON.stringify(data));
      return true;
    }
    return false;
  }

  /** Opens a new socket unless one is open or connecting; starts the monitor. */
  open(): boolean {
    if (this.isActive()) {
      if (this.closeOnOpen) {
        // connect() after disconnect() while connecting: keep that socket after all.
        this.closeOnOpen = false;
        this.monitor.start();
      }
      return false;
    }
    const protocols = [...INTERNAL.protocols, ...this.consumer.subprotocols];
    if (this.consumer.extended) protocols.unshift(EXT_PROTOCOL);
    this.closeOnOpen = false;
    const socket = (this.webSocket = this.consumer.createWebSocket(protocols));
    // Events of an earlier socket (closing late, after a reopen) are ignored.
    const handler = (fn: (event: any) => void) => (event: any) => {
      if (socket === this.webSocket) fn.call(this, event);
    };
    socket.onopen = handler(this.onOpen);
    socket.onmessage = handler(this.onMessage);
    socket.onclose = handler(this.onClose);
    // `ws` emits "error" as an EventEmitter event, which throws when nobody listens.
    socket.onerror = () => {};
    this.monitor.start();
    return true;
  }

  /**
   * Closes the socket. With `allowReconnect: false` the monitor stops, so
   * nothing reconnects until `open()`. A socket that is still connecting is not
   * closed (Safari mishandles that), but with `allowReconnect: false` it is
   * closed as soon as it opens, before the server's welcome is read.
   */
  close(options: { allowReconnect?: boolean } = { allowReconnect: true }): void {
    if (!options.allowReconnect) this.monitor.stop();
    if (this.isOpen()) this.webSocket!.close();
    else if (!options.allowReconnect && this.isState("connecting")) this.closeOnOpen = true;
  }

  /** Closes the socket and opens a new one `reopenDelay` ms later (at once if none is active). */
  reopen(): void {
    if (this.isActive()) {
      try {
        this.close();
      } finally {
        setTimeout(this.open, Connection.reopenDelay);
      }
    } else {
      this.open();
    }
  }

  getProtocol(): string | undefined {
    return this.webSocket?.protocol;
  }

  isOpen(): boolean {
    return this.isState("open");
  }

  isActive(): boolean {
    return this.isState("open", "connecting");
  }

  /** "connecting", "open", "closing", "closed", or null without a socket. */
  getState(): string | null {
    return this.webSocket ? (STATES[this.webSocket.readyState] ?? null) : null;
  }

  isState(...states: string[]): boolean {
    return states.includes(this.getState()!);
  }

  isProtocolSupported(): boolean {
    const protocol = this.getProtocol();
    return protocol === PROTOCOL || (this.consumer.extended && protocol === EXT_PROTOCOL);
  }

  private onOpen(): void {
    if (this.closeOnOpen) {
      this.closeOnOpen = false;
      this.webSocket!.close();
      return;
    }
    logger.log("open", this.getProtocol());
    this.disconnected = false;
    if (!this.isProtocolSupported()) {
      this.close({ allowReconnect: false });
    }
  }

  private onMessage({ data }: { data: unknown }): void {
    if (!this.isProtocolSupported() || typeof data !== "string") return;
    let frame: ServerMessage;
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
        this.subscriptions.confirmSubscription(identifier!);
        break;
      case types.rejection:
        this.subscriptions.reject(identifier!);
        break;
      // AnyCable's presence events and replies, on either protocol.
      case "presence":
        if (typeof identifier === "string") this.subscriptions.presenceMessage(identifier, frame.message);
        break;
      default:
        if (typeof identifier === "string") this.subscriptions.notify(identifier, "received", frame.message);
    }
  }

  private onClose(): void {
    if (this.disconnected) return;
    this.disconnected = true;
    this.sessionId = undefined;
    this.subscriptions.disconnected();
    this.monitor.recordDisconnect();
    this.subscriptions.notifyAll("disconnected", { willAttemptReconnect: this.monitor.isRunning() });
  }
}
