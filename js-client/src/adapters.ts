import type { WebSocketConstructor } from "./types.js";

/**
 * Process-wide defaults, as in @rails/actioncable: set
 * `adapters.WebSocket = WebSocket` (from `ws`) once instead of passing it to
 * every consumer. `logger` receives the debug log when `logger.enabled`.
 */
export const adapters: {
  WebSocket: WebSocketConstructor | undefined;
  logger: { log(...data: unknown[]): void } | undefined;
} = {
  WebSocket: undefined,
  logger: typeof console !== "undefined" ? console : undefined,
};

/** The debug log; off by default (`logger.enabled = true` turns it on). */
export const logger = {
  enabled: false,
  log(...messages: unknown[]): void {
    if (this.enabled) adapters.logger?.log("[cable]", ...messages, Date.now());
  },
};
