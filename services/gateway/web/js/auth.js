// The token: taken from the URL fragment (#token=...), kept in this tab's sessionStorage.
// A fragment never reaches a server, so the token is in no access log and no referrer.

const KEY = "chatbus.token";

/** Move a token found in the fragment into sessionStorage and clear the fragment. */
export function adoptFragmentToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (!token) return;
  sessionStorage.setItem(KEY, token.trim());
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
}

export function token() {
  return sessionStorage.getItem(KEY) || "";
}

export function setToken(value) {
  sessionStorage.setItem(KEY, value.trim());
}

/** Forget the token and everything the tab kept for it. */
export function signOut() {
  sessionStorage.clear();
}

/** Return the token's user id (its `sub`), unverified: for display only. */
export function userOf(value) {
  try {
    const payload = value.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), "=")));
    return typeof claims.sub === "string" ? claims.sub : null;
  } catch {
    return null; // not a JWT we can read: the server will say what is wrong with it
  }
}
