// The webhooks page: the receivers the API notifies of the tenant's jobs, added (the signing secret is
// shown once), listed with their recent deliveries, sent a test event, and removed.

import { getJson, postJson, request } from "../api.js";
import { age, confirmDialog, fill, h } from "../dom.js";

const EVENTS = ["job.succeeded", "job.failed", "job.cancelled", "job.stage"];
const DEFAULT_EVENTS = EVENTS.slice(0, 3);

export function renderWebhooks(main) {
  const list = h("div", { id: "webhook-list" });
  const message = h("p.small", { role: "status", id: "webhook-message" });
  const url = h("input", { type: "url", id: "webhook-url", placeholder: "https://example.com/hooks/rlprune", size: 48 });
  const boxes = EVENTS.map((name) => h("input", { type: "checkbox", value: name, checked: DEFAULT_EVENTS.includes(name) }));

  async function load() {
    const hooks = await getJson("/webhooks");
    const now = Date.now();
    const rows = await Promise.all(hooks.map(async (hook) => {
      const page = await getJson(`/webhooks/${hook.id}/deliveries?limit=20`);
      return h("section.hook", { dataset: { webhook: hook.id } },
        h("div.toolbar", {}, h("span.mono", {}, hook.url), h("span.small.muted", {}, hook.events.join(" · ")),
          h("span.spacer"), h("button.quiet", { type: "button", dataset: { action: "test" }, onclick: () => test(hook) },
            "Send test event"),
          h("button.quiet", { type: "button", dataset: { action: "remove" }, onclick: () => remove(hook) }, "Remove")),
        page.items.length
          ? h("table.jobs.small", {}, h("thead", {}, h("tr", {}, ["when", "event", "job", "attempt", "status", "HTTP"]
            .map((t) => h("th", {}, t)))), h("tbody", {}, page.items.map((d) => h("tr", {},
            h("td", { title: d.at }, age(d.at, now)), h("td", {}, d.event), h("td.mono.small", {}, d.job_id.slice(0, 8)),
            h("td.num", {}, String(d.attempt)), h("td", {}, d.status), h("td.num", {}, d.response_status ?? d.error ?? "")))))
          : h("p.small.muted", {}, "No deliveries yet."));
    }));
    fill(list, rows.length ? rows : h("p.muted", {}, "No webhooks yet."));
  }

  async function add(event) {
    event.preventDefault();
    const events = boxes.filter((b) => b.checked).map((b) => b.value);
    try {
      const hook = await postJson("/webhooks", { url: url.value.trim(), events });
      fill(message, "Added. Its signing secret, shown this once: ", h("code", { id: "webhook-secret" }, hook.secret));
      url.value = "";
      await load();
    } catch (e) {
      if (e.status !== 401) message.textContent = `Not added: ${(e.problem?.errors || []).map((f) => `${f.field}: ${f.message}`).join("; ") || e.message}`;
    }
  }

  async function test(hook) {
    try {
      const sent = await postJson(`/webhooks/${hook.id}/test`, {});
      message.textContent = `Test event ${sent.id} queued for ${hook.url}; its attempts appear below.`;
      await load();
    } catch (e) {
      if (e.status !== 401) message.textContent = `Not sent: ${e.problem?.detail || e.message}`;
    }
  }

  async function remove(hook) {
    if (!(await confirmDialog(`Stop notifying ${hook.url}? Its pending messages are dropped.`, "Remove"))) return;
    try { await request(`/webhooks/${hook.id}`, { method: "DELETE" }); await load(); }
    catch (e) { if (e.status !== 401) message.textContent = `Could not remove: ${e.message}`; }
  }

  fill(main, h("section.card", {},
    h("h1", {}, "Webhooks"),
    h("p.small.muted", {}, "Each message is a signed POST (Standard Webhooks) with the job as GET /jobs/{id} shows it."),
    h("form", { id: "webhook-form", onsubmit: add },
      h("div.toolbar", {}, url, h("button.primary", { type: "submit", id: "webhook-add" }, "Add")),
      h("div.toolbar.small", {}, EVENTS.map((name, i) => h("label.inline", {}, boxes[i], ` ${name}`)))),
    message, list));
  load().catch((e) => { if (e.status !== 401) message.textContent = `Could not load: ${e.message}`; });
  const refresh = setInterval(() => load().catch(() => {}), 5000);  // deliveries arrive as workers send them
  return () => clearInterval(refresh);
}
