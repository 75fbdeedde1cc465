// The unmodified @anycable/web client against cable-server configured by
// AnyCable's ANYCABLE_* variables alone (no CABLE_*, no flags): a JWT made
// by the standard `jsonwebtoken` library in AnyCable's layout identifies the
// connection (as ?jid= and as the anycable-token subprotocol), the client
// streams from a public $pubsub stream and receives what is POSTed to
// /_broadcast in AnyCable's format with the key derived from the secret; an
// expired token gets token_expired (the tokenRefresher is called); with
// ANYCABLE_ENFORCE_JWT, no token is unauthorized.
//
//   cargo build -p cable-standalone --bin cable-server
//   cd tests/node && npm ci && node --test anycable_settings.test.mjs
//
// Env: CABLE_SERVER_BIN overrides the server binary.

import assert from "node:assert/strict";
import { after, afterEach, before, describe, it } from "node:test";
import WebSocket from "ws";

import { RecordingCable, Scope, anycableToken, broadcastKey, killAllServers, postBroadcast } from "./helpers.mjs";

const SECRET = "anycable-test-secret-1234";
// printf broadcast-cable | openssl dgst -sha256 -hmac SECRET
const BROADCAST_KEY = broadcastKey(SECRET);

after(killAllServers);

/** A token in AnyCable's layout: identifiers as JSON text in `ext`, `exp` in s. */
const token = (ids, ttlSeconds, key = SECRET) => anycableToken(ids, ttlSeconds, key);

/** A recording @anycable/web cable that also records its events. */
class Client extends RecordingCable {
  /** `origin`: the Origin header; default the server's own, null for none. */
  constructor(url, options = {}) {
    super(url, options);
    this.events = [];
    for (const ev of ["connect", "disconnect", "close"]) {
      this.cable.on(ev, (e) => this.events.push({ ev, reason: e?.reason }));
    }
  }

  dump() {
    return `${super.dump()}\nevents ${JSON.stringify(this.events)}`;
  }
}

class JwtScope extends Scope {
  anycable(url, options) {
    return this.keepClient(new Client(url, options));
  }
}

function broadcast(server, stream, data, key = BROADCAST_KEY) {
  return postBroadcast(server, stream, data, key);
}

