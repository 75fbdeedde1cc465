import type { Consumer } from "./consumer.js";
import type {
  ChannelParams,
  ConnectedDetails,
  DefaultActions,
  DisconnectedDetails,
  Mixin,
  PresenceEvent,
  PresenceInfo,
  SubscriptionCallbacks,
} from "./types.js";

// Subscriptions of any message and action types, as the collections hold them.
type AnySubscription = Subscription<any, any>;

/**
 * One subscription to a channel. Create it with
 * `consumer.subscriptions.create(params, mixin)` or `await consumer.subscribe(params)`.
 * The mixin's properties are copied onto it, so callbacks and helpers are
 * called with `this` being the subscription.
 *
 * `TReceived` types what `received` gets; `TActions` maps action names to
 * the data `perform` sends with them.
 */
export class Subscription<TReceived = any, TActions extends object = DefaultActions>
  implements SubscriptionCallbacks<TReceived>
{
  readonly consumer: Consumer;
  /** `JSON.stringify(params)`: the server keys the subscription by this exact string. */
  readonly identifier: string;
  /** Whether the server has confirmed this subscription at least once. */
  hasBeenConnected = false;
  /** Whether the server has confirmed this subscription on the current connection. */
  isConfirmed = false;
  /** This subscription's presence (AnyCable's `join`, `leave` and `presence` commands). */
  readonly presence: SubscriptionPresence;

  declare initialized?: () => void;
  declare connected?: (details: ConnectedDetails) => void;
  declare disconnected?: (details: DisconnectedDetails) => void;
  declare received?: (data: TReceived) => void;
  declare rejected?: () => void;
  declare presenceChanged?: (event: PresenceEvent) => void;

  constructor(consumer: Consumer, params: object = {}, mixin?: object) {
    this.consumer = consumer;
    this.identifier = JSON.stringify(params);
    this.presence = new SubscriptionPresence(this);
    if (mixin) {
      // for...in, as @rails/actioncable does: enumerable own and inherited members.
      for (const key in mixin) (this as any)[key] = (mixin as any)[key];
    }
  }

  /** Calls the channel's action with `data` (plus `action`); false if the socket is not open. */
  perform<K extends keyof TActions & string>(action: K, data?: TActions[K]): boolean {
    return this.send({ ...(data as object | undefined), action });
  }

  /** Sends `data` to the channel's `receive`; false if the socket is not open. */
  send(data: object): boolean {
    return this.consumer.send({ command: "message", identifier: this.identifier, data: JSON.stringify(data) });
  }

  /**
   * Sends `data` to everyone else on the channel's whisper stream (AnyCable's
   * `whisper` command: "ann is typing"); they get it in `received`, the
   * sender does not. Transient: never kept in history. False if the socket
   * is not open.
   */
  whisper(data: object): boolean {
    return this.consumer.send({ command: "whisper", identifier: this.identifier, data });
  }

  /** Removes the subscription; tells the server unless another one has the same identifier. */
  unsubscribe(): this {
    this.consumer.subscriptions.remove(this);
    return this;
  }
}

/**
 * A subscription's presence on its channel's presence stream (AnyCable's
 * presence). `join` is kept: it is sent once the subscription is confirmed
 * and again after every reconnect, until `leave` or `unsubscribe` (after
 * which the server takes this session off at once). Others' joins and
 * leaves arrive in the subscription's `presenceChanged` callback.
 */
export class SubscriptionPresence {
  readonly subscription: AnySubscription;
  /** The id and info this session is present as, while joined. */
  state?: { id: string; info?: unknown };
  private pending: { resolve: (info: PresenceInfo) => void; reject: (error: Error) => void }[] = [];

  constructor(subscription: AnySubscription) {
    this.subscription = subscription;
  }

  /** Joins as `id` with `info` (now if confirmed, else on confirmation); true if sent now. */
  join(id: string, info?: unknown): boolean {
    this.state = { id, info };
    return this.sendJoin();
  }

