// The compare page: two to four jobs side by side, what each kept and what it scored, with the latency
// speed-up as its interval allows and the channels each layer kept. Chosen on the jobs page.

import { getJson } from "../api.js";
import { count, fill, h, pct, statusBadge } from "../dom.js";

export const MAX_COMPARED = 4;
const ID = /^[0-9a-f-]{36}$/;

/** The speed-up at one batch size, worded as the report words it, with its 95 % interval. */
export function speedup(report, batch) {
  const s = report?.latency?.batches?.[batch]?.speedup;
  return s ? `${s.text} [${s.low.toFixed(2)}–${s.high.toFixed(2)}×]` : "–";
}

const ratio = (report, key) => {
  const before = report?.baseline?.[key], after = report?.final?.[key];
  return before && after !== undefined ? `${(after / before).toFixed(3)}×` : "–";
};

const ROWS = [
  ["status", (job) => statusBadge(job.status)],
  ["model", (job) => `${job.spec.model.arch}${job.spec.model.width !== 1 ? ` ×${job.spec.model.width}` : ""}`],
  ["dataset", (job) => job.spec.dataset.name],
  ["budget", (job) => `keep ${pct(job.spec.prune.budget.keep, 0)} of ${job.spec.prune.budget.metric}`],
  ["agent", (job) => job.spec.prune.agent],
  ["accuracy before", (_, r) => pct(r?.baseline?.accuracy)],
  ["accuracy after", (_, r) => pct(r?.final?.accuracy)],
  ["MACs kept", (_, r) => ratio(r, "macs")],
  ["params kept", (_, r) => ratio(r, "params")],
  ["params after", (_, r) => count(r?.final?.params)],
  ["latency, batch 1", (_, r) => speedup(r, "1")],
  ["latency, batch 64", (_, r) => speedup(r, "64")],
  ["finalist returned", (_, r) => r?.finalists?.winner ?? "–"],
  ["channels per layer", (_, r) => h("span.mono.small", {}, (r?.layers || []).map((l) => l.channels_after).join(" ") || "–")],
];

export function renderCompare(main) {
  const ids = (new URLSearchParams(location.search).get("ids") || "").split(",").filter((id) => ID.test(id))
    .slice(0, MAX_COMPARED);
  const box = h("div", { id: "compare" }, h("p.muted", {}, "Loading…"));
  fill(main, h("section.card", {},
    h("div.toolbar", {}, h("a.small", { href: "/ui", dataset: { link: "" } }, "← Jobs")),
    h("h1", {}, "Compare jobs"), box));
  let stopped = false;

  Promise.all(ids.map(async (id) => {
    const job = await getJson(`/jobs/${id}`);
    const report = job.status === "succeeded" ? await getJson(`/jobs/${id}/report`) : null;
    return { job, report };
  })).then((items) => {
    if (stopped) return;
    if (items.length < 2) { fill(box, h("p.muted", {}, "Choose two to four jobs on the jobs page.")); return; }
    fill(box, h("table.compare", { id: "compare-table" },
      h("thead", {}, h("tr", {}, h("th"), items.map(({ job }) => h("th", { dataset: { jobId: job.id } },
        h("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}`, dataset: { link: "" } }, job.name))))),
      h("tbody", {}, ROWS.map(([label, cell]) => h("tr", { dataset: { row: label } }, h("th", {}, label),
        items.map(({ job, report }) => h("td.num", {}, cell(job, report))))))));
  }).catch((e) => { if (!stopped && e.status !== 401) fill(box, h("p.error", {}, `Could not load: ${e.message}`)); });
  return () => { stopped = true; };
}
