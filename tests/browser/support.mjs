// What the browser suites share: where Chromium and the binaries are, the
// SKIPPED rule, free ports, and spawning a server until it listens.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import { resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

export const REPO = fileURLToPath(new URL("../../", import.meta.url));
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** A debug binary of this workspace, unless `envVar` names another. */
export function binary(envVar, name) {
  return process.env[envVar] || resolve(REPO, process.env.CARGO_TARGET_DIR || "target", "debug", name);
}

/**
 * Why `suite` cannot run: `needs` is a list of [path, how to get it], Chromium
 * always among them. Undefined when all are there. Prints a SKIPPED line, or
 * throws when CI is set (CI never skips).
 */
export function skipReason(suite, needs) {
  const missing = [[CHROMIUM, "Chromium (apt-get install chromium)"], ...needs]
    .filter(([path]) => !existsSync(path))
    .map(([path, what]) => `${what} not found at ${path}`);
  if (!missing.length) return undefined;
  const reason = missing.join("; ");
  if (process.env.CI) throw new Error(`${suite} cannot run: ${reason}; CI is set, so this is an error`);
  console.log(`SKIPPED: ${suite}: ${reason}`);
  return reason;
}

export function freePort() {
  return new Promise((ok, fail) => {
    const srv = net.createServer();
    srv.on("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

const children = new Set();
process.on("exit", () => children.forEach((c) => c.kill("SIGKILL")));

/** Spawns `bin` and resolves once it logs that it listens; `stop()` ends it. */
export async function startServer(bin, args, env = process.env) {
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], env });
  children.add(child);
  let log = "";
  const exited = new Promise((ok) => child.once("exit", (code, signal) => (children.delete(child), ok({ code, signal }))));
  for (const s of [child.stdout, child.stderr]) s.on("data", (d) => (log += d.toString()));
  const deadline = Date.now() + 20_000;
  while (!/listening on/i.test(log)) {
    if (!children.has(child) || Date.now() > deadline) throw new Error(`${bin} did not start:\n${log}`);
    await sleep(25);
  }
  return {
    log: () => log,
    async stop() {
      child.kill("SIGTERM");
      return exited;
    },
  };
}