  /** Leaves the presence (and stops joining on reconnects); true if sent now. */
  leave(): boolean {
    if (!this.state) return false;
    this.state = undefined;
    return this.subscription.isConfirmed && this.send({ command: "leave" });
  }

  /**
   * Who is present now: resolves with the server's reply; rejects when the
   * server cannot tell (`{"type":"error"}`), the subscription is not
   * confirmed, or the connection closes first.
   */
  info(): Promise<PresenceInfo> {
    if (!this.subscription.isConfirmed || !this.send({ command: "presence", data: {} })) {
      return Promise.reject(new Error(`cable: presence info of ${this.subscription.identifier}: not connected`));
    }
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
  }

  /** Sends the kept join, if any, when the subscription is confirmed. @internal */
  sendJoin(): boolean {
    const { state } = this;
    return !!state && this.subscription.isConfirmed && this.send({ command: "join", presence: state });
  }

  /** Settles the oldest `info()` with a reply; false if none waits. @internal */
  settle(message: { type?: string; total?: number; records?: PresenceInfo["records"] }): boolean {
    const waiting = this.pending.shift();
    if (!waiting) return false;
    if (message.type === "info") waiting.resolve({ total: message.total ?? 0, records: message.records ?? [] });
    else waiting.reject(new Error(`cable: presence info of ${this.subscription.identifier}: the server could not tell`));
    return true;
  }

  /** Rejects every pending `info()` (the connection closed, or the subscription ended). @internal */
  abandon(why: string): void {
    for (const { reject } of this.pending.splice(0)) {
      reject(new Error(`cable: presence info of ${this.subscription.identifier}: ${why}`));
    }
  }

  private send(command: object): boolean {
    return this.subscription.consumer.send({ ...command, identifier: this.subscription.identifier });
  }
}

/**
 * Re-sends `subscribe` every 500 ms for the subscriptions the server has not
 * answered yet, as long as the socket is open.
 */
export class SubscriptionGuarantor {
  static retryDelay = 500;
  readonly subscriptions: Subscriptions;
  pendingSubscriptions: AnySubscription[] = [];
  private retryTimeout?: unknown;

  constructor(subscriptions: Subscriptions) {
    this.subscriptions = subscriptions;
  }

  guarantee(subscription: AnySubscription): void {
    if (!this.pendingSubscriptions.includes(subscription)) this.pendingSubscriptions.push(subscription);
    this.startGuaranteeing();
  }

  forget(subscription: AnySubscription): void {
    this.pendingSubscriptions = this.pendingSubscriptions.filter((s) => s !== subscription);
    if (!this.pendingSubscriptions.length) this.stopGuaranteeing();
  }

  startGuaranteeing(): void {
    this.stopGuaranteeing();
    this.retryTimeout = setTimeout(() => {
      for (const subscription of this.pendingSubscriptions) this.subscriptions.subscribe(subscription);
    }, SubscriptionGuarantor.retryDelay);
  }

  stopGuaranteeing(): void {
    clearTimeout(this.retryTimeout);
  }
}

type CallbackName = keyof SubscriptionCallbacks;

/** The consumer's subscriptions (`consumer.subscriptions`). */
export class Subscriptions {
  readonly consumer: Consumer;
  readonly guarantor: SubscriptionGuarantor;
  subscriptions: AnySubscription[] = [];

  constructor(consumer: Consumer) {
    this.consumer = consumer;
    this.guarantor = new SubscriptionGuarantor(this);
  }

  /**
   * Subscribes to a channel: `channel` is the channel name or the params
   * (`{ channel: "ChatChannel", room: "lobby" }`). Connects the consumer if it
   * is not connected, calls `initialized`, then `connected` once confirmed.
   */
  create<TReceived = any, TActions extends object = DefaultActions, TExtra extends object = {}>(
    channel: string | ChannelParams,
    mixin?: Mixin<TReceived, TActions, TExtra>,
  ): Subscription<TReceived, TActions> & TExtra {
    const params = typeof channel === "object" ? channel : { channel };
    return this.add(new Subscription(this.consumer, params, mixin)) as Subscription<TReceived, TActions> & TExtra;
  }

