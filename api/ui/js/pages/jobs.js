// The jobs page: the tenant's jobs, newest first, refreshed every few seconds, filtered by status and by
// a part of their name, paged with the API's cursors (the `next` link of each page), and sorted by any
// column within the page shown.

import { getJson } from "../api.js";
import { age, duration, fill, h, pct, statusBadge } from "../dom.js";
import { MAX_COMPARED } from "./compare.js";

const STATUSES = ["", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const REFRESH_MS = 3000;

/** MACs kept by the final model, as a fraction of the unpruned model's. */
export function macsKept(metrics) {
  if (!metrics) return null;
  if (metrics.final?.macs && metrics.baseline?.macs) return metrics.final.macs / metrics.baseline.macs;
  return metrics.budget?.metric === "macs" ? metrics.budget.achieved ?? null : null;
}

const paramsKept = (m) => (m?.final?.params && m?.baseline?.params ? m.final.params / m.baseline.params : null);
const speedupAt1 = (m) => m?.latency?.batches?.["1"]?.speedup ?? null;
const seconds = (job, now) => (job.started_at ? ((job.finished_at ? Date.parse(job.finished_at) : now)
  - Date.parse(job.started_at)) / 1000 : null);

/** The list's columns: a title, the cell, and (for the sortable ones) the value a sort compares. */
const COLUMNS = [
  { title: "name", sort: (job) => job.name.toLowerCase(), cell: (job) => h("td.name", {},
    h("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}`, dataset: { link: "" } }, job.name),
    h("div.muted.small.mono", {}, job.id.slice(0, 8))) },
  { title: "status", sort: (job) => job.status, cell: (job) => h("td", {}, statusBadge(job.status)) },
  { title: "stage", cell: (job) => h("td", {}, job.stage || "–") },
  { title: "progress", sort: (job) => job.progress ?? 0, cell: (job) => h("td.progress-cell", {},
    h("progress", { max: 1, value: job.progress ?? 0 }), h("span.small.muted", {}, ` ${Math.round(100 * (job.progress ?? 0))} %`)) },
  { title: "accuracy before → after", sort: (job) => job.metrics?.final?.accuracy, cell: (job) => {
    const m = job.metrics || {};
    return h("td.num", {}, m.baseline?.accuracy === undefined ? "–" : `${pct(m.baseline.accuracy, 1)} → ${pct(m.final?.accuracy, 1)}`);
  } },
  { title: "MACs kept", sort: (job) => macsKept(job.metrics), cell: (job) => h("td.num", {}, pct(macsKept(job.metrics), 1)) },
  { title: "params kept", sort: (job) => paramsKept(job.metrics), cell: (job) => h("td.num", {}, pct(paramsKept(job.metrics), 1)) },
  { title: "speed-up, batch 1", sort: (job) => speedupAt1(job.metrics)?.median, cell: (job) => {
    const s = speedupAt1(job.metrics);
    return h("td.num", { title: s ? `95 % interval ${s.low.toFixed(2)}–${s.high.toFixed(2)}×` : "" }, s ? s.text : "–");
  } },
  { title: "duration", sort: (job, now) => seconds(job, now), cell: (job, now) => h("td.num", {}, duration(seconds(job, now)) || "–") },
  { title: "age", sort: (job) => Date.parse(job.created_at), cell: (job, now) => h("td.num", { title: job.created_at }, age(job.created_at, now)) },
];

function jobRow(job, now, chosen, onChoose) {
  const box = h("input", { type: "checkbox", checked: chosen.has(job.id), dataset: { compare: job.id },
    "aria-label": `compare ${job.name}`, onchange: () => onChoose(job.id, box.checked) });
  return h("tr", { dataset: { jobId: job.id, status: job.status } }, h("td", {}, box), COLUMNS.map((c) => c.cell(job, now)));
}

/** ``jobs`` sorted by a column (missing values last, whichever the direction); unsorted without one. */
function sorted(jobs, column, direction, now) {
  if (!column) return jobs;
  const value = (job) => column.sort(job, now);
  const missing = (v) => v === null || v === undefined || Number.isNaN(v);
  return [...jobs].sort((a, b) => {
    const x = value(a), y = value(b);
    if (missing(x) || missing(y)) return missing(x) - missing(y);
    return (x < y ? -1 : x > y ? 1 : 0) * direction;
  });
}

export function renderJobs(main, { navigate }) {
  const params = new URLSearchParams(location.search);
  const limit = Math.min(100, Math.max(1, Number(params.get("limit")) || 20));
  let status = STATUSES.includes(params.get("status")) ? params.get("status") : "";
  let name = (params.get("name") || "").slice(0, 200);
  let sortColumn = null, sortDirection = 1, items = [];
  const query = () => ({ ...(status ? { status } : {}), ...(name ? { name } : {}) });
  const firstPage = () => `/jobs?${new URLSearchParams({ ...query(), limit })}`;
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
  function restart() {
    const shown = new URLSearchParams({ ...query(), ...(params.get("limit") ? { limit } : {}) });
    history.replaceState(null, "", `/ui${shown.size ? `?${shown}` : ""}`);
    pages = [firstPage()];
    load();
  }
  const filter = h("select", { id: "status-filter", onchange: () => { status = filter.value; restart(); } },
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s || "all statuses")));
  let typing = null;
  const search = h("input", { type: "search", id: "job-search", placeholder: "name contains…", value: name,
    maxLength: 200, "aria-label": "search job names",
    oninput: () => { clearTimeout(typing); typing = setTimeout(() => { name = search.value.trim(); restart(); }, 300); } });
  const headers = COLUMNS.map((column) => {
    if (!column.sort) return h("th", {}, column.title);
    const th = h("th.sortable", { title: "sort this page by it", dataset: { sort: column.title }, onclick: () => {
      sortDirection = sortColumn === column ? -sortDirection : 1;
      sortColumn = column;
      headers.forEach((other) => other.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", sortDirection > 0 ? "ascending" : "descending");
      draw();
    } }, column.title);
    return th;
  });

  function draw() {
    const now = Date.now();
    const empty = status || name ? "No jobs match." : "No jobs yet. ";
    fill(body, items.length ? sorted(items, sortColumn, sortDirection, now).map((job) => jobRow(job, now, chosen, choose))
      : h("tr", {}, h("td.empty", { colSpan: COLUMNS.length + 1 }, empty,
        status || name ? "" : h("a", { href: "/ui/submit", dataset: { link: "" } }, "Submit one."))));
  }

  async function load() {
    clearTimeout(timer);
    try {
      const page = await getJson(pages.at(-1));
      if (stopped) return;
      next = page.next;
      items = page.items;
      draw();
      const now = Date.now();
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
      h("div.toolbar", {}, h("h1", {}, "Jobs"), h("label.inline", {}, "Status ", filter), search, info,
        h("span.spacer"), compareButton,
        h("button.primary", { type: "button", onclick: () => navigate("/ui/submit") }, "New job")),
      error,
      h("table.jobs", { id: "jobs" },
        h("thead", {}, h("tr", {}, h("th"), headers)),
        body),
      h("div.pager", {}, prev, nextButton)));
  load();
  return () => { stopped = true; clearTimeout(timer); clearTimeout(typing); };
}
