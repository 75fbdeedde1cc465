// The chat example in a real browser: Debian's Chromium (/usr/bin/chromium,
// never a downloaded one) driven by playwright-core, against the real `chat`
// binary. Two users in two isolated browser contexts join one room; one sends
// a message and the other's page shows it. Run once on the page that uses the
// unmodified @rails/actioncable (`/`) and once on the page that uses
// @cable-rs/client (`/cable-client`), plus, on the latter, the reconnect on the
// browser's `online` event. On both pages, presence and whispers: who is in
// the room (joins, an explicit leave, a closed page) and "ann is typing…".
// Screenshots go to tests/artifacts/.
//
// Env: CHAT_BIN (default: debug/chat under $CARGO_TARGET_DIR or <repo>/target),
// CHROMIUM (default /usr/bin/chromium). Without Chromium or the binary the
// suite prints a SKIPPED line, unless CI is set (then it fails).

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { CHROMIUM, CHROMIUM_ARGS, REPO, binary, freePort, skipReason, startServer } from "./support.mjs";

const CHAT_BIN = binary("CHAT_BIN", "chat");
const ARTIFACTS = resolve(REPO, "tests", "artifacts");
const skip = skipReason("browser tests", [[CHAT_BIN, "chat binary (cargo build -p chat-example --bin chat)"]]);

// How long a page that went away without leaving stays listed. An explicit
// leave must be seen well within it, so the test tells the two apart.
const PRESENCE_TTL_S = 5;

/** Starts `chat --bind 127.0.0.1:PORT`; resolves once it logs that it listens. */
async function startChat(port) {
  const args = ["--bind", `127.0.0.1:${port}`, "--presence-ttl", String(PRESENCE_TTL_S)];
  return { port, origin: `http://127.0.0.1:${port}`, ...(await startServer(CHAT_BIN, args)) };
}

// When skipped, one skipped test stands for the suite (a skipped describe counts none).
if (skip) it("the chat page in headless Chromium", { skip }, () => {});

