// Follow a job's event stream to its end, reconnecting with Last-Event-ID when
// the connection drops, so no event is lost and none is applied twice.

import { ApiError, networkError, sleep } from "./api.js";
import { applyEvent, restart } from "./reply.js";
import { readEvents } from "./sse.js";

const MAX_FAILURES = 8; // in a row, without one event between them
const MAX_DELAY_MS = 10_000;

/**
 * Apply the job's events to `reply` until the final one.
 * hooks.onEvent(reply, event) runs after each event; hooks.onReconnect(seconds, err) before
 * each retry. Throws an ApiError the app must show (404, 401, or too many failures).
 */
export async function follow(api, reply, hooks, signal) {
  let failures = 0;
  while (!signal.aborted) {
    let lastError;
    try {
      const headers = { Accept: "text/event-stream" };
      if (reply.lastEventId) headers["Last-Event-ID"] = reply.lastEventId;
      else restart(reply); // a fresh stream sends the job from its start again
      const response = await api.raw("GET", `/api/jobs/${reply.jobId}/events`, { headers, signal });
      for await (const event of readEvents(response.body)) {
        failures = 0;
        const final = applyEvent(reply, event);
        hooks.onEvent(reply, event);
        if (final) return;
      }
      lastError = new ApiError(0, { title: "Stream ended", detail: "the event stream ended before the reply did" });
    } catch (err) {
      if (signal.aborted) return;
      const error = err instanceof ApiError ? err : networkError(err);
      if (!error.transient) throw error;
      lastError = error;
    }
    failures += 1;
    if (failures > MAX_FAILURES) {
      throw new ApiError(0, {
        title: "Connection lost",
        detail: `gave up following the reply after ${MAX_FAILURES} failed reconnects: ${lastError.detail || lastError.message}`,
        request_id: lastError.requestId,
      });
    }
    const backoff = Math.min(MAX_DELAY_MS, 500 * 2 ** (failures - 1));
    const delay = lastError.retryAfter !== null && lastError.retryAfter !== undefined
      ? Math.max(lastError.retryAfter * 1000, 250) : backoff;
    hooks.onReconnect(Math.ceil(delay / 1000), lastError);
    await sleep(delay, signal);
  }
}
