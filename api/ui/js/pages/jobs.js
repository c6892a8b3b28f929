// The jobs page: the tenant's jobs, newest first, refreshed every few seconds, filtered by status and
// paged with the API's cursors (the `next` link of each page).

import { getJson } from "../api.js";
import { age, fill, h, pct, statusBadge } from "../dom.js";
import { MAX_COMPARED } from "./compare.js";

const STATUSES = ["", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const REFRESH_MS = 3000;

/** MACs kept by the final model, as a fraction of the unpruned model's. */
export function macsKept(metrics) {
  if (!metrics) return null;
  if (metrics.final?.macs && metrics.baseline?.macs) return metrics.final.macs / metrics.baseline.macs;
  return metrics.budget?.metric === "macs" ? metrics.budget.achieved ?? null : null;
}

function jobRow(job, now, chosen, onChoose) {
  const m = job.metrics || {};
  const before = m.baseline?.accuracy, after = m.final?.accuracy;
  const link = h("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}`, dataset: { link: "" } }, job.name);
  const box = h("input", { type: "checkbox", checked: chosen.has(job.id), dataset: { compare: job.id },
    "aria-label": `compare ${job.name}`, onchange: () => onChoose(job.id, box.checked) });
  return h("tr", { dataset: { jobId: job.id, status: job.status } },
    h("td", {}, box),
    h("td.name", {}, link, h("div.muted.small.mono", {}, job.id.slice(0, 8))),
    h("td", {}, statusBadge(job.status)),
    h("td", {}, job.stage || "–"),
    h("td.progress-cell", {}, h("progress", { max: 1, value: job.progress ?? 0 }),
      h("span.small.muted", {}, ` ${Math.round(100 * (job.progress ?? 0))} %`)),
    h("td.num", {}, before === undefined ? "–" : `${pct(before, 1)} → ${pct(after, 1)}`),
    h("td.num", {}, pct(macsKept(m), 1)),
    h("td.num", { title: job.created_at }, age(job.created_at, now)));
}

export function renderJobs(main, { navigate }) {
  const params = new URLSearchParams(location.search);
  const limit = Math.min(100, Math.max(1, Number(params.get("limit")) || 20));
  let status = STATUSES.includes(params.get("status")) ? params.get("status") : "";
  const firstPage = () => `/jobs?${new URLSearchParams({ ...(status ? { status } : {}), limit })}`;
  let pages = [firstPage()]; // the API links of the pages seen so far; the last one is shown
  let next = null;
  let timer = null;
  let stopped = false;

  const body = h("tbody");
  const chosen = new Set(); // kept across refreshes and pages
  const compareButton = h("button.quiet", { id: "compare-jobs", type: "button", disabled: true,
    onclick: () => navigate(`/ui/compare?ids=${[...chosen].join(",")}`) }, "Compare");
  function choose(id, on) {
    if (on && chosen.size >= MAX_COMPARED) { load(); return; } // the box unticks on the redraw
    if (on) chosen.add(id); else chosen.delete(id);
    compareButton.disabled = chosen.size < 2;
    compareButton.textContent = chosen.size ? `Compare ${chosen.size}` : "Compare";
  }
  const info = h("span.muted.small", { id: "jobs-info" });
  const error = h("p.error", { role: "alert" });
  const prev = h("button.quiet", { id: "prev-page", type: "button", onclick: () => { pages.pop(); load(); } }, "← Newer");
  const nextButton = h("button.quiet", { id: "next-page", type: "button", onclick: () => { pages.push(next); load(); } }, "Older →");
  const filter = h("select", {
    id: "status-filter",
    onchange: () => {
      status = filter.value;
      const query = new URLSearchParams({ ...(status ? { status } : {}), ...(params.get("limit") ? { limit } : {}) });
      history.replaceState(null, "", `/ui${query.size ? `?${query}` : ""}`);
      pages = [firstPage()];
      load();
    },
  }, STATUSES.map((s) => h("option", { value: s, selected: s === status }, s || "all statuses")));

  async function load() {
    clearTimeout(timer);
    try {
      const page = await getJson(pages.at(-1));
      if (stopped) return;
      next = page.next;
      const now = Date.now();
      fill(body, page.items.length ? page.items.map((job) => jobRow(job, now, chosen, choose))
        : h("tr", {}, h("td.empty", { colSpan: 8 }, status ? `No ${status} jobs.` : "No jobs yet. ", status ? "" : h("a", { href: "/ui/submit", dataset: { link: "" } }, "Submit one."))));
      prev.disabled = pages.length === 1;
      nextButton.disabled = !next;
      info.textContent = `page ${pages.length} · refreshed ${new Date(now).toLocaleTimeString()}`;
      error.textContent = "";
    } catch (e) {
      if (stopped || e.status === 401) return;
      error.textContent = `Could not load the jobs: ${e.message}`;
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }

  fill(main,
    h("section.card", {},
      h("div.toolbar", {}, h("h1", {}, "Jobs"), h("label.inline", {}, "Status ", filter), info,
        h("span.spacer"), compareButton,
        h("button.primary", { type: "button", onclick: () => navigate("/ui/submit") }, "New job")),
      error,
      h("table.jobs", { id: "jobs" },
        h("thead", {}, h("tr", {}, ["", "name", "status", "stage", "progress", "accuracy before → after", "MACs kept", "age"]
          .map((t) => h("th", {}, t)))),
        body),
      h("div.pager", {}, prev, nextButton)));
  load();
  return () => { stopped = true; clearTimeout(timer); };
}