describe("the chat page in headless Chromium", { skip: !!skip }, () => {
  let chromium;
  let browser;
  let server;
  let port;

  before(async () => {
    ({ chromium } = await import("playwright-core"));
    mkdirSync(ARTIFACTS, { recursive: true });
    port = await freePort();
    server = await startChat(port);
    // launch() runs Chromium on a fresh temporary user-data-dir, removed on close.
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  /** A page for `user` in its own context (own cookies), with its errors and script loads recorded. */
  async function openChat(path, user, room) {
    const context = await browser.newContext({ viewport: { width: 720, height: 560 } });
    const page = await context.newPage();
    const errors = [];
    const scripts = [];
    // Commands the page sent on its WebSockets, parsed.
    const sent = [];
    page.on("websocket", (ws) =>
      ws.on("framesent", ({ payload }) => {
        try {
          sent.push(JSON.parse(String(payload)));
        } catch {
          sent.push(String(payload));
        }
      }),
    );
    page.on("pageerror", (e) => errors.push(String(e)));
    // Failed loads are checked by status below (Chromium asks for /favicon.ico, which 404s).
    page.on("console", (m) => m.type() === "error" && !/^Failed to load resource/.test(m.text()) && errors.push(m.text()));
    page.on("response", (r) => {
      const path = new URL(r.url()).pathname;
      if (r.status() >= 400 && path !== "/favicon.ico") errors.push(`HTTP ${r.status()} for ${path}`);
    });
    page.on("request", (r) => r.resourceType() === "script" && scripts.push(new URL(r.url()).pathname));
    await page.goto(`${server.origin}${path}?user=${user}&room=${room}`);
    const status = `connected to ${room} as ${user}`;
    await page.waitForFunction((s) => document.body.dataset.status === s, status, { timeout: 20_000 });
    return { page, context, errors, scripts, sent };
  }

  async function say(chat, text) {
    await chat.page.fill("#say input[name=body]", text);
    await chat.page.click("#say button");
  }

  function messages(chat) {
    return chat.page.$$eval("#messages li", (lis) => lis.map((li) => li.textContent));
  }

  /** Waits until the page's "in this room" list is `names` (sorted), at most `timeout` ms. */
  async function waitPresent(chat, names, timeout = 10_000) {
    try {
      await chat.page.waitForFunction(
        (want) => JSON.stringify([...document.querySelectorAll("#present li")].map((li) => li.textContent)) === want,
        JSON.stringify(names),
        { timeout },
      );
    } catch (e) {
      const got = await chat.page.$$eval("#present li", (lis) => lis.map((li) => li.textContent));
      assert.fail(`the list is ${JSON.stringify(got)}, not ${JSON.stringify(names)} within ${timeout} ms (${e.message})`);
    }
  }

  const typingLine = (chat) => chat.page.textContent("#typing");

  for (const variant of [
    { name: "rails-actioncable", path: "/", script: "/assets/actioncable.esm.js" },
    { name: "cable-client", path: "/cable-client", script: "/assets/cable-client.esm.js" },
  ]) {
    it(`${variant.path}: what ann says, bob's page shows (${variant.name})`, { timeout: 60_000 }, async () => {
      const room = `browser-${variant.name}`;
      const ann = await openChat(variant.path, "ann", room);
      const bob = await openChat(variant.path, "bob", room);
      try {
        const text = `hello from ann on ${variant.name}`;
        await say(ann, text);
        await bob.page.waitForFunction(
          (t) => [...document.querySelectorAll("#messages li")].some((li) => li.textContent === t),
          `ann: ${text}`,
          { timeout: 10_000 },
        );
        await say(bob, "hi ann");
        await ann.page.waitForFunction(
          () => [...document.querySelectorAll("#messages li")].some((li) => li.textContent === "bob: hi ann"),
          null,
          { timeout: 10_000 },
        );
        assert.deepEqual(await messages(bob), [`ann: ${text}`, "bob: hi ann"]);
        assert.deepEqual(await messages(ann), [`ann: ${text}`, "bob: hi ann"]);
        for (const c of [ann, bob]) {
          assert.deepEqual(c.scripts, [variant.script], "the page loaded exactly its client");
          assert.deepEqual(c.errors, [], "no page errors");
        }
        const shot = resolve(ARTIFACTS, `chat-${variant.name}.png`);
        await bob.page.screenshot({ path: shot });
        await ann.page.screenshot({ path: resolve(ARTIFACTS, `chat-${variant.name}-sender.png`) });
        console.log(`screenshot: ${shot}`);
      } finally {
        await ann.context.close();
        await bob.context.close();
      }
    });
  }

  for (const variant of [
    { name: "rails-actioncable", path: "/", protocol: "actioncable-v1-json" },
    { name: "cable-client", path: "/cable-client", protocol: "actioncable-v1-ext-json" },
  ]) {
    it(`${variant.path}: who is in the room and who is typing (${variant.name})`, { timeout: 90_000 }, async () => {
      const room = `presence-${variant.name}`;
      const ann = await openChat(variant.path, "ann", room);
      const bob = await openChat(variant.path, "bob", room);
      let cat;
      try {
        for (const c of [ann, bob]) {
          assert.equal(await c.page.evaluate(() => document.body.dataset.protocol), variant.protocol);
        }
        // Bob's list: ann from the presence info reply, bob himself; ann's
        // page hears of bob from his join event.
        await waitPresent(bob, ["ann", "bob"]);
        await waitPresent(ann, ["ann", "bob"]);
        assert.equal(await bob.page.textContent("#present li.me"), "bob");

        // Ann types: bob's page says so, ann's does not.
        assert.equal(await typingLine(bob), "");
        const typedFrom = Date.now();
        await ann.page.type("#say input[name=body]", "hello the", { delay: 60 });
        const typedFor = Date.now() - typedFrom;
        await bob.page.waitForFunction(() => document.querySelector("#typing").textContent === "ann is typing…", null, {
          timeout: 10_000,
        });
        assert.equal(await typingLine(ann), "", "the sender gets no whisper of its own");
        const whispers = ann.sent.filter((f) => f.command === "whisper");
        // Throttled to one per 1.5 s: nine keystrokes in about half a second
        // make one (more only if the machine made the typing slow).
        assert.ok(
          whispers.length >= 1 && whispers.length <= 1 + Math.floor(typedFor / 1_500),
          `${whispers.length} whispers for nine keystrokes in ${typedFor} ms`,
        );
        assert.deepEqual(whispers[0].data, { event: "typing", user: "ann" });
        // No whisper for 3 s: the line clears by itself.
        await bob.page.waitForFunction(() => document.querySelector("#typing").textContent === "", null, {
          timeout: 10_000,
        });
        // Typing again, then sending: the message clears the line at once.
        await ann.page.type("#say input[name=body]", "re", { delay: 60 });
        await bob.page.waitForFunction(() => document.querySelector("#typing").textContent === "ann is typing…", null, {
          timeout: 10_000,
        });
        await ann.page.click("#say button");
        await bob.page.waitForFunction(
          () => [...document.querySelectorAll("#messages li")].some((li) => li.textContent === "ann: hello there"),
          null,
          { timeout: 10_000 },
        );
        assert.equal(await typingLine(bob), "");
        await bob.page.screenshot({ path: resolve(ARTIFACTS, `chat-presence-${variant.name}.png`) });

        // Ann leaves: bob's list drops her at once, long before the TTL could.
        const t0 = Date.now();
        await ann.page.click("#leave");
        await waitPresent(bob, ["bob"], 2_500);
        console.log(`${variant.name}: ann's leave seen ${Date.now() - t0} ms after the click`);
        assert.equal(await ann.page.evaluate(() => document.body.dataset.status), `left ${room}`);
        assert.ok(ann.sent.some((f) => f.command === "unsubscribe"), "leaving unsubscribed");

        // Cat joins, then closes the page: bob's list drops cat too (the
        // page unsubscribes on pagehide; the presence TTL is the fallback).
        cat = await openChat(variant.path, "cat", room);
        await waitPresent(bob, ["bob", "cat"]);
        await waitPresent(cat, ["bob", "cat"]);
        const t1 = Date.now();
        await cat.page.close();
        await waitPresent(bob, ["bob"], (PRESENCE_TTL_S + 8) * 1_000);
        console.log(`${variant.name}: cat's closed page left bob's list ${Date.now() - t1} ms after closing`);

        // Dan's page crashes (no pagehide, no unsubscribe): the server keeps
        // dan listed until the presence TTL runs out, then bob's list drops him.
        const dan = await openChat(variant.path, "dan", room);
        await waitPresent(bob, ["bob", "dan"]);
        const cdp = await dan.context.newCDPSession(dan.page);
        const t2 = Date.now();
        cdp.send("Page.crash").catch(() => {});
        await sleep(1_000);
        await waitPresent(bob, ["bob", "dan"], 100).catch(() => {
          throw new Error("dan left at once, without the presence TTL");
        });
        await waitPresent(bob, ["bob"], (PRESENCE_TTL_S + 8) * 1_000);
        console.log(`${variant.name}: dan's crashed page left bob's list ${Date.now() - t2} ms after the crash`);
        await dan.context.close();

        for (const c of [ann, bob, cat]) assert.deepEqual(c.errors, [], "no page errors");
      } finally {
        await ann.context.close();
        await bob.context.close();
        await cat?.context.close();
      }
    });
  }

  it("/cable-client: a rejected room shows the refusal, as on /", { timeout: 30_000 }, async () => {
    for (const path of ["/", "/cable-client"]) {
      const context = await browser.newContext();
      const page = await context.newPage();
      await page.goto(`${server.origin}${path}?user=zoe&room=forbidden`);
      await page.waitForFunction(() => document.body.dataset.status === "rejected from forbidden", null, { timeout: 10_000 });
      assert.deepEqual(
        await page.$$eval("#messages li", (lis) => lis.map((li) => li.textContent)),
        ["the server refused room forbidden"],
        path,
      );
      await context.close();
    }
  });

  it("/cable-client: after a server restart, the browser's `online` event reconnects at once", { timeout: 60_000 }, async () => {
    const room = "browser-online";
    const ann = await openChat("/cable-client", "ann", room);
    try {
      await server.stop();
      await ann.page.waitForFunction(() => document.body.dataset.status === "disconnected", null, { timeout: 10_000 });
      server = await startChat(port);
      // The server is back, but the client would only notice at its next poll.
      await sleep(1_500);
      assert.equal(await ann.page.evaluate(() => document.body.dataset.status), "disconnected", "no reconnect yet");
      const t0 = Date.now();
      await ann.page.evaluate(() => window.dispatchEvent(new Event("online")));
      await ann.page.waitForFunction((s) => document.body.dataset.status === s, `connected to ${room} as ann`, {
        timeout: 4_000,
      });
      const ms = Date.now() - t0;
      // The monitor alone would take 6-20 s (its next poll); `online` does it now.
      assert.ok(ms < 4_000, `reconnected in ${ms} ms`);
      await say(ann, "back online");
      await ann.page.waitForFunction(
        () => [...document.querySelectorAll("#messages li")].some((li) => li.textContent === "ann: back online"),
        null,
        { timeout: 10_000 },
      );
      await ann.page.screenshot({ path: resolve(ARTIFACTS, "chat-cable-client-online.png") });
      console.log(`reconnected ${ms} ms after the online event`);
      assert.deepEqual(ann.errors.filter((e) => !/WebSocket/.test(e)), []);
    } finally {
      await ann.context.close();
    }
  });
});
