// The dashboard's entry point: sign-in, and client-side routing between the pages. Every page is
// served as the same index.html, so a copied link (/ui/jobs/<id>) opens the right page.

import { clearKey, getKey, handleUnauthorized, setKey } from "./api.js";
import { renderCompare } from "./pages/compare.js";
import { renderData } from "./pages/data.js";
import { renderJob } from "./pages/job.js";
import { renderJobs } from "./pages/jobs.js";
import { renderSignIn } from "./pages/signin.js";
import { renderSubmit } from "./pages/submit.js";
import { renderWebhooks } from "./pages/webhooks.js";

const main = document.getElementById("main");
let cleanup = () => {};

/** A key handed over in the link (#key=…) is kept for this tab, then taken out of the address bar and
 * the history, so it is not bookmarked, shared or shown on screen. */
function takeKeyFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (key) {
    setKey(key);
    history.replaceState(history.state, "", location.pathname + location.search);
  }
}

export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

function render(notice = "") {
  cleanup();
  cleanup = () => {};
  const signedIn = Boolean(getKey());
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  if (!signedIn) {
    renderSignIn(main, { notice, onSignedIn: () => render() });
    return;
  }
  const path = location.pathname.replace(/\/+$/, "") || "/ui";
  const context = { navigate };
  let match;
  if (path === "/ui/submit") cleanup = renderSubmit(main, context);
  else if (path === "/ui/compare") cleanup = renderCompare(main, context);
  else if (path === "/ui/data") cleanup = renderData(main, context);
  else if (path === "/ui/webhooks") cleanup = renderWebhooks(main, context);
  else if ((match = path.match(/^\/ui\/jobs\/([^/]+)$/))) cleanup = renderJob(main, decodeURIComponent(match[1]), context);
  else cleanup = renderJobs(main, context);
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.getAttribute("href") === path);
  }
}

// Links marked data-link change the page without a reload.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link]");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", () => render());
window.addEventListener("hashchange", () => { if (location.hash.includes("key=")) { takeKeyFromFragment(); render(); } });
document.getElementById("sign-out").addEventListener("click", () => { clearKey(); render(); });
handleUnauthorized(() => render("The API did not accept the key. Sign in again."));

takeKeyFromFragment();
render();