describe("cable-server configured by ANYCABLE_* variables, with @anycable/web", () => {
  const scope = new JwtScope();
  let server;

  before(async () => {
    server = await scope.anycableServer({
      ANYCABLE_SECRET: SECRET,
      ANYCABLE_PUBLIC_STREAMS: "true",
      ANYCABLE_BROADCAST_ADAPTER: "http",
      ANYCABLE_RPC_HOST: "localhost:50051",
    });
  });
  afterEach(() => scope.closeClients());
  after(() => scope.closeAll());

  for (const strategy of ["param", "sub-protocol"]) {
    it(
      `a JWT (${strategy}) identifies the connection; a public stream gets /_broadcast's message`,
      { timeout: 30_000 },
      scope.wrap(async () => {
        const jid = token({ user_id: "42" }, 60);
        const c = scope.anycable(server.cableUrl, {
          websocketAuthStrategy: strategy,
          auth: { token: jid },
        });
        const construct = () => c.wire.find((w) => w.kind === "construct")?.data;
        const got = [];
        const channel = c.cable.streamFrom("anycable_news");
        channel.on("message", (m) => got.push(m));
        await scope.waitFor("subscribed", () => c.framesIn().some((f) => f.type === "confirm_subscription"));
        const offered = construct();
        if (strategy === "param") {
          assert.equal(new URL(offered.address).searchParams.get("jid"), jid);
        } else {
          assert.ok(offered.protocols.includes(`anycable-token.${jid}`), JSON.stringify(offered));
          assert.equal(new URL(offered.address).searchParams.get("jid"), null);
        }
        assert.equal(c.framesIn()[0].type, "welcome");
        // Wrong key: refused; the derived key: delivered.
        assert.equal(await broadcast(server, "anycable_news", { n: 0 }, "wrong-key-wrong-key"), 401);
        assert.equal(await broadcast(server, "anycable_news", { n: 1 }), 201);
        await scope.waitFor("the broadcast", () => got.length === 1);
        assert.deepEqual(got, [{ n: 1 }]);
        assert.ok(/AnyCable settings cable does not have, ignored: .*ANYCABLE_RPC_HOST/.test(server.log), server.logTail());
        assert.ok(!server.log.includes("localhost:50051"), "values of ignored settings are never logged");
      }),
    );
  }

  it(
    "an expired JWT gets token_expired and the tokenRefresher is called",
    { timeout: 30_000 },
    scope.wrap(async () => {
      let refreshed = 0;
      const c = scope.anycable(server.cableUrl, {
        auth: { token: token({ user_id: "42" }, -10) },
        tokenRefresher: async (transport) => {
          refreshed++;
          transport.setToken(token({ user_id: "42" }, 60), "jid");
        },
      });
      c.cable.connect().catch(() => {});
      await scope.waitFor("a disconnect frame", () =>
        c.framesIn().some((f) => f.type === "disconnect"),
      );
      const frame = c.framesIn().find((f) => f.type === "disconnect");
      assert.deepEqual(frame, { type: "disconnect", reason: "token_expired", reconnect: false });
      await scope.waitFor("the client tells token_expired", () =>
        c.events.some((e) => e.reason === "token_expired"),
      );
      await scope.waitFor("the token refresher", () => refreshed === 1);
      await scope.waitFor("a welcome with the refreshed token", () =>
        c.framesIn().some((f) => f.type === "welcome"),
      );
    }),
  );

  it(
    "as AnyCable, no origin is checked unless ANYCABLE_ALLOWED_ORIGINS names hosts",
    { timeout: 30_000 },
    scope.wrap(async () => {
      // The server above names no origins: a client sending none (Node's
      // ws by default) and one from another site both get welcome.
      for (const origin of [null, "https://elsewhere.test"]) {
        const c = scope.anycable(server.cableUrl, { origin });
        c.cable.connect().catch(() => {});
        await scope.waitFor(`welcome (Origin ${origin})`, () => c.framesIn().some((f) => f.type === "welcome"));
      }
      assert.ok(/origin check off, as AnyCable's/.test(server.log), server.logTail());
      // AnyCable's host list: its hosts in, others refused at the handshake.
      const listed = await scope.anycableServer({
        ANYCABLE_PUBLIC_STREAMS: "true",
        ANYCABLE_ALLOWED_ORIGINS: "www.example.com,*.example.io",
      });
      for (const origin of ["https://www.example.com", "http://a.example.io"]) {
        const c = scope.anycable(listed.cableUrl, { origin });
        c.cable.connect().catch(() => {});
        await scope.waitFor(`welcome (Origin ${origin})`, () => c.framesIn().some((f) => f.type === "welcome"));
      }
      for (const origin of ["https://evil.test", null]) {
        const status = await new Promise((resolve) => {
          const ws = new WebSocket(listed.cableUrl, ["actioncable-v1-json"], origin ? { headers: { Origin: origin } } : {});
          ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
          ws.on("open", () => { ws.terminate(); resolve("open"); });
          ws.on("error", () => {});
        });
        assert.notEqual(status, "open", `Origin ${origin} must be refused`);
      }
      assert.ok(!/origin check off/.test(listed.log), listed.logTail());
    }),
  );

  it(
    "with ANYCABLE_ENFORCE_JWT, a connection without a token is unauthorized",
    { timeout: 30_000 },
    scope.wrap(async () => {
      const enforced = await scope.anycableServer({ ANYCABLE_JWT_SECRET: SECRET, ANYCABLE_ENFORCE_JWT: "true" });
      const c = scope.anycable(enforced.cableUrl);
      c.cable.connect().catch(() => {});
      await scope.waitFor("a disconnect frame", () => c.framesIn().some((f) => f.type === "disconnect"));
      assert.equal(c.framesIn().find((f) => f.type === "disconnect").reason, "unauthorized");
      assert.ok(!c.framesIn().some((f) => f.type === "welcome"));
      // With a token, welcome.
      const ok = scope.anycable(enforced.cableUrl, { auth: { token: token({ user_id: "7" }, 60) } });
      ok.cable.connect().catch(() => {});
      await scope.waitFor("welcome", () => ok.framesIn().some((f) => f.type === "welcome"));
    }),
  );
});
