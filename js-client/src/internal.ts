// Protocol constants of the actioncable-v1-json subprotocol (the same values,
// under the same names, as @rails/actioncable's INTERNAL export).

export const INTERNAL = {
  message_types: {
    welcome: "welcome",
    disconnect: "disconnect",
    ping: "ping",
    confirmation: "confirm_subscription",
    rejection: "reject_subscription",
  },
  disconnect_reasons: {
    unauthorized: "unauthorized",
    invalid_request: "invalid_request",
    server_restart: "server_restart",
    remote: "remote",
  },
  default_mount_path: "/cable",
  protocols: ["actioncable-v1-json", "actioncable-unsupported"],
} as const;

/** The only subprotocol this client can speak. */
export const PROTOCOL = INTERNAL.protocols[0];

/**
 * AnyCable's extended protocol, offered (before `actioncable-v1-json`) only
 * when a consumer asks for it with `{ protocol: EXT_PROTOCOL }`.
 */
export const EXT_PROTOCOL = "actioncable-v1-ext-json";
