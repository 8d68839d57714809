// The chat panel: a session's messages, the composer, the reply as it streams, Stop.

import { query, uuid } from "./api.js";
import { messageBubble, replyBubble, setState, updateReply } from "./bubbles.js";
import { follow } from "./follow.js";
import { forget, newReply, save } from "./reply.js";
import { waitToRetry } from "./retry.js";
import { $, hideNotice, showError } from "./ui.js";

const PAGE = 50;
const MAX_SEND_TRIES = 20;

export class ChatPanel {
  /** hooks.onChanged(sessionId) after a message or a reply changed a session. */
  constructor(api, hooks) {
    this.api = api;
    this.hooks = hooks;
    this.session = null;
    this.cursor = null;
    this.reply = null; // the reply being followed: the open session's
    this.following = null; // its AbortController
    this.parked = new Map(); // session id → reply no longer followed since its session was left
    this.sending = null; // AbortController of a message being sent (and retried)
    this.opening = 0;
    this.loading = false; // the open session's messages are on their way: nothing is sent meanwhile
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    $("composer-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.send(); }
    });
    $("stop").addEventListener("click", () => this.stop());
    $("messages-earlier").addEventListener("click", () => this.loadEarlier());
  }

  get busy() {
    return this.sending !== null || this.reply !== null;
  }

  /** Show a session's latest messages (and its reply being written, if any). */
  async open(session) {
    if (this.reply && (!session || this.reply.sessionId !== session.id)) this.park();
    this.session = session;
    this.cursor = null;
    const opening = ++this.opening;
    $("chat-title").textContent = session ? session.title || `Chat with ${session.persona}` : "Chat";
    $("chat-meta").textContent = session ? `${session.persona} · ${session.status}` : "";
    $("messages").replaceChildren();
    $("chat-empty").hidden = Boolean(session);
    $("messages-earlier").hidden = true;
    this.loading = Boolean(session);
    this.updateComposer();
    if (!session) return;
    try {
      const page = await this.api.get(`/api/sessions/${session.id}/messages${query({ limit: PAGE })}`);
      if (opening !== this.opening) return; // another session was opened meanwhile
      $("messages").replaceChildren(...page.items.reverse().map(messageBubble));
      this.cursor = page.next_cursor;
      $("messages-earlier").hidden = !this.cursor;
    } catch (err) {
      showError(err, "Loading the messages");
    }
    if (opening !== this.opening) return;
    this.loading = false;
    this.updateComposer();
    if (this.reply) {
      this.ensureBubble();
    } else if (this.parked.has(session.id)) {
      const reply = this.parked.get(session.id);
      this.parked.delete(session.id);
      this.followReply(reply); // resumes after the last event it had
    } else {
      await this.adoptRunningReply(session);
    }
    this.scrollDown(true);
  }

  /** Stop following the reply of a session the user leaves; the job runs on. */
  park() {
    const reply = this.reply;
    this.reply = null;
    this.following.abort();
    this.following = null;
    forget();
    this.parked.set(reply.sessionId, reply);
  }

  /** Follow the reply to the session's last message if it is still being written
   * (sent from another tab, or before a reload this tab did not remember). */
  async adoptRunningReply(session) {
    const bubbles = $("messages").querySelectorAll(".msg");
    const last = bubbles[bubbles.length - 1];
    if (!last || !last.classList.contains("user") || !last.dataset.job) return;
    try {
      const job = await this.api.get(`/api/jobs/${last.dataset.job}`);
      if (["queued", "running"].includes(job.status) && !this.reply && this.session === session) {
        this.followReply(newReply(job));
      }
    } catch (err) {
      showError(err, "Looking for a reply being written");
    }
  }

  async loadEarlier() {
    if (!this.session || !this.cursor) return;
    try {
      const path = `/api/sessions/${this.session.id}/messages${query({ limit: PAGE, cursor: this.cursor })}`;
      const page = await this.api.get(path);
      $("messages").prepend(...page.items.reverse().map(messageBubble));
      this.cursor = page.next_cursor;
      $("messages-earlier").hidden = !this.cursor;
    } catch (err) {
      showError(err, "Loading earlier messages");
    }
  }

  updateComposer() {
    const active = this.session && this.session.status === "active";
    const input = $("composer-input");
    input.disabled = !active;
    input.placeholder = !this.session ? "Pick or create a session first"
      : active ? "Message (Enter sends, Shift+Enter new line, Esc stops)"
        : "This session is archived: create a new one to chat";
    $("send").hidden = this.busy;
    $("send").disabled = !active || this.busy || this.loading;
    $("stop").hidden = !this.busy;
  }

  /** Send the composer's text; the user's message shows at once, the reply follows. */
  async send() {
    const input = $("composer-input");
    const content = input.value;
    if (!content.trim() || this.busy || this.loading || !this.session
      || this.session.status !== "active") return;
    const session = this.session;
    input.value = "";
    const bubble = messageBubble({ role: "user", content, created_at: new Date().toISOString() });
    setState(bubble, "sending…");
    $("messages").append(bubble);
    this.scrollDown(true);
    this.sending = new AbortController();
    this.updateComposer();
    let job = null;
    try {
      job = await this.submit(session, content, bubble, this.sending.signal);
    } finally {
      this.sending = null;
      hideNotice();
      this.updateComposer();
    }
    if (!job) {
      if (!input.value) input.value = content; // give the text back, to edit or send again
      return;
    }
    setState(bubble, "");
    bubble.dataset.job = job.id;
    this.hooks.onChanged(session.id);
    if (this.session && this.session.id === session.id) await this.followReply(newReply(job));
    else this.parked.set(session.id, newReply(job)); // the user went elsewhere meanwhile
  }

  /** Post the message, waiting out 429 and 503 as the server asks; null if not sent. */
  async submit(session, content, bubble, signal) {
    const headers = { "Idempotency-Key": uuid() }; // a retry can never queue a second job
    for (let tries = 1; ; tries += 1) {
      try {
        return await this.api.post(`/api/sessions/${session.id}/messages`, { content }, { headers, signal });
      } catch (err) {
        if (signal.aborted) { setState(bubble, "not sent: cancelled", true); return null; }
        if ((err.status === 429 || err.status === 503) && tries < MAX_SEND_TRIES) {
          setState(bubble, `waiting to send (${err.status})…`);
          if (await waitToRetry(err, signal, () => this.sending && this.sending.abort())) continue;
          setState(bubble, "not sent: cancelled", true);
          return null;
        }
        setState(bubble, `not sent: ${err.detail || err.message}`, true);
        showError(err, "Sending the message");
        return null;
      }
    }
  }

  /** Follow a reply's events to its end; `reply` may come from before a reload. */
  async followReply(reply) {
    this.reply = reply;
    this.following = new AbortController();
    save(reply);
    this.ensureBubble();
    this.updateComposer();
    const hooks = {
      onEvent: (r) => { save(r); this.paint(); },
      onReconnect: (seconds, err) => this.paint(`connection lost (${err.detail || err.message}); reconnecting in ${seconds} s…`),
    };
    try {
      await follow(this.api, reply, hooks, this.following.signal);
      if (this.reply === reply) this.paint();
    } catch (err) {
      showError(err, "Following the reply");
      this.paint(`lost: ${err.detail || err.message}`);
    } finally {
      if (this.reply === reply) {
        forget();
        this.reply = null;
        this.following = null;
        this.updateComposer();
        this.hooks.onChanged(reply.sessionId);
      }
    }
  }

  /** Stop whatever runs: the message being sent, or the reply being written. */
  async stop() {
    if (this.sending) { this.sending.abort(); return; }
    if (!this.reply) return;
    const { jobId } = this.reply;
    $("stop").disabled = true;
    try {
      await this.api.post(`/api/jobs/${jobId}/cancel`);
    } catch (err) {
      showError(err, "Stopping the reply"); // 409: it had already ended
    } finally {
      $("stop").disabled = false;
    }
  }

  /** Drop the reply of a session that is gone; its stream would only answer 404. */
  sessionDeleted(sessionId) {
    this.parked.delete(sessionId);
    if (this.reply && this.reply.sessionId === sessionId) {
      this.following.abort();
      forget();
      this.reply = null;
      this.following = null;
    }
    if (this.session && this.session.id === sessionId) this.open(null);
    this.updateComposer();
  }

  ensureBubble() {
    const reply = this.reply;
    if (!reply || !this.session || reply.sessionId !== this.session.id) return;
    if (document.getElementById(`reply-${reply.jobId}`)) return;
    const stored = $("messages").querySelector(`.msg.assistant[data-job="${reply.jobId}"]`);
    if (!stored) $("messages").append(replyBubble(reply));
  }

  paint(note = "") {
    if (!this.reply) return;
    const bubble = document.getElementById(`reply-${this.reply.jobId}`);
    if (!bubble) return;
    updateReply(bubble, this.reply, note);
    this.scrollDown(false);
  }

  scrollDown(always) {
    const list = $("messages");
    const near = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    if (always || near) list.scrollTop = list.scrollHeight;
  }
}
