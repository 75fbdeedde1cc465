// The few host globals the client touches, typed without pulling in the DOM
// or Node type libraries (the published .d.ts files reference neither).
// Anything else (document, location, addEventListener, WebSocket) is reached
// through `globalThis` with a typeof guard, so the same code runs in browsers
// and in Node.

declare function setTimeout(callback: () => void, ms?: number): unknown;
declare function clearTimeout(handle: unknown): void;

declare class URL {
  constructor(url: string, base?: string);
  readonly href: string;
}

declare var console: { log(...data: unknown[]): void };
