// The REST API as the app uses it: bearer token, JSON bodies, problem+json errors.

/** An answer that is not 2xx, or no answer: carries the problem+json fields. */
export class ApiError extends Error {
  constructor(status, problem = {}, { retryAfter = null, requestId = null } = {}) {
    const title = problem.title || (status ? `HTTP ${status}` : "Network error");
    super(problem.detail || title);
    this.name = "ApiError";
    this.status = status;
    this.title = title;
    this.detail = problem.detail || "";
    this.type = problem.type || "about:blank";
    this.requestId = problem.request_id || requestId;
    this.errors = problem.errors || null;
    this.retryAfter = retryAfter;
  }

  /** Whether trying again later may succeed. */
  get transient() {
    return this.status === 0 || this.status === 429 || this.status === 502
      || this.status === 503 || this.status === 504;
  }
}

/** Read the seconds of a Retry-After header (delta seconds or an HTTP date). */
export function retryAfterOf(response) {
  const value = response.headers.get("Retry-After");
  if (value === null) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - Date.now()) / 1000));
}

/** Turn a failed response into an ApiError, whatever its body. */
export async function errorFrom(response) {
  const requestId = response.headers.get("X-Request-ID");
  const retryAfter = retryAfterOf(response);
  let problem = {};
  const text = await response.text().catch((err) => `(body unreadable: ${err.message})`);
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed === "object") problem = parsed;
  } catch {
    problem = { detail: text.slice(0, 300) || response.statusText };
  }
  if (!problem.title) problem.title = `HTTP ${response.status} ${response.statusText}`.trim();
  return new ApiError(response.status, problem, { retryAfter, requestId });
}

/** A network failure, as an ApiError with status 0 (an abort is passed through as is). */
export function networkError(err) {
  if (err && err.name === "AbortError") return err;
  return new ApiError(0, {
    title: "Network error",
    detail: `the server could not be reached (${err && err.message ? err.message : err})`,
  });
}

export class Api {
  /** getToken() returns the bearer token; onUnauthorized(err) runs on every 401. */
  constructor(getToken, onUnauthorized) {
    this.getToken = getToken;
    this.onUnauthorized = onUnauthorized;
  }

  /** Send a request and return the raw response, throwing an ApiError if it is not 2xx. */
  async raw(method, path, { body, headers = {}, signal } = {}) {
    const all = { Authorization: `Bearer ${this.getToken()}`, ...headers };
    const init = { method, headers: all, signal, cache: "no-store" };
    if (body !== undefined) {
      all["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw networkError(err);
    }
    if (response.ok) return response;
    const error = await errorFrom(response);
    if (error.status === 401) this.onUnauthorized(error);
    throw error;
  }

  /** Send a request and return its JSON body (null for 204). */
  async json(method, path, options = {}) {
    const response = await this.raw(method, path, options);
    if (response.status === 204) return null;
    return response.json();
  }

  get(path, options) { return this.json("GET", path, options); }
  post(path, body, options = {}) { return this.json("POST", path, { ...options, body }); }
  delete(path, options) { return this.json("DELETE", path, options); }
}

/** Build a query string of the values that are set. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** Return a random UUID, also where crypto.randomUUID is missing (plain http on a LAN). */
export function uuid() {
  if (globalThis.crypto && typeof crypto.randomUUID === "function" && window.isSecureContext) {
    return crypto.randomUUID();
  }
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Wait some milliseconds; an abort ends the wait early. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
