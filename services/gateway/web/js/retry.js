// Waiting out a 429 or a 503: a visible countdown from Retry-After, then a retry.

import { sleep } from "./api.js";
import { hideNotice, showNotice } from "./ui.js";

const DEFAULT_SECONDS = 2;

function why(err) {
  const rid = err.requestId ? ` (request id: ${err.requestId})` : "";
  if (err.status === 429) return `Too many messages at once: ${err.detail}${rid}.`;
  if (err.status === 503) return `The service is unavailable: ${err.detail}${rid}.`;
  return `${err.title}: ${err.detail}${rid}.`;
}

/** Count down the seconds the server asked for; true when it is time to retry, false if cancelled. */
export async function waitToRetry(err, signal, onCancel) {
  const seconds = Math.ceil(err.retryAfter ?? DEFAULT_SECONDS);
  for (let left = Math.max(seconds, 1); left > 0; left -= 1) {
    if (signal.aborted) break;
    showNotice(`${why(err)} Retrying in ${left} s…`, onCancel);
    await sleep(1000, signal);
  }
  if (signal.aborted) {
    hideNotice();
    return false;
  }
  showNotice(`${why(err)} Retrying now…`, onCancel);
  return true;
}
