// The conversation's bubbles: stored messages, and the reply being written.

import { describeCall } from "./reply.js";
import { el, when } from "./ui.js";

/** Render a stored message (or a user message being sent). */
export function messageBubble(message) {
  const mine = message.role === "user";
  return el("li", {
    class: `msg ${message.role}`,
    "data-message": message.id || null,
    "data-job": message.job_id || null,
  },
  el("span", { class: "who", text: `${mine ? "You" : "Assistant"} · ${when(message.created_at)}` }),
  el("span", { class: "text", text: message.content }),
  el("span", { class: "state", hidden: true }));
}

/** Set the small state line of a bubble; empty text hides it. */
export function setState(bubble, text, bad = false) {
  const state = bubble.querySelector(".state");
  state.textContent = text;
  state.hidden = !text;
  state.classList.toggle("bad", bad);
}

/** Render the live bubble of a reply being written. */
export function replyBubble(reply) {
  const bubble = el("li", { class: "msg assistant live", "data-job": reply.jobId, id: `reply-${reply.jobId}` },
    el("span", { class: "who", text: "Assistant" }),
    el("ul", { class: "tools", "aria-label": "Tool calls", hidden: true }),
    el("span", { class: "text", "aria-live": "polite", "aria-busy": "true" }),
    el("span", { class: "state" }));
  updateReply(bubble, reply);
  return bubble;
}

/** Show the reply's current text, tools and state in its bubble. */
export function updateReply(bubble, reply, note = "") {
  const text = bubble.querySelector(".text");
  if (text.textContent !== reply.text) text.textContent = reply.text;
  const tools = bubble.querySelector(".tools");
  tools.hidden = reply.tools.length === 0;
  tools.replaceChildren(...reply.tools.map(toolItem));
  const job = reply.job || {};
  const ended = ["completed", "failed", "cancelled"].includes(reply.status);
  text.setAttribute("aria-busy", ended ? "false" : "true");
  bubble.classList.toggle("failed", reply.status === "failed");
  bubble.classList.toggle("stopped", reply.status === "cancelled");
  if (reply.status === "completed") {
    bubble.classList.remove("live");
    if (job.reply) bubble.dataset.message = job.reply.id;
    bubble.querySelector(".who").textContent = `Assistant · ${when(job.finished_at)}`;
  }
  setState(bubble, note || stateLine(reply), reply.status === "failed");
}

function stateLine(reply) {
  const job = reply.job || {};
  switch (reply.status) {
    case "queued": return "queued…";
    case "running":
      if (reply.attempts > 1 && !reply.text) return `retrying (attempt ${reply.attempts})…`;
      return reply.text ? "writing…" : "thinking…";
    case "failed": return `failed: ${job.error ? job.error.message : "no reason given"}`;
    case "cancelled": return "stopped (this partial reply is not kept)";
    default: return "";
  }
}

function toolItem(call) {
  const item = el("li", {}, el("code", { text: describeCall(call) }));
  if (call.result === null || call.result === undefined) item.append(" … running");
  else item.append(" → ", el("code", { text: `${call.result}${call.truncated ? " …(truncated)" : ""}` }));
  return item;
}
