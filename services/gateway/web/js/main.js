// The app's start: sign in, wire the panels, resume a reply a reload interrupted.

import { Api } from "./api.js";
import * as auth from "./auth.js";
import { ChatPanel } from "./chat.js";
import { Dashboard } from "./dashboard.js";
import { MemoriesPanel } from "./memories.js";
import { forget, load as loadReply } from "./reply.js";
import { SessionsPanel } from "./sessions.js";
import { $, clearErrors, showError } from "./ui.js";

const SESSION_KEY = "chatbus.session";

auth.adoptFragmentToken();

const api = new Api(auth.token, signedOut);
const memories = new MemoriesPanel(api);
const dashboard = new Dashboard(api);
const chat = new ChatPanel(api, { onChanged: (sessionId) => sessions.refresh(sessionId) });
const sessions = new SessionsPanel(api, {
  onSelect(session) {
    sessionStorage.setItem(SESSION_KEY, session.id);
    chat.open(session);
    memories.load(session.persona);
    setView("chat");
  },
  onDeleted(sessionId) {
    if (sessionStorage.getItem(SESSION_KEY) === sessionId) sessionStorage.removeItem(SESSION_KEY);
    chat.sessionDeleted(sessionId);
    memories.load();
  },
});

function setView(view) {
  document.body.dataset.view = view;
  for (const tab of document.querySelectorAll(".tabs button")) {
    tab.setAttribute("aria-current", tab.dataset.view === view ? "true" : "false");
  }
}

function showSignIn() {
  dashboard.stop();
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("whoami").textContent = "";
  $("signin").hidden = false;
  $("signin-token").focus();
}

/** A 401: the token is missing, expired or refused; ask for another. */
function signedOut(err) {
  if (!$("signin").hidden) return;
  auth.signOut();
  showError(err, "Signed out");
  showSignIn();
}

async function showApp() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  const user = auth.userOf(auth.token());
  $("whoami").textContent = user ? `signed in as ${user}` : "signed in";
  delete document.body.dataset.ready;
  await sessions.load(true);
  if (!auth.token()) return; // refused (401): the sign-in form is back
  const saved = loadReply();
  const wanted = saved ? saved.sessionId : sessionStorage.getItem(SESSION_KEY);
  let session = sessions.items.find((s) => s.id === wanted) || null;
  if (!session && wanted) {
    try {
      session = await api.get(`/api/sessions/${wanted}`);
    } catch (err) {
      if (err.status !== 404) showError(err, "Reopening the session");
      if (saved) forget(); // its session is gone, and so is the reply
    }
  }
  // The reply a reload interrupted resumes, after its last event, when its session opens.
  if (saved && session) chat.parked.set(saved.sessionId, saved);
  // The user may have created or picked a session while the list loaded: keep it.
  if (sessions.currentId === null) {
    session = session || sessions.items.find((s) => s.status === "active") || null;
    if (session) sessions.select(session);
    else chat.open(null);
  }
  dashboard.restart();
  document.body.dataset.ready = "true";
}

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  auth.setToken($("signin-token").value);
  $("signin-token").value = "";
  clearErrors();
  showApp();
});

$("sign-out").addEventListener("click", () => {
  auth.signOut();
  location.replace(location.pathname);
});

for (const tab of document.querySelectorAll(".tabs button")) {
  tab.addEventListener("click", () => setView(tab.dataset.view));
}

document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape" || $("confirm").open || !chat.busy) return;
  e.preventDefault();
  chat.stop();
});

window.addEventListener("unhandledrejection", (e) => showError(e.reason || new Error("unknown failure"), "Unexpected"));

setView("chat");
if (auth.token()) showApp();
else showSignIn();
