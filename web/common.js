// What the page, the dashboard and the create page share: the token they were opened with, JSON
// requests that carry it, and ICE gathering for the service's non-trickle offers.

export const token = new URLSearchParams(location.search).get("token");

/** An answer outside 2xx: `status`, the service's {"error": ...} as the message, its Retry-After. */
export class HttpError extends Error {
  constructor(status, message, retryAfter, data) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter; // seconds, from a Retry-After header (busy answers)
    this.data = data; // the whole JSON answer (e.g. an upload's "received" on a 409)
  }
}

/**
 * A request with the page's token; the JSON answer. `body`: an object (sent as JSON), a Blob
 * or ArrayBuffer (sent as is), or undefined (none). A network failure throws TypeError.
 */
export async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, credentials: "same-origin" };
  if (body instanceof Blob || body instanceof ArrayBuffer) {
    headers["Content-Type"] = "application/octet-stream";
    init.body = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const retryAfter = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
    throw new HttpError(response.status, data?.error ?? `HTTP ${response.status}`, retryAfter, data);
  }
  return data;
}

/** GET `path`, or POST `body` as JSON. */
export function api(path, body) {
  return request(body === undefined ? "GET" : "POST", path, body);
}

/**
 * The service answered this address with a cookie for the token (an opaque value, not the
 * token): take the token out of the address bar, so history, bookmarks, screenshots and shared
 * links lack it.
 */
export function forgetToken() {
  if (!token) return;
  const url = new URL(location.href);
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url);
}

/** Resolves once `pc` has gathered its candidates (the service takes complete offers), or after 3 s. */
export function iceGathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000);
  });
}
