import { logger } from "./adapters.js";
import type { Connection } from "./connection.js";

const g = globalThis as any;
const now = () => Date.now();
const secondsSince = (time: number) => (now() - time) / 1000;

/**
 * Keeps the connection alive. Every message from the server (pings come every
 * 3 s) refreshes it; a poll timer checks whether it went stale (nothing for
 * more than `staleThreshold` seconds) and then reopens the socket, backing
 * off between polls. Also reopens when a hidden page becomes visible again
 * and, beyond @rails/actioncable, at once on the browser's `online` event.
 *
 * Poll interval: `staleThreshold * 1000 * (1 + rate) ** min(attempts, 10) *
 * (1 + jitter)`, jitter uniform in [0, 1) before the first failed attempt and
 * in [0, rate) after (the Rails 7.1+ schedule).
 */
export class ConnectionMonitor {
  /** Seconds without a message after which the connection counts as stale (two missed pings). */
  static staleThreshold = 6;
  /** Growth of the poll interval per reconnect attempt. */
  static reconnectionBackoffRate = 0.15;
  /** Delay before checking the connection after the page became visible, in ms. */
  static visibilityDelay = 200;

  readonly connection: Connection;
  /** Reopens since the last welcome. */
  reconnectAttempts = 0;
  startedAt?: number;
  stoppedAt?: number;
  pingedAt?: number;
  disconnectedAt?: number;
  private pollTimeout?: unknown;

  constructor(connection: Connection) {
    this.connection = connection;
    this.visibilityDidChange = this.visibilityDidChange.bind(this);
    this.online = this.online.bind(this);
  }

  private get config(): typeof ConnectionMonitor {
    return this.constructor as typeof ConnectionMonitor;
  }

  start(): void {
    if (!this.isRunning()) {
      this.startedAt = now();
      this.stoppedAt = undefined;
      this.startPolling();
      this.listen("addEventListener");
    }
  }

  stop(): void {
    if (this.isRunning()) {
      this.stoppedAt = now();
      this.stopPolling();
      this.listen("removeEventListener");
    }
  }

  isRunning(): boolean {
    return this.startedAt !== undefined && this.stoppedAt === undefined;
  }

  recordMessage(): void {
    this.pingedAt = now();
  }

  recordConnect(): void {
    this.reconnectAttempts = 0;
    this.disconnectedAt = undefined;
  }

  recordDisconnect(): void {
    this.disconnectedAt = now();
  }

  /** Milliseconds until the next staleness check. */
  getPollInterval(): number {
    const { staleThreshold, reconnectionBackoffRate: rate } = this.config;
    const backoff = (1 + rate) ** Math.min(this.reconnectAttempts, 10);
    const jitter = (this.reconnectAttempts === 0 ? 1 : rate) * Math.random();
    return staleThreshold * 1000 * backoff * (1 + jitter);
  }

  reconnectIfStale(): void {
    if (this.connectionIsStale()) {
      this.reconnectAttempts++;
      if (!this.disconnectedRecently()) {
        logger.log("stale: reopening, attempt", this.reconnectAttempts);
        this.connection.reopen();
      }
    }
  }

  /** When the server was last heard from (or the monitor started). */
  get refreshedAt(): number {
    return this.pingedAt ?? this.startedAt ?? now();
  }

  connectionIsStale(): boolean {
    return secondsSince(this.refreshedAt) > this.config.staleThreshold;
  }

  disconnectedRecently(): boolean {
    return this.disconnectedAt !== undefined && secondsSince(this.disconnectedAt) < this.config.staleThreshold;
  }

  private startPolling(): void {
    this.stopPolling();
    this.poll();
  }

  private stopPolling(): void {
    clearTimeout(this.pollTimeout);
  }

  private poll(): void {
    this.pollTimeout = setTimeout(() => {
      this.reconnectIfStale();
      this.poll();
    }, this.getPollInterval());
  }

  private listen(method: "addEventListener" | "removeEventListener"): void {
    if (typeof g[method] === "function") g[method]("online", this.online);
    if (typeof g.document?.[method] === "function") g.document[method]("visibilitychange", this.visibilityDidChange);
  }

  /** The page became visible: reopen if the connection is stale or closed. */
  visibilityDidChange(): void {
    if (g.document?.visibilityState === "visible") {
      setTimeout(() => {
        if (this.connectionIsStale() || !this.connection.isOpen()) {
          this.connection.reopen();
        }
      }, this.config.visibilityDelay);
    }
  }

  /** The network is back: reconnect now instead of at the next poll. */
  online(): void {
    if (!this.connection.isOpen()) {
      this.connection.reopen();
    }
  }
}
