// Following a job's events live.
//
// EventSource cannot send an Authorization header. The alternative, a short-lived signed token in the
// stream's URL, would put a credential into URLs (and so into proxy and access logs) and need new server
// code. Instead the stream is read with fetch(), which sends the bearer key like every other request,
// and parsed here: the Server-Sent Events format is a few lines of text per event. After a dropped
// connection the stream is reopened with Last-Event-ID, so no event is lost or repeated; the server
// ends the stream when the job finishes.

import { request } from "./api.js";

/** Split a text/event-stream into events: {id, event, data} for each blank-line-terminated block. */
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
  }

  reset() { this.data = []; this.event = ""; this.id = null; }

  push(text) {
    this.buffer += text;
    const lines = this.buffer.split(/\r\n|\r|\n/);
    this.buffer = lines.pop(); // an incomplete last line waits for the next chunk
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.onEvent({ id: this.id, event: this.event || "message", data: this.data.join("\n") });
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // a comment: the server's keep-alive ping
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id") this.id = value;
  }
}

/**
 * Follow ``/jobs/{id}/events`` until the server ends the stream (the job finished) or ``signal`` aborts.
 * ``onEvent`` gets each event's parsed JSON. Reconnects after a network error with Last-Event-ID,
 * waiting a little longer each time (at most 10 s). Resolves with the id of the last event seen.
 */
export async function followEvents(jobId, { onEvent, signal, lastEventId = null, onConnection = () => {} }) {
  let delay = 500;
  let lastId = lastEventId;
  while (!signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId !== null) headers["Last-Event-ID"] = String(lastId);
      const response = await request(`/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal });
      onConnection(true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new SseParser((message) => {
        if (message.id !== null) lastId = message.id;
        onEvent(JSON.parse(message.data));
      });
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
        delay = 500;
      }
      return lastId; // the server closed the stream: the job is over
    } catch (error) {
      if (signal.aborted) break;
      if (error.status && error.status !== 429 && error.status < 500) throw error; // 404, 401: no retry
      onConnection(false);
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10_000);
    }
  }
  return lastId;
}
