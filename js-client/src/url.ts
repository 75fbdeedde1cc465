import type { UrlSource } from "./types.js";

const g = globalThis as any;

/**
 * Reads `<meta name="action-cable-NAME" content="...">` from the page's head
 * (browsers only; undefined elsewhere).
 */
export function getConfig(name: string): string | undefined {
  const element = g.document?.head?.querySelector(`meta[name='action-cable-${name}']`);
  return element ? (element.getAttribute("content") ?? undefined) : undefined;
}

/**
 * Turns a URL source into the URL to open: a function is called, `ws:` and
 * `wss:` URLs are kept, anything else is resolved against the page (relative
 * URLs need a page: in Node pass an absolute URL) and `http`/`https` become
 * `ws`/`wss`.
 */
export function createWebSocketURL(url: UrlSource | undefined): string {
  if (typeof url === "function") url = url();
  if (url && !/^wss?:/i.test(url)) {
    let href: string;
    try {
      href = new URL(url, g.document?.baseURI ?? g.location?.href).href;
    } catch {
      throw new TypeError(`cable: no page to resolve "${url}" against: use an absolute URL`);
    }
    return href.replace(/^http/, "ws");
  }
  return url as string;
}
