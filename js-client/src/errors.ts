/** `consumer.subscribe()` was rejected by the server (the channel called `reject`). */
export class SubscriptionRejectedError extends Error {
  /** The subscription's identifier (its params as JSON). */
  readonly identifier: string;

  constructor(identifier: string) {
    super(`rejected: ${identifier}`);
    this.name = "SubscriptionRejectedError";
    this.identifier = identifier;
  }
}

/**
 * `consumer.subscribe()` could not complete: the connection closed for good
 * before the server confirmed (the server said `reconnect: false`, e.g. an
 * unauthorized connection, or `consumer.disconnect()` was called).
 */
export class ConnectionClosedError extends Error {
  /** The subscription's identifier. */
  readonly identifier: string;
  /** The server's disconnect reason (`"unauthorized"`, ...), if it sent one. */
  readonly reason: string | null | undefined;

  constructor(identifier: string, reason: string | null | undefined) {
    super(`connection closed (${reason}): ${identifier}`);
    this.name = "ConnectionClosedError";
    this.identifier = identifier;
    this.reason = reason;
  }
}
