// The notes example (examples/notes, issue 18) in a real browser: Debian's
// Chromium driven by playwright-core against the real `notes` binary. Ann
// and Bob log in by the app's own session (a form), their pages connect with
// the unmodified @rails/actioncable (the connection hook admits the logged-in
// session only), a note Ann adds through the channel's typed `add` action
// shows on both pages, and a note Bob posts with a plain form (the handler
// writes, then broadcasts) shows live on Ann's.
//
// Env: NOTES_BIN (default: debug/notes under $CARGO_TARGET_DIR or
// <repo>/target), CHROMIUM (default /usr/bin/chromium). Without Chromium or
// the binary the suite prints a SKIPPED line, unless CI is set.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { CHROMIUM, CHROMIUM_ARGS, binary, freePort, skipReason, startServer } from "./support.mjs";

const NOTES_BIN = binary("NOTES_BIN", "notes");
const skip = skipReason("notes browser test", [[NOTES_BIN, "notes binary (cargo build -p notes-example --bin notes)"]]);

if (skip) it("the notes page in headless Chromium", { skip }, () => {});

describe("the notes page in headless Chromium", { skip: !!skip }, () => {
  let browser;
  let server;
  let origin;

  before(async () => {
    const { chromium } = await import("playwright-core");
    const port = await freePort();
    origin = `http://127.0.0.1:${port}`;
    server = await startServer(NOTES_BIN, ["--bind", `127.0.0.1:${port}`]);
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  /** A page logged in as `name` in its own context (own session cookie), live. */
  async function loggedIn(name) {
    const context = await browser.newContext();
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => m.type() === "error" && !/^Failed to load resource/.test(m.text()) && errors.push(m.text()));
    page.on("response", (r) => {
      const path = new URL(r.url()).pathname;
      if (r.status() >= 400 && path !== "/favicon.ico") errors.push(`HTTP ${r.status()} for ${path}`);
    });
    await page.goto(origin);
    await page.fill("#name", name);
    await Promise.all([page.waitForNavigation(), page.click("#login-button")]);
    assert.equal(await page.textContent("#me"), name);
    await page.waitForFunction(() => document.body.dataset.live === "1", null, { timeout: 20_000 });
    return { page, context, errors };
  }

  const notes = (p) => p.page.$$eval("#notes li", (lis) => lis.map((li) => li.textContent));
  const shows = (p, text) =>
    p.page.waitForFunction((t) => [...document.querySelectorAll("#notes li")].some((li) => li.textContent === t), text, {
      timeout: 10_000,
    });

  it("notes added through the channel and through a form show live on every page", { timeout: 60_000 }, async () => {
    const ann = await loggedIn("ann");
    const bob = await loggedIn("bob");

    await ann.page.fill("#body", "hello from ann");
    await ann.page.click("#add-button");
    await shows(ann, "annhello from ann");
    await shows(bob, "annhello from ann");

    await bob.page.fill("#post-body", "posted by bob");
    await Promise.all([bob.page.waitForNavigation(), bob.page.click("#post-button")]);
    // Bob's page reloaded from the database; Ann's got it over the cable.
    await shows(bob, "bobposted by bob");
    await shows(ann, "bobposted by bob");
    assert.deepEqual(await notes(ann), ["annhello from ann", "bobposted by bob"]);
    assert.deepEqual(await notes(bob), ["annhello from ann", "bobposted by bob"]);

    // A page that is not logged in shows the login form and opens no cable.
    const anon = await (await browser.newContext()).newPage();
    await anon.goto(origin);
    assert.equal(await anon.isVisible("#login"), true);

    assert.deepEqual(ann.errors, []);
    assert.deepEqual(bob.errors, []);
    await ann.context.close();
    await bob.context.close();
  });
});
