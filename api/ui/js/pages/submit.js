// The submit page: a job spec written as JSON or YAML, sent to POST /jobs. A 422 problem lists each
// invalid field; those messages appear under the editor, each naming its field.

import { ApiError, example, examples, getJson, postJson } from "../api.js";
import { fill, h } from "../dom.js";
import { dump as dumpYaml, load as loadYaml } from "../../vendor/js-yaml.mjs";

/** The spec as a value: JSON when it parses as JSON, else YAML (JSON is YAML too, but its errors read better). */
export function parseSpec(text) {
  const trimmed = text.trim();
  if (!trimmed) return {};
  if (trimmed.startsWith("{")) {
    try { return JSON.parse(trimmed); } catch { /* perhaps YAML flow style; let the YAML parser say */ }
  }
  return loadYaml(text);
}

/** Where the job page leaves a spec for "Clone and edit" (this tab only, read once). */
export const CLONE_KEY = "rlprune.clone";

export function renderSubmit(main, { navigate }) {
  const editor = h("textarea", { id: "spec", spellcheck: false, rows: 26, "aria-describedby": "spec-errors",
    placeholder: "name: my-job\nmodel: {arch: vgg11, width: 0.25}\ndataset: {name: digits}\n…" });
  const errors = h("div.errors", { id: "spec-errors", role: "alert" });
  const picker = h("select", {
    id: "example",
    onchange: async () => {
      if (!picker.value) return;
      editor.value = await example(picker.value);
      fill(errors);
    },
  }, h("option", { value: "" }, "load an example…"));
  const button = h("button.primary", { type: "submit", id: "submit-job" }, "Submit job");
  // One of the tenant's uploaded datasets, written into the spec (the rest of the spec is kept).
  const datasets = h("select", {
    id: "dataset-picker",
    onchange: () => {
      if (!datasets.value) return;
      let spec;
      try { spec = parseSpec(editor.value) || {}; } catch { spec = {}; }
      if (typeof spec !== "object" || Array.isArray(spec)) spec = {};
      spec.dataset = { ...(spec.dataset || {}), name: "imagefolder", root: `upload:${datasets.value}` };
      editor.value = dumpYaml(spec, { sortKeys: false });
      datasets.value = "";
    },
  }, h("option", { value: "" }, "use an uploaded dataset…"));
  getJson("/datasets").then((items) => datasets.append(...items.map((d) =>
    h("option", { value: d.id }, `${d.classes.slice(0, 3).join(", ")}${d.classes.length > 3 ? ", …" : ""} (${d.id.slice(0, 8)})`))))
    .catch(() => { datasets.disabled = true; });

  examples().then(({ items }) => picker.append(...items.map((name) => h("option", { value: name }, name))))
    .catch(() => { picker.disabled = true; });

  function show(title, items = []) {
    fill(errors, h("p", {}, title), items.length ? h("ul", {}, items) : null);
    errors.classList.add("shown");
  }

  async function submit(event) {
    event.preventDefault();
    fill(errors);
    errors.classList.remove("shown");
    let spec;
    try {
      spec = parseSpec(editor.value);
    } catch (e) {
      show("The spec is neither valid JSON nor valid YAML:", [h("li", {}, h("pre", {}, e.message))]);
      return;
    }
    if (spec === null || typeof spec !== "object" || Array.isArray(spec)) {
      show("A spec is a mapping of fields, for example {\"model\": {\"arch\": \"vgg11\"}}.");
      return;
    }
    button.disabled = true;
    try {
      const job = await postJson("/jobs", spec);
      navigate(`/ui/jobs/${encodeURIComponent(job.id)}`);
    } catch (e) {
      if (!(e instanceof ApiError) || e.status === 401) { if (e.status !== 401) show(e.message); return; }
      const fields = e.problem.errors || [];
      if (fields.length) {
        show(`${e.problem.title || "Invalid spec"}:`, fields.map((f) =>
          h("li", { dataset: { field: f.field || "" } }, h("code.field", {}, f.field || "(spec)"), " ", f.message)));
      } else {
        show(`${e.problem.title || "Not accepted"} (${e.status}): ${e.problem.detail || ""}`);
      }
    } finally {
      button.disabled = false;
    }
  }

  const cloned = sessionStorage.getItem(CLONE_KEY);
  if (cloned !== null) {
    sessionStorage.removeItem(CLONE_KEY);
    editor.value = cloned;
  }
  fill(main, h("form.card.submit", { id: "submit-form", onsubmit: submit },
    h("div.toolbar", {}, h("h1", {}, "Submit a job"), h("span.spacer"), datasets, picker),
    h("p.muted", {}, "A job spec in JSON or YAML. Every field has a default; unknown fields are rejected."),
    editor, errors,
    h("div.actions", {}, button)));
  return () => {};
}
