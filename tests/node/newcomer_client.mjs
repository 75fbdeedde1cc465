// The newcomer check's client (run by scripts/package, not by `npm test`):
// the unmodified @rails/actioncable, under Node with `ws`, against the app a
// newcomer builds from the README with the packaged crates. It subscribes
// to ChatChannel, POSTs /announce like the README's curl, and must receive
// the announcement within 10 s.
//
//   node newcomer_client.mjs http://127.0.0.1:3000
import { CableClient } from "./helpers.mjs";

const origin = process.argv[2] ?? "http://127.0.0.1:3000";
const url = `${origin.replace(/^http/, "ws")}/cable`;
const deadline = Date.now() + 10_000;
const until = async (what, ok) => {
  while (!ok()) {
    if (Date.now() > deadline) {
      console.error(client.dump());
      throw new Error(`newcomer: no ${what} within 10 s`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
};

const client = await CableClient.create({ url, origin, name: "newcomer" });
client.subscribe({ channel: "ChatChannel" }, "chat");
await until("confirmation", () => client.has("chat", "connected"));
const res = await fetch(`${origin}/announce`, { method: "POST", body: "hi" });
if (!res.ok) throw new Error(`newcomer: POST /announce answered ${res.status}`);
await until("announcement", () => client.has("chat", "received", (m) => m?.body === "hi"));
console.log("newcomer: @rails/actioncable subscribed and received the announcement");
process.exit(0);
