// Server-sent events read from a fetch() body, so requests can carry headers
// (Authorization, Last-Event-ID), which EventSource cannot send.

/** Parse "text/event-stream" text fed in pieces; push() returns the events completed. */
export class SseParser {
  constructor() {
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = null;
  }

  push(text) {
    this.buffer += text;
    const events = [];
    // A line ends at CRLF, LF or CR; a CR at the very end may be half of a CRLF: wait.
    const lines = this.buffer.split(/\r\n|\n|\r(?!$)/);
    this.buffer = lines.pop();
    for (const line of lines) {
      const done = this.line(line);
      if (done) events.push(done);
    }
    return events;
  }

  line(line) {
    if (line === "") {
      if (this.data.length === 0 && !this.event) { this.reset(); return null; }
      const done = { event: this.event || "message", data: this.data.join("\n"), id: this.id };
      this.reset();
      return done;
    }
    if (line.startsWith(":")) return null; // a comment: the server's keep-alive ping
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.id = value;
    return null;
  }
}

/** Yield the events of a response body until it ends; an abort or a cut connection throws. */
export async function* readEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const event of parser.push(decoder.decode(value, { stream: true }))) yield event;
    }
  } finally {
    reader.cancel().catch(() => {}); // already closed or aborted: nothing left to release
  }
}
