// Small DOM and formatting helpers. Every node is built with createElement/textContent, never from HTML
// strings, so job names, messages and errors from the API can never inject markup.

/** h("div.card", {onclick}, child, ...): an element with classes, attributes/properties and children. */
export function h(tag, attrs = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name);
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && key !== "list" && key !== "form") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const pct = (x, digits = 2) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(digits)} %`);

export function count(x) {
  if (x === null || x === undefined) return "–";
  if (Math.abs(x) >= 1e9) return `${(x / 1e9).toFixed(2)} G`;
  if (Math.abs(x) >= 1e6) return `${(x / 1e6).toFixed(2)} M`;
  if (Math.abs(x) >= 1e3) return `${(x / 1e3).toFixed(1)} k`;
  return String(x);
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export const ms = (x) => (x === null || x === undefined ? "–" : `${x.toFixed(2)} ms`);

/** "5 s", "3 min", "2 h", "4 d" since an ISO time. */
export function age(iso, now = Date.now()) {
  if (!iso) return "–";
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

export function statusBadge(status) {
  return h(`span.badge.status-${status}`, { dataset: { status } }, status);
}

/** A modal yes/no question (a <dialog>, so it is styled like the page and scriptable in tests). */
export function confirmDialog(question, action) {
  return new Promise((resolve) => {
    const dialog = h("dialog.confirm", {},
      h("p", {}, question),
      h("form", { method: "dialog" },
        h("button.quiet", { value: "no", type: "submit", dataset: { answer: "no" } }, "Keep"),
        h("button.danger", { value: "yes", type: "submit", dataset: { answer: "yes" } }, action)));
    dialog.addEventListener("close", () => { dialog.remove(); resolve(dialog.returnValue === "yes"); });
    document.body.append(dialog);
    dialog.showModal();
  });
}