  add(subscription: AnySubscription): AnySubscription {
    this.subscriptions.push(subscription);
    this.consumer.ensureActiveConnection();
    this.notify(subscription, "initialized");
    this.subscribe(subscription);
    return subscription;
  }

  remove(subscription: AnySubscription): AnySubscription {
    this.forget(subscription);
    if (!this.findAll(subscription.identifier).length) this.sendCommand(subscription, "unsubscribe");
    return subscription;
  }

  /** The server rejected `identifier`: drop its subscriptions and call `rejected`. */
  reject(identifier: string): AnySubscription[] {
    return this.findAll(identifier).map((subscription) => {
      this.forget(subscription);
      this.notify(subscription, "rejected");
      return subscription;
    });
  }

  forget(subscription: AnySubscription): AnySubscription {
    // The server takes an unsubscribed session off the presence at once.
    subscription.isConfirmed = false;
    subscription.presence.state = undefined;
    subscription.presence.abandon("unsubscribed");
    this.guarantor.forget(subscription);
    this.subscriptions = this.subscriptions.filter((s) => s !== subscription);
    return subscription;
  }

  findAll(identifier: string): AnySubscription[] {
    return this.subscriptions.filter((s) => s.identifier === identifier);
  }

  /** Sends `subscribe` for every subscription (after each welcome). */
  reload(): void {
    for (const subscription of this.subscriptions) this.subscribe(subscription);
  }

  notifyAll(callbackName: CallbackName, ...args: unknown[]): void {
    for (const subscription of this.subscriptions) this.notify(subscription, callbackName, ...args);
  }

  /** Calls `callbackName` on a subscription, or on every subscription with that identifier. */
  notify(subscription: AnySubscription | string, callbackName: CallbackName, ...args: unknown[]): void {
    const targets = typeof subscription === "string" ? this.findAll(subscription) : [subscription];
    for (const target of targets) {
      const callback = (target as any)[callbackName];
      if (typeof callback === "function") callback.apply(target, args);
    }
  }

  subscribe(subscription: AnySubscription): void {
    if (this.sendCommand(subscription, "subscribe")) this.guarantor.guarantee(subscription);
  }

  /** The server confirmed `identifier`: stop re-sending and call `connected`. */
  confirmSubscription(identifier: string): void {
    for (const subscription of this.findAll(identifier)) {
      this.guarantor.forget(subscription);
      const reconnected = subscription.hasBeenConnected;
      subscription.hasBeenConnected = true;
      subscription.isConfirmed = true;
      // Before `connected`, so that an info() it asks for counts this session.
      subscription.presence.sendJoin();
      this.notify(subscription, "connected", { reconnected });
    }
  }

  /** The connection closed: nothing is confirmed any more, pending `info()`s fail. */
  disconnected(): void {
    for (const subscription of this.subscriptions) {
      subscription.isConfirmed = false;
      subscription.presence.abandon("the connection closed");
    }
  }

  /**
   * A `presence` frame: an `info` or `error` reply settles the oldest
   * pending `info()`; a `join` or `leave` goes to `presenceChanged`.
   */
  presenceMessage(identifier: string, message: any): void {
    if (!message || typeof message !== "object") return;
    const targets = this.findAll(identifier);
    if (message.type === "info" || message.type === "error") {
      targets.some((subscription) => subscription.presence.settle(message));
    } else if ((message.type === "join" || message.type === "leave") && typeof message.id === "string") {
      for (const subscription of targets) this.notify(subscription, "presenceChanged", message);
    }
  }

  sendCommand(subscription: AnySubscription, command: "subscribe" | "unsubscribe"): boolean {
    return this.consumer.send({ command, identifier: subscription.identifier });
  }
}
