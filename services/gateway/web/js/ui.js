// Small DOM helpers shared by the panels: elements, errors, notices, a confirm dialog.

export const $ = (id) => document.getElementById(id);

/** Build an element: el("li", {class: "x", "aria-label": "y"}, child, "text"). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/** Show an error with its detail and request id until the user dismisses it. */
export function showError(err, context = "") {
  console.error(context, err);
  const title = err.title || err.name || "Error";
  const status = err.status ? ` (${err.status})` : "";
  const detail = err.detail || err.message || String(err);
  const what = el("div", { class: "what" },
    el("strong", { text: `${context ? `${context}: ` : ""}${title}${status}` }),
    document.createTextNode(` — ${detail}`));
  if (err.errors) {
    const fields = err.errors.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
    what.append(el("div", { text: fields }));
  }
  if (err.requestId) what.append(el("div", { class: "rid", text: `request id: ${err.requestId}` }));
  const item = el("div", { class: "error", role: "alert" }, what);
  item.append(el("button", {
    type: "button", class: "quiet", text: "Dismiss", "aria-label": "Dismiss this error",
    onclick: () => item.remove(),
  }));
  $("errors").append(item);
  while ($("errors").children.length > 5) $("errors").firstElementChild.remove();
}

/** Clear every error shown. */
export function clearErrors() {
  $("errors").replaceChildren();
}

/** Show a line of status (a countdown, a reconnect); onCancel adds a Cancel button. */
export function showNotice(text, onCancel = null) {
  $("notice").hidden = false;
  $("notice-text").textContent = text;
  const cancel = $("notice-cancel");
  cancel.hidden = !onCancel;
  cancel.onclick = onCancel;
}

export function hideNotice() {
  $("notice").hidden = true;
  $("notice-cancel").onclick = null;
}

/** Ask a yes/no question in a modal dialog; resolve true on the confirming button. */
export function confirmDialog(text, confirmLabel = "Delete") {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = confirmLabel;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    dialog.onclose = () => done(false); // Esc
    dialog.showModal();
  });
}

/** Format an RFC 3339 time for people: the time today, else the date and time. */
export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

/** Shorten an id for display. */
export const short = (id) => String(id).slice(0, 8);
