import type { Consumer } from "./consumer.js";
import type {
  ChannelParams,
  ConnectedDetails,
  DefaultActions,
  DisconnectedDetails,
  Mixin,
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

  declare initialized?: () => void;
  declare connected?: (details: ConnectedDetails) => void;
  declare disconnected?: (details: DisconnectedDetails) => void;
  declare received?: (data: TReceived) => void;
  declare rejected?: () => void;

  constructor(consumer: Consumer, params: object = {}, mixin?: object) {
    this.consumer = consumer;
    this.identifier = JSON.stringify(params);
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

  /** Removes the subscription; tells the server unless another one has the same identifier. */
  unsubscribe(): this {
    this.consumer.subscriptions.remove(this);
    return this;
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
      this.notify(subscription, "connected", { reconnected });
    }
  }

  sendCommand(subscription: AnySubscription, command: "subscribe" | "unsubscribe"): boolean {
    return this.consumer.send({ command, identifier: subscription.identifier });
  }
}
