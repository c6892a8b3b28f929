// The data page: the tenant's uploaded datasets (image-folder archives) and checkpoints (safetensors state
// dicts), each uploaded with a progress bar, listed with what a spec names it by, and deleted.

import { ApiError, getJson, getKey, request } from "../api.js";
import { age, bytes, confirmDialog, fill, h } from "../dom.js";

const KINDS = {
  datasets: { title: "Datasets", accept: ".zip,.tar,.tar.gz,.tgz", what: "an image-folder archive (zip, tar or tar.gz "
    + "of train/<class>/…, test/<class>/… and optionally val/<class>/…)",
    columns: ["id", "classes", "images", "bytes", "age", ""],
    cells: (d, now) => [d.classes.join(", "), Object.entries(d.counts).map(([k, v]) => `${k} ${v}`).join(" · "),
      bytes(d.bytes), age(d.created_at, now)] },
  checkpoints: { title: "Checkpoints", accept: ".safetensors", what: "a safetensors state dict of the unpruned model",
    columns: ["id", "tensors", "sha-256", "bytes", "age", ""],
    cells: (c, now) => [String(c.tensors), `${c.sha256.slice(0, 16)}…`, bytes(c.bytes), age(c.created_at, now)] },
};

/** The media type the API takes a raw upload as, from the file's first bytes (as the CLI decides). */
async function mediaType(kind, file) {
  if (kind === "checkpoints") return "application/octet-stream";
  const head = new Uint8Array(await file.slice(0, 512).arrayBuffer());
  if (head[0] === 0x50 && head[1] === 0x4b) return "application/zip";
  if (head[0] === 0x1f && head[1] === 0x8b) return "application/gzip";
  if (new TextDecoder().decode(head.slice(257, 262)) === "ustar") return "application/x-tar";
  throw new Error(`${file.name} is not a zip, tar or tar.gz archive`);
}

/** POST the file as the raw body. XMLHttpRequest, not fetch: only it reports upload progress. */
function upload(kind, file, type, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/${kind}`);
    xhr.setRequestHeader("Authorization", `Bearer ${getKey()}`);
    xhr.setRequestHeader("Content-Type", type);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new Error("the upload did not reach the API"));
    xhr.send(file);
  });
}

function section(kind) {
  const spec = KINDS[kind];
  const body = h("tbody");
  const message = h("p.small", { role: "status", id: `${kind}-message` });
  const bar = h("progress", { max: 1, value: 0, hidden: true, id: `${kind}-progress` });
  const input = h("input", { type: "file", accept: spec.accept, id: `${kind}-file` });
  const button = h("button.primary", { type: "button", id: `${kind}-upload`, onclick: send }, "Upload");

  async function load() {
    const items = await getJson(`/${kind}`);
    const now = Date.now();
    fill(body, items.length ? items.map((item) => h("tr", { dataset: { id: item.id } },
      h("td.mono.small", {}, `upload:${item.id}`), spec.cells(item, now).map((c) => h("td", {}, c)),
      h("td", {}, h("button.quiet", { type: "button", onclick: () => remove(item.id) }, "Delete"))))
      : h("tr", {}, h("td.empty", { colSpan: spec.columns.length }, `No ${kind} yet.`)));
  }

  async function send() {
    const file = input.files[0];
    if (!file) { message.textContent = "Choose a file first."; return; }
    button.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    try {
      const type = await mediaType(kind, file);
      const item = await upload(kind, file, type, (done) => {
        bar.value = done;
        message.textContent = done < 1 ? `Sending ${Math.round(100 * done)} %` : "Checking…";
      });
      message.textContent = `Uploaded: a spec names it upload:${item.id}`;
      input.value = "";
      await load();
    } catch (e) {
      message.textContent = `Not uploaded: ${e.message}`;
    } finally {
      button.disabled = false;
      bar.hidden = true;
    }
  }

  async function remove(id) {
    if (!(await confirmDialog(`Delete upload:${id}?`, "Delete"))) return;
    try { await request(`/${kind}/${id}`, { method: "DELETE" }); await load(); }
    catch (e) { if (e.status !== 401) message.textContent = `Could not delete: ${e.message}`; }
  }

  load().catch((e) => { if (e.status !== 401) message.textContent = `Could not load: ${e.message}`; });
  return h("section.card", { id: kind },
    h("h2", {}, spec.title),
    h("p.small.muted", {}, `Upload ${spec.what}; a spec names it by the id shown.`),
    h("div.toolbar", {}, input, button, bar), message,
    h("table.jobs", {}, h("thead", {}, h("tr", {}, spec.columns.map((t) => h("th", {}, t)))), body));
}

export function renderData(main) {
  fill(main, section("datasets"), section("checkpoints"));
  return () => {};
}
