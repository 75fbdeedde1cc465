// What every Node suite of this repository needs around a test, whichever
// client it drives: a free port, bounded polling, and a Scope that closes a
// test's clients and servers and prints their logs when it fails.
// tests/node and js-client's integration tests both import it; it uses
// Node's built-in modules only, so it needs no package of its own.

import net from "node:net";
import { after, afterEach } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

export { sleep };

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Polls `predicate` every 25 ms until it returns a truthy value, which is
 * returned. On timeout, throws an Error naming `what` and including `diag()`.
 */
export async function waitFor(what, predicate, { timeout = 10_000, diag } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() >= deadline) {
      const extra = diag ? `\n${diag()}` : "";
      throw new Error(`timed out after ${timeout} ms waiting for: ${what}${extra}`);
    }
    await sleep(25);
  }
}

/** POSTs `json` to `url`; returns `{ status, body }` (the body as text). */
export async function postJson(url, json) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(json),
  });
  return { status: res.status, body: await res.text() };
}

/**
 * The clients and servers of a test or suite. Subclasses add them with
 * keepClient() / keepServer(); each client has `dump()` and `close()`,
 * each server `logTail()` and `stop()`.
 */
export class Scope {
  clients = [];
  servers = [];

  /** Keeps `c` (returned) for dump() and closeClients(). */
  keepClient(c) {
    this.clients.push(c);
    return c;
  }

  /** Keeps `s` (returned) for dump() and closeAll(). */
  keepServer(s) {
    this.servers.push(s);
    return s;
  }

  /** A server's part of the dump. */
  serverDump(s) {
    return `--- server :${s.port} log tail ---\n${s.logTail()}`;
  }

  /** How closeAll() stops a server. */
  stopServer(s) {
    return s.stop();
  }

  dump() {
    return [...this.clients.map((c) => c.dump()), ...this.servers.map((s) => this.serverDump(s))].join("\n");
  }

  waitFor(what, predicate, timeout = 10_000) {
    return waitFor(what, predicate, { timeout, diag: () => this.dump() });
  }

  /** Wraps a test body so that a failure is reported with the clients' and servers' logs. */
  wrap(fn) {
    return async (t) => {
      try {
        await fn(t);
      } catch (err) {
        // waitFor() timeouts already carry the dump in their message.
        if (!String(err?.message).includes("--- ")) t.diagnostic(this.dump());
        throw err;
      }
    };
  }

  /** Registers the suite's hooks: clients closed after each test, everything after the suite. */
  closeAfterEach() {
    afterEach(() => this.closeClients());
    after(() => this.closeAll());
  }

  async closeClients() {
    const clients = this.clients;
    this.clients = [];
    await Promise.all(clients.map((c) => c.close()));
  }

  async closeAll() {
    await this.closeClients();
    await Promise.all(this.servers.map((s) => this.stopServer(s)));
    this.servers = [];
  }
}
