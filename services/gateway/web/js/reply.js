// What the app knows of a reply being written: its text so far, its tool calls,
// where the event stream stopped. Kept in sessionStorage so a reload resumes it.

const KEY = "chatbus.running";
export const FINAL_EVENTS = new Set(["completed", "failed", "cancelled"]);

/** Start following a job that was just queued (or found running). */
export function newReply(job) {
  return {
    jobId: job.id,
    sessionId: job.session_id,
    status: job.status,
    attempts: null,
    text: "",
    tools: [],
    lastEventId: null,
    job,
  };
}

/** Forget what a fresh stream will send again: it replays the job from its start. */
export function restart(reply) {
  reply.text = "";
  reply.tools = [];
}

/** Apply one server-sent event; return true when it was the final one. */
export function applyEvent(reply, event) {
  const data = event.data ? JSON.parse(event.data) : {};
  if (event.id) reply.lastEventId = event.id;
  switch (event.event) {
    case "status":
      // Another attempt's status: a retry began, and its reply is written from scratch.
      if (reply.attempts !== null && data.attempts !== reply.attempts) restart(reply);
      reply.attempts = data.attempts;
      reply.status = data.status;
      reply.job = data;
      return false;
    case "delta":
      reply.text += data.text || "";
      return false;
    case "tool_call":
      reply.tools.push({ callId: data.call_id, name: data.name, arguments: data.arguments, result: null });
      return false;
    case "tool_result": {
      const call = reply.tools.find((t) => t.callId === data.call_id);
      if (call) { call.result = data.result; call.truncated = Boolean(data.truncated); }
      else reply.tools.push({ callId: data.call_id, name: data.name, arguments: null, result: data.result, truncated: Boolean(data.truncated) });
      return false;
    }
    default:
      if (!FINAL_EVENTS.has(event.event)) return false; // an event this app does not know yet
      reply.status = data.status;
      reply.attempts = data.attempts;
      reply.job = data;
      // The final Job carries the whole reply: it is the text that counts.
      if (data.status === "completed" && data.reply) reply.text = data.reply.content;
      return true;
  }
}

/** Remember the reply being followed, for a reload. */
export function save(reply) {
  sessionStorage.setItem(KEY, JSON.stringify(reply));
}

/** Return the reply a previous page of this tab was following, if any. */
export function load() {
  const text = sessionStorage.getItem(KEY);
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    sessionStorage.removeItem(KEY); // written by another version of the app: start afresh
    return null;
  }
}

/** Forget the reply: it ended, or its session is gone. */
export function forget() {
  sessionStorage.removeItem(KEY);
}

/** Describe a tool call in one line: name(arguments). */
export function describeCall(call) {
  let args = call.arguments;
  if (args !== null && typeof args !== "string") args = JSON.stringify(args);
  return `${call.name}(${args ?? ""})`;
}
