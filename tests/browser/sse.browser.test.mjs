// Server-Sent Events in a real browser: Debian's Chromium and its native
// EventSource (playwright-core drives it), against the real binaries.
// - The chat example: a subscription by channel and params hears the room;
//   the connection is cut under the page (a TCP proxy in this process
//   destroys it), Chromium re-opens it by itself with Last-Event-ID, and
//   exactly the broadcasts it missed are replayed; a POST of JSONL commands
//   (fetch, read as a stream) subscribes.
// - cable-server (ANYCABLE_SSE): a signed stream receives broadcasts.
//
// Env: CHAT_BIN, CABLE_SERVER_BIN, CHROMIUM (see support.mjs).

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import net from "node:net";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { CHROMIUM, CHROMIUM_ARGS, binary, freePort, skipReason, startServer } from "./support.mjs";

const CHAT_BIN = binary("CHAT_BIN", "chat");
const SERVER_BIN = binary("CABLE_SERVER_BIN", "cable-server");
const SECRET = "sse-browser-secret-1234";
const skip = skipReason("SSE browser tests", [
  [CHAT_BIN, "chat binary (cargo build -p chat-example --bin chat)"],
  [SERVER_BIN, "cable-server (cargo build -p cable-standalone --bin cable-server)"],
]);

/** A TCP proxy to `port` whose connections `cut()` destroys at once. */
async function cuttingProxy(port) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  const own = await freePort();
  await new Promise((ok) => server.listen(own, "127.0.0.1", ok));
  return {
    port: own,
    cut: () => sockets.forEach((s) => s.destroy()),
    close: () => (sockets.forEach((s) => s.destroy()), server.close()),
  };
}

async function until(what, check, timeout = 15_000) {
  const deadline = Date.now() + timeout;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** Opens an EventSource in `page` at `url`, recording into window.sse. */
async function openSource(page, url) {
  await page.evaluate((url) => {
    const sse = { messages: [], events: [], opened: 0 };
    window.sse = sse;
    const source = new EventSource(url);
    source.onopen = () => sse.opened++;
    source.onmessage = (e) => sse.messages.push({ data: JSON.parse(e.data), id: e.lastEventId });
    for (const type of ["welcome", "confirm_subscription", "confirm_history", "reject_history"]) {
      source.addEventListener(type, () => sse.events.push(type));
    }
  }, url);
}

const state = (page) => page.evaluate(() => window.sse);

if (skip) it("SSE in headless Chromium", { skip }, () => {});

describe("SSE in headless Chromium (native EventSource)", { skip: !!skip }, () => {
  let chromium;
  let browser;
  const stops = [];

  before(async () => {
    ({ chromium } = await import("playwright-core"));
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  });

  after(async () => {
    await browser?.close();
    for (const stop of stops) await stop();
  });

  async function chat() {
    const port = await freePort();
    const server = await startServer(CHAT_BIN, ["--bind", `127.0.0.1:${port}`, "--admin"]);
    stops.push(() => server.stop());
    const say = async (n) => {
      const res = await fetch(`http://127.0.0.1:${port}/admin/broadcast`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ stream: "chat_lobby", message: { n } }),
      });
      assert.ok(res.ok, `admin broadcast: ${res.status}`);
    };
    return { port, say };
  }

  const LOBBY = `/events?user=eve&channel=ChatChannel&params=${encodeURIComponent(JSON.stringify({ room: "lobby" }))}`;

  it("a subscription by channel hears the room, and a cut connection resumes with Last-Event-ID", { timeout: 60_000 }, async () => {
    const { port, say } = await chat();
    const proxy = await cuttingProxy(port);
    stops.push(async () => proxy.close());
    const page = await (await browser.newContext()).newPage();
    // The page and its EventSource both go through the proxy (same origin).
    await page.goto(`http://127.0.0.1:${proxy.port}/`);
    await openSource(page, LOBBY);
    await until("subscribed", async () => (await state(page)).events.includes("confirm_subscription"));
    for (const n of [1, 2]) await say(n);
    await until("1 and 2", async () => (await state(page)).messages.length === 2);
    proxy.cut();
    for (const n of [3, 4]) await say(n);
    await until("Chromium re-opened it", async () => (await state(page)).opened >= 2, 20_000);
    await until("the history replayed", async () => (await state(page)).events.includes("confirm_history"));
    await say(5);
    await until("5 live", async () => (await state(page)).messages.length >= 5);
    await sleep(300);
    const { messages } = await state(page);
    assert.deepEqual(messages.map((m) => m.data.n), [1, 2, 3, 4, 5], "each once, in order");
    assert.match(messages[4].id, /^5\/[^/]+\/chat_lobby$/);
    await page.context().close();
  });

  it("a POST of JSONL commands subscribes and streams (fetch)", { timeout: 30_000 }, async () => {
    const { port, say } = await chat();
    const page = await (await browser.newContext()).newPage();
    await page.goto(`http://127.0.0.1:${port}/`);
    const identifier = JSON.stringify({ channel: "ChatChannel", room: "lobby" });
    await page.evaluate((identifier) => {
      window.posted = "";
      const body = `${JSON.stringify({ command: "subscribe", identifier })}\n`;
      fetch("/events?user=eve", { method: "POST", body }).then(async (res) => {
        window.postStatus = res.status;
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          window.posted += decoder.decode(value);
        }
      });
    }, identifier);
    await until("confirmed", async () => (await page.evaluate(() => window.posted)).includes("event: confirm_subscription"));
    assert.equal(await page.evaluate(() => window.postStatus), 200);
    await say(7);
    await until("the frame", async () => (await page.evaluate(() => window.posted)).includes('"message":{"n":7}'));
    await page.context().close();
  });

  it("cable-server: a signed stream receives broadcasts", { timeout: 30_000 }, async () => {
    const port = await freePort();
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(ANY)?CABLE_/.test(k)));
    Object.assign(env, {
      ANYCABLE_PORT: String(port),
      ANYCABLE_SECRET: SECRET,
      ANYCABLE_BROADCAST_ADAPTER: "http",
      ANYCABLE_SSE: "true",
    });
    const server = await startServer(SERVER_BIN, [], env);
    stops.push(() => server.stop());
    const stream = `browser_signed_${process.pid}`;
    const encoded = Buffer.from(JSON.stringify(stream)).toString("base64");
    const signed = `${encoded}--${createHmac("sha256", SECRET).update(encoded).digest("hex")}`;
    const page = await (await browser.newContext()).newPage();
    await page.goto(`http://127.0.0.1:${port}/health`);
    await openSource(page, `/events?signed_stream=${encodeURIComponent(signed)}`);
    await until("subscribed", async () => (await state(page)).events.includes("confirm_subscription"));
    const key = createHmac("sha256", SECRET).update("broadcast-cable").digest("hex");
    const res = await fetch(`http://127.0.0.1:${port}/_broadcast`, {
      method: "POST",
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
      body: JSON.stringify({ stream, data: JSON.stringify({ signed: true }) }),
    });
    assert.equal(res.status, 201);
    await until("the broadcast", async () => (await state(page)).messages.length === 1);
    assert.deepEqual((await state(page)).messages[0].data, { signed: true });
    await page.context().close();
  });
});
