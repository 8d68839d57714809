// The dashboard: the user's latest messages across sessions, fetched every 2 s.
// The gateway answers history from its own fast path, so the feed keeps moving
// however many replies the model is writing.

import { query } from "./api.js";
import { $, el, short, when } from "./ui.js";

const EVERY_MS = 2000;
const ITEMS = 20;

export class Dashboard {
  constructor(api) {
    this.api = api;
    this.polls = 0;
    this.timer = null;
    this.generation = 0; // a stop() ends the loop of every earlier start()
    this.running = false;
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.tick(this.generation);
  }

  /** Start afresh: poll now, with the token of now. */
  restart() {
    this.stop();
    this.start();
  }

  stop() {
    this.running = false;
    this.generation += 1;
    clearTimeout(this.timer);
  }

  async tick(generation) {
    if (generation !== this.generation) return;
    // A hidden tab polls nobody's screen: wait until it is shown again.
    if (document.visibilityState !== "hidden") await this.poll();
    if (generation === this.generation) this.timer = setTimeout(() => this.tick(generation), EVERY_MS);
  }

  async poll() {
    const started = performance.now();
    const status = $("feed-status");
    try {
      const page = await this.api.get(`/api/history${query({ limit: ITEMS })}`);
      const ms = Math.round(performance.now() - started);
      this.polls += 1;
      $("feed").replaceChildren(...page.items.map(feedItem));
      status.textContent = `updated ${new Date().toLocaleTimeString()} in ${ms} ms · poll #${this.polls}`;
      status.dataset.polls = String(this.polls);
      status.classList.remove("bad");
    } catch (err) {
      // Shown in place, not as a new alert every 2 s; the next poll tries again.
      const rid = err.requestId ? ` (request id: ${err.requestId})` : "";
      status.textContent = `${err.title}${err.status ? ` ${err.status}` : ""}: ${err.detail || err.message}${rid} — retrying every 2 s`;
      status.classList.add("bad");
      console.error("dashboard poll", err);
    }
  }
}

function feedItem(message) {
  return el("li", { "data-message": message.id },
    el("span", { class: "role", text: message.role === "user" ? "You" : "Assistant" }),
    el("span", { class: "when", text: ` · ${when(message.created_at)} · session ${short(message.session_id)}` }),
    el("div", { class: "content", text: message.content.length > 200 ? `${message.content.slice(0, 200)}…` : message.content }));
}
