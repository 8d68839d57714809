// The sessions panel: list (cursor pages), create with a persona, archive, delete.

import { query } from "./api.js";
import { $, confirmDialog, el, showError, when } from "./ui.js";

const PAGE = 20;

export class SessionsPanel {
  /** hooks.onSelect(session) when one is picked; hooks.onDeleted(id) when one is gone. */
  constructor(api, hooks) {
    this.api = api;
    this.hooks = hooks;
    this.items = [];
    this.cursor = null;
    this.currentId = null;
    $("new-session").addEventListener("submit", (e) => { e.preventDefault(); this.create(); });
    $("sessions-more").addEventListener("click", () => this.load(false));
  }

  /** Load the first page (fresh) or the next one. */
  async load(fresh = true) {
    try {
      const page = await this.api.get(`/api/sessions${query({ limit: PAGE, cursor: fresh ? null : this.cursor })}`);
      this.items = fresh ? page.items : [...this.items, ...page.items];
      this.cursor = page.next_cursor;
      this.render();
    } catch (err) {
      showError(err, "Loading sessions");
    }
  }

  current() {
    return this.items.find((s) => s.id === this.currentId) || null;
  }

  async create() {
    const persona = $("new-persona").value.trim() || "default";
    const title = $("new-title").value.trim() || null;
    try {
      const session = await this.api.post("/api/sessions", { persona, title });
      $("new-title").value = "";
      // Creating archives the persona's previous active session: show the list as it is now.
      await this.load(true);
      if (!this.items.some((s) => s.id === session.id)) this.items.unshift(session);
      this.select(session);
    } catch (err) {
      showError(err, "Creating a session");
    }
  }

  select(session) {
    this.currentId = session.id;
    this.render();
    this.hooks.onSelect(session);
  }

  /** Read one session again (its message count moved) and show it. */
  async refresh(sessionId) {
    try {
      this.update(await this.api.get(`/api/sessions/${sessionId}`));
    } catch (err) {
      if (err.status === 404) {
        this.items = this.items.filter((s) => s.id !== sessionId);
        this.render();
      } else {
        showError(err, "Refreshing the session");
      }
    }
  }

  /** Replace a session's entry with a fresher copy. */
  update(session) {
    const index = this.items.findIndex((s) => s.id === session.id);
    if (index >= 0) this.items[index] = session;
    this.render();
  }

  async archive(session) {
    try {
      this.update(await this.api.post(`/api/sessions/${session.id}/archive`));
      if (session.id === this.currentId) this.hooks.onSelect(this.current());
    } catch (err) {
      showError(err, "Archiving the session");
    }
  }

  async remove(session) {
    const name = session.title || session.persona;
    const sure = await confirmDialog(
      `Delete the session "${name}" with its ${session.message_count} messages and its memories? This cannot be undone.`,
    );
    if (!sure) return;
    try {
      await this.api.delete(`/api/sessions/${session.id}`);
      this.items = this.items.filter((s) => s.id !== session.id);
      if (this.currentId === session.id) this.currentId = null;
      this.render();
      this.hooks.onDeleted(session.id);
    } catch (err) {
      showError(err, "Deleting the session");
    }
  }

  render() {
    const list = $("session-list");
    list.replaceChildren(...this.items.map((s) => this.item(s)));
    if (this.items.length === 0) list.append(el("li", { class: "hint", text: "No sessions yet." }));
    $("sessions-more").hidden = !this.cursor;
  }

  item(session) {
    const name = session.title || session.persona;
    const meta = `${session.persona} · ${session.status} · ${session.message_count} msg · ${when(session.updated_at)}`;
    const pick = el("button", {
      type: "button", class: "pick", "aria-current": session.id === this.currentId ? "true" : null,
      "aria-label": `Open session ${name}, ${meta}`, onclick: () => this.select(session),
    }, el("span", { class: "name", text: name }), el("span", { class: "meta", text: meta }));
    const archive = session.status === "active"
      ? el("button", {
        type: "button", class: "quiet act", text: "Archive", "aria-label": `Archive session ${name}`,
        onclick: () => this.archive(session),
      })
      : null;
    const remove = el("button", {
      type: "button", class: "quiet act", text: "Delete", "aria-label": `Delete session ${name}`,
      onclick: () => this.remove(session),
    });
    return el("li", { "data-session": session.id }, pick, archive, remove);
  }
}
