// Compile-time checks of the public types (never run). Each @ts-expect-error
// line must fail to compile, or tsc reports the directive as unused.

import {
  ConnectionClosedError,
  createConsumer,
  SubscriptionRejectedError,
  type Consumer,
  type Subscription,
  type WebSocketConstructor,
} from "../../dist/index.js";

interface ChatMessage {
  user: string;
  body: string;
}
type ChatActions = { speak: { body: string }; away: {} };

// The browser's WebSocket fits the WebSocket option.
const consumer: Consumer = createConsumer("/cable", { WebSocket });
const _ws: WebSocketConstructor = WebSocket;
createConsumer(() => "wss://example.com/cable", { headers: () => ({ Cookie: "a=b" }), protocols: ["x"] });
createConsumer();

// subscriptions.create, typed explicitly.
const typed = consumer.subscriptions.create<ChatMessage, ChatActions>(
  { channel: "ChatChannel", room: "lobby" },
  {
    received(data) {
      const body: string = data.body;
      // @ts-expect-error: not a field of ChatMessage
      data.nope;
      this.perform("speak", { body });
    },
    connected({ reconnected }) {
      const r: boolean = reconnected;
    },
    disconnected({ willAttemptReconnect }) {
      const w: boolean = willAttemptReconnect;
    },
  },
);
typed.perform("speak", { body: "hi" });
typed.perform("away");
// @ts-expect-error: unknown action
typed.perform("shout", { body: "hi" });
// @ts-expect-error: wrong data for the action
typed.perform("speak", { text: "hi" });

// subscriptions.create with helpers, Rails style: the helpers are typed on
// the result and on `this`; received's type comes from its annotation.
const withHelpers = consumer.subscriptions.create("AppearanceChannel", {
  received(data: ChatMessage) {
    this.appear(data.user);
  },
  appear(on: string) {
    return this.perform("appear", { appearing_on: on });
  },
});
const ok: boolean = withHelpers.appear("home");
// @ts-expect-error: appear takes a string
withHelpers.appear(1);

// Untyped: anything goes, as in JavaScript.
const loose = consumer.subscriptions.create("X", { received(data) { data.anything.at.all; } });
loose.perform("whatever", { a: 1 });
loose.send({ b: 2 });
loose.unsubscribe();

// The promise API.
async function promiseApi(): Promise<void> {
  const sub: Subscription<ChatMessage, ChatActions> = await consumer.subscribe<ChatMessage, ChatActions>(
    { channel: "ChatChannel", room: "lobby" },
    { received: (m) => m.user.toUpperCase() },
    { signal: AbortSignal.timeout(5000) },
  );
  sub.perform("speak", { body: "typed" });
  try {
    await consumer.subscribe({ channel: "ChatChannel", room: "forbidden" });
  } catch (err) {
    if (err instanceof SubscriptionRejectedError) {
      const id: string = err.identifier;
    } else if (err instanceof ConnectionClosedError) {
      const reason: string | null | undefined = err.reason;
    }
  }
  // @ts-expect-error: params need a channel
  await consumer.subscribe({ room: "lobby" });
}

consumer.addSubProtocol("x");
consumer.ensureActiveConnection();
const connected: boolean = consumer.connect();
consumer.disconnect();
void [_ws, typed, ok, promiseApi, connected];

// AnyCable's extensions: the extended protocol on request, whispers, presence.
const ext = createConsumer("/cable", { protocol: "actioncable-v1-ext-json" });
// @ts-expect-error: only the two Action Cable JSON protocols
createConsumer("/cable", { protocol: "actioncable-v2" });
const room = ext.subscriptions.create("ChatChannel", {
  presenceChanged(event) {
    const id: string = event.id;
    if (event.type === "join") void event.info;
  },
});
const whispered: boolean = room.whisper({ event: "typing" });
room.presence.join("ann", { name: "ann" });
async function presenceApi() {
  const info = await room.presence.info();
  const total: number = info.total;
  const ids: string[] = info.records.map((r) => r.id);
  room.presence.leave();
  void [total, ids];
}
void [whispered, presenceApi, ext.connection.sessionId];
