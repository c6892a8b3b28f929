// The dashboard's only way to the service: the public HTTP API with the user's key as a bearer token.
// The key lives in sessionStorage (this tab only, gone when it closes); no cookie is ever set, so no
// other site can make the browser send it.

const KEY = "rlprune.key";

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key.trim());
export const clearKey = () => sessionStorage.removeItem(KEY);

/** Raised for every non-2xx answer; ``problem`` is the RFC 9457 body when there is one. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

let onUnauthorized = () => {};
/** What to do when the API refuses the key (app.js: back to the sign-in form). */
export function handleUnauthorized(callback) { onUnauthorized = callback; }

/** fetch() with the key; a 401 signs the user out, other errors throw ApiError. */
export async function request(path, { method = "GET", headers = {}, body, signal, key } = {}) {
  const token = key ?? getKey();
  const response = await fetch(path, {
    method, body, signal, cache: "no-store",
    headers: { ...(token ? { Authorization: `Bearer ${token}` } : {}), ...headers },
  });
  if (response.status === 401 && key === undefined) {
    clearKey();
    onUnauthorized();
  }
  if (!response.ok) {
    let problem = null;
    try { problem = await response.json(); } catch { /* not JSON: keep the status alone */ }
    throw new ApiError(response.status, problem);
  }
  return response;
}

export async function getJson(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

export const postJson = (path, value) => request(path, {
  method: "POST", body: JSON.stringify(value), headers: { "Content-Type": "application/json" },
}).then((r) => r.json());

/**
 * Download an artifact. A plain link cannot carry the Authorization header, so the file is fetched with
 * it, held as a Blob and handed to the browser through a temporary object URL and <a download>.
 */
export async function download(path, name) {
  const blob = await (await request(path)).blob();
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** The examples the server ships (public, no key). */
export const examples = () => fetch("/ui/examples").then((r) => r.json());
export const example = (name) => fetch(`/ui/examples/${encodeURIComponent(name)}`).then((r) => r.text());
