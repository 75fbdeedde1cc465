// The same scenario with the unmodified @rails/actioncable 8.1 and with
// @cable-rs/client, side by side against one chat server: the callbacks each
// client makes must be the same, in the same order, with the same arguments,
// and the commands each sends must be the same bytes.
//
// Scenario: subscribe A and a rejected F; speak on A; subscribe B, echo on B,
// unsubscribe B; speak on A; SIGTERM the server (server_restart), start a new
// one on the same port; wait for the reconnect; speak on A; disconnect().
// Then: an unauthorized ('banned') connection.

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";

import { cableClient, railsClient } from "../support/clients.mjs";
import { ChatServer, freePort, requireChatBin, sleep, waitFor } from "../support/server.mjs";

const skip = requireChatBin();
// When skipped, one skipped test stands for the suite (a skipped describe counts none).
if (skip.skip) it("@rails/actioncable and @cable-rs/client make the same callbacks", skip, () => {});

describe("@rails/actioncable and @cable-rs/client make the same callbacks", skip, () => {
  const servers = [];
  const clients = [];
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(servers.map((s) => s.stop()));
  });
  const dump = () => [...clients.map((c) => c.dump()), ...servers.map((s) => s.logTail())].join("\n");
  const wait = (what, pred, timeout = 10_000) => waitFor(what, pred, { timeout, diag: dump });

  it("subscribe, reject, perform/receive, unsubscribe, server restart, disconnect", { timeout: 120_000 }, async (t) => {
    const port = await freePort();
    servers.push(await ChatServer.start({ port }));
    const origin = `http://127.0.0.1:${port}`;
    const url = `ws://127.0.0.1:${port}/cable`;
    // Same user for both; rooms are per client (so neither sees the other's
    // broadcasts) and named so that they normalize to the same text.
    const headers = { Cookie: "user=cmp", Origin: origin };
    const rails = await railsClient({ url, headers, name: "rails" });
    const cable = cableClient({ url, headers, name: "cable" });
    clients.push(rails, cable);
    const room = (c, r) => `${c.name}-${r}`;

    try {
      // Phase 1, both clients at once.
      const subs = new Map();
      await Promise.all(
        [rails, cable].map(async (c) => {
          const A = c.create({ channel: "ChatChannel", room: room(c, "a") }, "A");
          c.create({ channel: "ChatChannel", room: "forbidden" }, "F");
          await wait(`${c.name}: A connected, F rejected`, () => c.has("A", "connected") && c.has("F", "rejected"));
          A.perform("speak", { body: "one" });
          await wait(`${c.name}: one`, () => c.count("A", "received") === 1);
          const B = c.create({ channel: "ChatChannel", room: room(c, "b") }, "B");
          await wait(`${c.name}: B connected`, () => c.has("B", "connected"));
          B.perform("echo", { text: "e", n: 1 });
          await wait(`${c.name}: echo`, () => c.has("B", "received"));
          B.unsubscribe();
          await sleep(300);
          A.perform("speak", { body: "two" });
          await wait(`${c.name}: two`, () => c.count("A", "received") === 2);
          subs.set(c, A);
        }),
      );

      // The restart.
      await servers[0].stop("SIGTERM");
      await wait("both disconnected", () => rails.has("A", "disconnected") && cable.has("A", "disconnected"));
      servers.push(await ChatServer.start({ port }));
      await wait(
        "both to reconnect",
        () => rails.count("A", "connected") === 2 && cable.count("A", "connected") === 2,
        40_000,
      );

      // Phase 2.
      await Promise.all(
        [rails, cable].map(async (c) => {
          subs.get(c).perform("speak", { body: "three" });
          await wait(`${c.name}: three`, () => c.count("A", "received") === 3);
          c.consumer.disconnect();
          await wait(`${c.name}: final disconnect`, () => c.count("A", "disconnected") === 2);
        }),
      );
      await sleep(500);
    } catch (err) {
      t.diagnostic(dump());
      throw err;
    }

    const msg = (body) => ({ user: "cmp", body });
    const expected = [
      { tag: "A", cb: "initialized" },
      { tag: "F", cb: "initialized" },
      { tag: "A", cb: "connected", arg: { reconnected: false } },
      { tag: "F", cb: "rejected" },
      { tag: "A", cb: "received", arg: msg("one") },
      { tag: "B", cb: "initialized" },
      { tag: "B", cb: "connected", arg: { reconnected: false } },
      { tag: "B", cb: "received", arg: { text: "e", n: 1, action: "echo" } },
      { tag: "A", cb: "received", arg: msg("two") },
      { tag: "A", cb: "disconnected", arg: { willAttemptReconnect: true } },
      { tag: "A", cb: "connected", arg: { reconnected: true } },
      { tag: "A", cb: "received", arg: msg("three") },
      { tag: "A", cb: "disconnected", arg: { willAttemptReconnect: false } },
    ];
    t.diagnostic(`@rails/actioncable: ${rails.events.map((e) => `${e.tag}.${e.cb}`).join(" ")}`);
    t.diagnostic(`@cable-rs/client:   ${cable.events.map((e) => `${e.tag}.${e.cb}`).join(" ")}`);
    assert.deepEqual(cable.events, rails.events, "same callbacks, same order, same arguments");
    assert.deepEqual(rails.events, expected, "and they are the expected ones");

    // The commands, byte for byte (each distinct frame once: the guarantor's
    // re-sends depend on timing), room names normalized.
    const distinct = (c) => [...new Set(c.framesOut().map((f) => f.replaceAll(`${c.name}-`, "ROOM-")))];
    assert.deepEqual(distinct(cable), distinct(rails));
    assert.equal(rails.sockets.length, 2);
    assert.equal(cable.sockets.length, 2);
    assert.deepEqual(
      cable.sockets.map((s) => s.protocol),
      rails.sockets.map((s) => s.protocol),
    );
  });

  it("unauthorized ('banned'): the same callbacks, and neither reconnects", { timeout: 30_000 }, async (t) => {
    const server = await ChatServer.start();
    servers.push(server);
    const headers = { Cookie: "user=banned", Origin: server.origin };
    const rails = await railsClient({ url: server.cableUrl, headers, name: "rails-banned" });
    const cable = cableClient({ url: server.cableUrl, headers, name: "cable-banned" });
    clients.push(rails, cable);
    for (const c of [rails, cable]) c.create({ channel: "ChatChannel", room: "lobby" }, "A");
    await wait("both disconnected", () => rails.has("A", "disconnected") && cable.has("A", "disconnected"));
    await sleep(13_000); // past the monitor's first poll (6-12 s), were it running
    t.diagnostic(`callbacks: ${JSON.stringify(cable.events)}`);
    assert.deepEqual(cable.events, rails.events);
    assert.deepEqual(rails.events, [
      { tag: "A", cb: "initialized" },
      { tag: "A", cb: "disconnected", arg: { willAttemptReconnect: false } },
    ]);
    for (const c of [rails, cable]) {
      assert.equal(c.sockets.length, 1, `${c.kind}: one connection`);
      assert.deepEqual(c.framesOut(), []);
    }
  });
});
