// The job page: status and stage timeline, live training and search curves, the report's tables and
// per-layer chart, artifacts to download, the event log, and cancel / delete.

import { download, getJson, request } from "../api.js";
import { COLORS, LineChart, layerBars } from "../charts.js";
import { FINISHED, bytes, confirmDialog, count, duration, fill, h, ms, pct, statusBadge } from "../dom.js";
import { followEvents } from "../sse.js";
import { dump as dumpYaml } from "../../vendor/js-yaml.mjs";
import { speedup } from "./compare.js";
import { CLONE_KEY } from "./submit.js";

const STAGES = ["pretrain", "prune", "finetune", "export"];
const END_STATE = { succeeded: "done", failed: "stopped", cancelled: "cancelled" };
const PROXIES = {
  "calibrated-log-likelihood": "mean log-likelihood of the true class, at the temperature that suits the candidate best",
  "log-likelihood": "mean log-likelihood of the true class",
  top1: "top-1 accuracy",
};
const MAX_LOG_ROWS = 1000;
const RUN_COLORS = [COLORS.purple, COLORS.grey, COLORS.green];

export function renderJob(main, jobId, { navigate }) {
  const controller = new AbortController();
  const path = `/jobs/${encodeURIComponent(jobId)}`;
  const stageStarts = {}; // stage -> ISO time of its `stage` event
  const resumes = {}; // stage -> how many times a run of it continued from a checkpoint
  const warned = new Set(); // warning messages shown, from the events and then the report
  const runs = { pretrain: [], finetune: [] }; // run names seen per stage, the job's own model first
  let job = null;
  let resultsShown = false;
  let refreshTimer = null;
  let pollTimer = null;
  let searchFromReport = false;

  // Skeleton: every part exists from the start and fills in as data arrives.
  const title = h("h1", { id: "job-name" }, "…");
  const status = h("span", { id: "job-status" });
  const stage = h("span.muted", { id: "job-stage" });
  const progress = h("progress", { id: "job-progress", max: 1, value: 0 });
  const progressText = h("span.small.muted", { id: "job-progress-text" });
  const live = h("span.live.small", { id: "live" });
  const cancelButton = h("button.danger", { id: "cancel-job", type: "button", hidden: true, onclick: cancel }, "Cancel job");
  const deleteButton = h("button.danger", { id: "delete-job", type: "button", hidden: true, onclick: remove }, "Delete job");
  const specBox = h("pre.spec.small", { id: "job-spec" });
  const cloneButton = h("button.quiet", { id: "clone-job", type: "button", onclick: () => {
    sessionStorage.setItem(CLONE_KEY, specBox.textContent);
    navigate("/ui/submit");
  } }, "Clone and edit");
  const error = h("p.error", { id: "job-error", role: "alert" });
  const warningsBox = h("ul.warnings", { id: "job-warnings", hidden: true });
  const attemptsText = h("span.small.muted", { id: "job-attempts" });
  const timeline = h("ol.timeline", { id: "timeline" });
  const summary = h("div", { id: "summary" });
  const logBody = h("tbody");
  const artifactsBox = h("div", { id: "artifacts" }, h("p.muted", {}, "Artifacts appear when the job succeeds."));
  const layersBox = h("div", { id: "layers" }, h("p.muted", {}, "The per-layer channel counts appear when the job succeeds."));
  const baselinesBox = h("div", { id: "baselines" }, h("p.muted", {}, "No baseline results yet."));
  const searchInfo = h("p.small.muted", { id: "search-info" });
  const rewardInfo = h("p.small.muted", { id: "reward-definition" });
  const distillationInfo = h("p.small.muted", { id: "distillation-info" });
  const finalistsBox = h("div.small", { id: "finalists" });
  const chartBoxes = {
    pretrain: h("div.chart", { id: "chart-pretrain" }),
    finetune: h("div.chart", { id: "chart-finetune" }),
    search: h("div.chart", { id: "chart-search" }),
  };

  fill(main,
    h("section.card.job-head", {},
      h("div.toolbar", {}, h("a.small", { href: "/ui", dataset: { link: "" } }, "← Jobs")),
      h("div.toolbar", {}, title, status, stage, h("span.spacer"), live, cancelButton, deleteButton),
      h("div.toolbar", {}, h("span.mono.small.muted", {}, jobId), attemptsText),
      h("div.progress-line", {}, progress, progressText),
      error, warningsBox, timeline),
    h("div.grid2", {},
      h("section.card", {}, h("h2", {}, "Pretraining"), chartBoxes.pretrain),
      h("section.card", {}, h("h2", {}, "Finetuning"), chartBoxes.finetune, distillationInfo)),
    h("div.grid2", {},
      h("section.card", {}, h("h2", {}, "Channel search"), chartBoxes.search, rewardInfo, searchInfo, finalistsBox),
      h("section.card", {}, h("h2", {}, "Before → after"), summary)),
    h("div.grid2", {},
      h("section.card", {}, h("h2", {}, "Channels per layer"), layersBox),
      h("section.card", {}, h("h2", {}, "Baselines at the same budget"), baselinesBox)),
    h("section.card", {}, h("h2", {}, "Artifacts"), artifactsBox),
    h("section.card", {}, h("div.toolbar", {}, h("h2", {}, "Spec"), h("span.spacer"), cloneButton),
      h("p.small.muted", {}, "As the service holds it: every field, defaults included."), specBox),
    h("section.card", {}, h("h2", {}, "Events"),
      h("div.log", {}, h("table.events", { id: "events" },
        h("thead", {}, h("tr", {}, ["time", "type", "stage", "message"].map((t) => h("th", {}, t)))), logBody))));

  const trainingSeries = [
    { label: "loss", color: COLORS.orange },
    { label: "val accuracy", color: COLORS.blue, scale: "pct" },
  ];
  const trainingAxes = { yLabel: "training loss", pctLabel: "validation accuracy" };
  const charts = {
    pretrain: new LineChart(chartBoxes.pretrain, { series: trainingSeries, ...trainingAxes }),
    finetune: new LineChart(chartBoxes.finetune, { series: trainingSeries, ...trainingAxes }),
    search: new LineChart(chartBoxes.search, { xLabel: "search step", yLabel: "reward (proxy)", pctLabel: "accuracy", series: [
      { label: "mean reward", color: COLORS.grey },
      { label: "best so far", color: COLORS.green },
      { label: "mean accuracy", color: COLORS.blue, scale: "pct", dash: [4, 4], width: 1 },
    ] }),
  };

  function showJob(next) {
    job = next;
    document.title = `${job.name} · rlprune`;
    title.textContent = job.name;
    fill(status, statusBadge(job.status));
    stage.textContent = job.stage ? `stage: ${job.stage}` : "";
    progress.value = job.progress ?? 0;
    progressText.textContent = ` ${Math.round(100 * (job.progress ?? 0))} %`;
    cancelButton.hidden = !["queued", "running"].includes(job.status);
    deleteButton.hidden = !FINISHED.has(job.status);
    error.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
    specBox.textContent = dumpYaml(job.spec, { sortKeys: false });
    attemptsText.textContent = job.attempts > 1 ? ` · attempt ${job.attempts} (resumed after a worker stopped)` : "";
    const proxy = job.spec?.prune?.proxy;
    rewardInfo.textContent = PROXIES[proxy] ? `Reward: each candidate's ${PROXIES[proxy]} on the search half of the ` +
      "validation images, with its channels masked and BatchNorm re-estimated on training images, before any " +
      "finetuning. The proxy ranks candidates; finetuning decides (see the finalists)." : "";
    const distillation = job.spec?.finetune?.distillation;
    distillationInfo.textContent = distillation?.weight > 0
      ? `Distilled from the unpruned model: loss = ${1 - distillation.weight} × label cross-entropy + ` +
        `${distillation.weight} × T² × KL to its outputs softened at T = ${distillation.temperature}; ` +
        "the chart shows both parts." : "Finetuned on the labels alone (no distillation).";
    drawTimeline();
    if (FINISHED.has(job.status) && !resultsShown) {
      resultsShown = true;
      showResults();
    }
  }

  function drawTimeline() {
    const finished = FINISHED.has(job.status);
    const current = STAGES.indexOf(job.stage);
    const items = [h("li.done", {}, h("strong", {}, "queued"), h("span.small.muted", {}, time(job.created_at)))];
    STAGES.forEach((name, i) => {
      const start = stageStarts[name];
      const end = stageStarts[STAGES[i + 1]] || (finished || i < current ? job.finished_at : null);
      let state = "pending";
      if (i < current || (finished && job.status === "succeeded")) state = "done";
      else if (i === current) state = finished ? (job.status === "succeeded" ? "done" : "stopped") : "current";
      if (state === "stopped" && job.status === "cancelled") state = "cancelled";
      const took = start && end ? duration((Date.parse(end) - Date.parse(start)) / 1000) : "";
      const resumed = resumes[name] ? ` · resumed ×${resumes[name]}` : "";
      items.push(h(`li.${state}`, { dataset: { stage: name, state } }, h("strong", {}, name),
        h("span.small.muted", {}, start ? `${time(start)}${took ? ` · ${took}` : ""}${resumed}` : "")));
    });
    const end = finished ? END_STATE[job.status] : "pending";
    items.push(h(`li.${end}`, { dataset: { stage: "end", state: end } }, h("strong", {}, finished ? job.status : "done"),
      h("span.small.muted", {}, finished ? time(job.finished_at) : "")));
    fill(timeline, items);
  }

  function onEvent(event) {
    appendLog(event);
    if (event.type === "stage" && event.stage) stageStarts[event.stage] = event.at;
    if (event.type === "resumed" && event.stage) resumes[event.stage] = (resumes[event.stage] || 0) + 1;
    if (event.type === "warning") warn(event.message);
    if (event.type === "epoch" && charts[event.stage]) trainingPoint(event);
    if (event.type === "prune_step" && !searchFromReport) {
      const d = event.data;
      charts.search.put(d.step, { "mean reward": d.mean_reward, "best so far": d.best_so_far, "mean accuracy": d.mean_accuracy });
    }
    scheduleRefresh();
  }

  /** One epoch of a training run: the job's own model is drawn in full, a baseline's finetune as its
   * validation accuracy only (dashed), so the two can be compared epoch by epoch. */
  function trainingPoint(event) {
    const d = event.data;
    const seen = runs[event.stage];
    const run = d.run || "model";
    if (!seen.includes(run)) seen.push(run);
    const chart = charts[event.stage];
    if (seen[0] === run) {
      const parts = {};
      for (const [key, label, color] of [["label_loss", "label loss", COLORS.orange], ["distillation_loss", "distillation loss", COLORS.purple]]) {
        if (d[key] === null || d[key] === undefined) continue;  // a distilled finetune reports both parts
        if (!chart.has(label)) chart.addSeries({ label, color, dash: [2, 3], width: 1 });
        parts[label] = d[key];
      }
      chart.put(d.epoch, { loss: d.loss, "val accuracy": d.val_accuracy, ...parts });
    } else {
      const label = `val accuracy (${run})`;
      if (!chart.has(label)) chart.addSeries({ label, color: RUN_COLORS[(seen.length - 2) % RUN_COLORS.length], scale: "pct", dash: [6, 4] });
      chart.put(d.epoch, { [label]: d.val_accuracy });
    }
  }

  function warn(message) {
    if (!message || warned.has(message)) return;
    warned.add(message);
    warningsBox.append(h("li", {}, message));
    warningsBox.hidden = false;
  }

  function appendLog(event) {
    logBody.prepend(h("tr", { dataset: { type: event.type, id: event.id } },
      h("td.mono.small", { title: event.at }, time(event.at)), h("td", {}, event.type), h("td", {}, event.stage || ""),
      h("td", {}, event.message || "")));
    while (logBody.rows.length > MAX_LOG_ROWS) logBody.lastElementChild.remove();
  }

  // The job's status is re-read after events (at most once a second) and every 5 s in any case.
  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 1000);
  }

  async function refresh() {
    try {
      const fresh = await getJson(path, { signal: controller.signal });
      showJob(fresh);
    } catch (e) {
      if (controller.signal.aborted || e.status === 401) return;
      if (e.status === 404) { fill(main, h("section.card", {}, h("h1", {}, "Job not found"), h("p", {}, "There is no job ", h("code", {}, jobId), " for this key (it may have been deleted). "), h("a", { href: "/ui", dataset: { link: "" } }, "Back to the jobs"))); stop(); return; }
      error.textContent = `Could not load the job: ${e.message}`;
    }
  }

  async function follow() {
    let lastId = null;
    while (!controller.signal.aborted) {
      try {
        lastId = await followEvents(jobId, {
          onEvent, signal: controller.signal, lastEventId: lastId,
          onConnection: (up) => { live.textContent = up ? "● live" : "○ reconnecting…"; live.classList.toggle("up", up); },
        });
      } catch (e) {
        if (!controller.signal.aborted && e.status !== 401 && e.status !== 404) error.textContent = `Event stream: ${e.message}`;
        return;
      }
      if (controller.signal.aborted) return;
      await refresh();
      if (job && FINISHED.has(job.status)) break;
      await new Promise((resolve) => setTimeout(resolve, 1000)); // closed early (a restart): resume
    }
    live.textContent = "";
    live.classList.remove("up");
  }

  async function showResults() {
    if (job.status === "succeeded") {
      try {
        showReport(await getJson(`${path}/report`, { signal: controller.signal }));
      } catch (e) {
        if (!controller.signal.aborted) summary.append(h("p.error", {}, `Could not load the report: ${e.message}`));
      }
    }
    try {
      showArtifacts(await getJson(`${path}/artifacts`, { signal: controller.signal }));
    } catch (e) {
      if (!controller.signal.aborted) fill(artifactsBox, h("p.error", {}, `Could not list the artifacts: ${e.message}`));
    }
  }

  function showReport(report) {
    const search = report.search || {};
    const curve = search.reward_curve;
    if (curve && search.curve_steps?.length) {
      searchFromReport = true; // the report's curve is complete; the events may have been thinned
      charts.search.set(search.curve_steps, curve.mean, curve.best_so_far, search.accuracy_curve || null);
    }
    const facts = [
      search.method && `${search.method}${search.criterion ? ` / ${search.criterion}` : ""}`,
      search.evaluations !== undefined && `${search.evaluations} evaluations`,
      search.seconds !== undefined && `${search.seconds.toFixed(1)} s`,
      search.candidates_per_s !== undefined && `${search.candidates_per_s.toFixed(1)} candidates/s`,
      search.proxy?.held_out?.accuracy !== undefined && `held-out proxy accuracy ${pct(search.proxy.held_out.accuracy)}`,
    ].filter(Boolean);
    searchInfo.textContent = facts.join(" · ");
    if (report.finalists) fill(finalistsBox, finalists(report.finalists));
    (report.warnings || []).forEach((w) => warn(w.message));
    if (report.latency?.busy) {
      warn(`Latency was timed while other processes kept ${report.latency.other_cores} cores busy: ` +
        "treat the speed-ups as noisy, and time again on a quiet machine.");
    }
    fill(summary, comparison(report));
    if (report.layers?.length) fill(layersBox, layerBars(report.layers));
    fill(baselinesBox, baselines(report));
  }

  // What the search bought on this model: every finalist's validation accuracy, and which was returned and why.
  function finalists(section) {
    return [
      h("p", { id: "finalists-reason" }, `Returned: ${section.winner}. ${section.reason}.`),
      h("table", { id: "finalist-table" },
        h("thead", {}, h("tr", {}, ["finalist", "validation accuracy", "channels"].map((t) => h("th", {}, t)))),
        h("tbody", {}, section.finalists.map((f) => h("tr", { dataset: { finalist: f.name } },
          h("td", {}, f.name === section.winner ? `${f.name} (returned)` : f.name),
          h("td.num", {}, pct(f.val_accuracy)),
          h("td.mono.small", {}, Object.values(f.channels).join(" ")))))),
    ];
  }

  function showArtifacts(items) {
    if (!items.length) { fill(artifactsBox, h("p.muted", {}, "This job has no artifacts.")); return; }
    fill(artifactsBox, h("table.artifacts", { id: "artifact-list" },
      h("thead", {}, h("tr", {}, ["name", "size", "sha-256", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, items.map((a) => {
        const button = h("button.quiet", { type: "button", dataset: { artifact: a.name }, onclick: async () => {
          button.disabled = true;
          try { await download(`${path}/artifacts/${encodeURIComponent(a.name)}`, a.name); }
          catch (e) { if (e.status !== 401) error.textContent = `Download failed: ${e.message}`; }
          finally { button.disabled = false; }
        } }, "Download");
        return h("tr", {}, h("td.mono", {}, a.name), h("td.num", {}, bytes(a.bytes)),
          h("td.mono.small", { title: a.sha256 }, `${a.sha256.slice(0, 16)}…`), h("td", {}, button));
      }))));
  }

  async function cancel() {
    if (!(await confirmDialog(`Cancel ${job.name}? A running job stops within seconds; this cannot be undone.`, "Cancel job"))) return;
    try { showJob(await (await request(`${path}/cancel`, { method: "POST" })).json()); }
    catch (e) { if (e.status !== 401) error.textContent = `Could not cancel: ${e.message}`; }
  }

  async function remove() {
    if (!(await confirmDialog(`Delete ${job.name} and all its files?`, "Delete job"))) return;
    try { await request(path, { method: "DELETE" }); navigate("/ui"); }
    catch (e) { if (e.status !== 401) error.textContent = `Could not delete: ${e.message}`; }
  }

  function stop() {
    controller.abort();
    clearTimeout(refreshTimer);
    clearInterval(pollTimer);
    Object.values(charts).forEach((c) => c.destroy());
  }

  refresh().then(() => { if (!controller.signal.aborted) follow(); });
  pollTimer = setInterval(() => { if (job && !FINISHED.has(job.status)) refresh(); }, 5000);
  return stop;
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

/** Accuracy, size and speed of the unpruned, the pruned (before finetuning) and the final model. */
function comparison(report) {
  const cols = [["baseline", "before"], ["pruned", "pruned"], ["final", "final"]];
  const value = (key, pick) => cols.map(([k]) => pick(report[k] || {}));
  const rows = [
    ["accuracy", (m) => m.accuracy, (v) => pct(v)],
    ["params", (m) => m.params, count],
    ["MACs", (m) => m.macs, count],
    ["latency, batch 1", (m) => m.latency_ms?.batch1, ms],
    ["latency, batch 64", (m) => m.latency_ms?.batch64, ms],
  ];
  const ratio = (label, before, after) => {
    if (before === undefined || after === undefined || before === null || after === null) return "";
    if (label === "accuracy") return `${after >= before ? "+" : ""}${(100 * (after - before)).toFixed(2)} pt`;
    if (label.startsWith("latency")) return speedup(report, label.endsWith("64") ? "64" : "1");
    return `${(after / before).toFixed(3)}×`;
  };
  const budget = report.budget;
  const reestimated = report.pruned?.accuracy_bn_reestimated;
  return h("div", {},
    h("table.compare", { id: "comparison" },
      h("thead", {}, h("tr", {}, h("th"), cols.map(([, t]) => h("th.num", {}, t)), h("th.num", {}, "final / before"))),
      h("tbody", {}, rows.map(([label, pick, format]) => {
        const values = value(label, pick);
        return h("tr", {}, h("th", {}, label), values.map((v) => h("td.num", {}, format(v))),
          h("td.num.strong", {}, ratio(label, values[0], values[2])));
      }))),
    budget ? h("p.small.muted", {}, `Budget: keep ≤ ${pct(budget.keep, 0)} of ${budget.metric}; achieved ${pct(budget.achieved, 1)}.`) : null,
    reestimated === undefined ? null : h("p.small.muted", { id: "bn-reestimated" },
      `Pruned with BatchNorm re-estimated on 128 training images: ${pct(reestimated)} (against ${pct(report.pruned.accuracy)} ` +
      "as cut). Removing channels shifts the statistics later layers were normalised for; the search scores " +
      "candidates after re-estimating them, which is why its proxy accuracy sits above the pruned accuracy."));
}

/** The same-budget baselines next to the agent's result: did the search earn its keep? */
function baselines(report) {
  const entries = Object.entries(report.baselines || {});
  if (!entries.length) return h("p.muted", {}, "This job ran no baselines (spec field ", h("code", {}, "baselines"), ").");
  const agent = report.search?.method || "agent";
  const metric = report.budget?.metric || "cost";
  const rows = [[`${agent} (this job)`, report.pruned?.accuracy, report.final?.accuracy, report.budget?.achieved]];
  for (const [name, b] of entries) rows.push([name, b.pruned_accuracy, b.final_accuracy, b.achieved]);
  const best = Math.max(...rows.map((r) => r[2] ?? -1));
  return h("table.compare", { id: "baseline-table" },
    h("thead", {}, h("tr", {}, ["method", "pruned accuracy", "final accuracy", `${metric} kept`].map((t, i) => h(i ? "th.num" : "th", {}, t)))),
    h("tbody", {}, rows.map(([name, pruned, final, kept]) => h("tr", { dataset: { baseline: name } },
      h("td", {}, name), h("td.num", {}, pct(pruned)),
      h(final === best ? "td.num.strong" : "td.num", {}, pct(final)), h("td.num", {}, pct(kept, 1))))));
}
