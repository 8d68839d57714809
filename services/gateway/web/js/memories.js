// The memories panel: what the memory service drew from archived sessions, per persona.

import { query } from "./api.js";
import { $, el, showError, when } from "./ui.js";

export class MemoriesPanel {
  constructor(api) {
    this.api = api;
    this.loading = 0;
    $("memories-form").addEventListener("submit", (e) => { e.preventDefault(); this.load(); });
  }

  /** Show the memories of a persona (the one in the field when none is given). */
  async load(persona = null) {
    if (persona) $("memories-persona").value = persona;
    const name = $("memories-persona").value.trim() || "default";
    const loading = ++this.loading;
    try {
      const page = await this.api.get(`/api/memories${query({ persona: name, limit: 100 })}`);
      if (loading !== this.loading) return;
      $("memory-list").replaceChildren(...page.items.map((m) => this.item(m)));
      $("memories-empty").hidden = page.items.length > 0;
    } catch (err) {
      showError(err, `Loading the memories of ${name}`);
    }
  }

  item(memory) {
    const row = el("li", { "data-memory": memory.id },
      el("span", { class: "content", text: memory.content, title: when(memory.created_at) }));
    row.append(el("button", {
      type: "button", class: "quiet act", text: "Delete", "aria-label": `Delete memory: ${memory.content}`,
      onclick: async () => {
        try {
          await this.api.delete(`/api/memories/${memory.id}`);
          row.remove();
          $("memories-empty").hidden = $("memory-list").children.length > 0;
        } catch (err) {
          showError(err, "Deleting the memory");
        }
      },
    }));
    return row;
  }
}
