import { parse, print, UsageError, type Command } from "../command.js";
import { ApiError, authHeaders } from "../http-api.js";

interface Progress {
  eventsReplayed?: number;
  eventsTotal?: number;
  documents?: number;
  done?: boolean;
  indexName?: string;
  durationMs?: number;
  error?: string;
}

/** Reads the edge's NDJSON progress stream, calling `onLine` for each object. */
async function streamLines(response: Response, onLine: (p: Progress) => void): Promise<void> {
  if (!response.body) return;
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let newline: number;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).trim();
      buffer = buffer.slice(newline + 1);
      if (line) onLine(JSON.parse(line) as Progress);
    }
  }
}

/** `nearhub index rebuild`: builds a fresh search index from the events and switches to it. */
export const indexCommand: Command = {
  name: "index",
  usage: ["nearhub index rebuild [--json]"],
  async run(rest, ctx) {
    const [sub, ...args] = rest;
    const { values } = parse(args, { url: { type: "string" }, json: { type: "boolean" } });
    if (sub !== "rebuild") throw new UsageError(`unknown index command ${JSON.stringify(sub ?? "")}; use rebuild`);
    const base = values.url ?? ctx.defaultUrl;
    let response: Response;
    try {
      response = await fetch(new URL("/api/index/rebuild", base), { method: "POST", headers: authHeaders() });
    } catch (error) {
      const cause = (error as { cause?: { code?: string } }).cause?.code ?? (error as Error).message;
      throw new ApiError(0, `cannot reach nearhub at ${base} (${cause}); start it with 'nearhub up' or pass --url`);
    }
    if (!response.ok) {
      const body = (await response.json().catch(() => ({}))) as { error?: string };
      throw new ApiError(response.status, body.error ?? `HTTP ${response.status}`);
    }
    let last: Progress | undefined;
    await streamLines(response, (p) => {
      if (p.error) throw new ApiError(500, `the rebuild failed: ${p.error}`);
      last = p;
      // Progress goes to stderr so that --json output stays one document.
      if (!p.done && process.stderr.isTTY) {
        process.stderr.write(`\rreplaying events: ${p.eventsReplayed ?? 0} of ${p.eventsTotal ?? 0}   `);
      } else if (!p.done) {
        process.stderr.write(`replaying events: ${p.eventsReplayed ?? 0} of ${p.eventsTotal ?? 0}\n`);
      }
    });
    if (process.stderr.isTTY) process.stderr.write("\n");
    const done = last;
    if (!done?.done) throw new ApiError(500, "the rebuild ended without finishing; the old index is still in use");
    print(
      values.json ?? false,
      done,
      () =>
        `rebuilt the search index: ${done.documents ?? 0} documents in ${done.durationMs ?? 0} ms; now serving ${done.indexName ?? ""}`,
    );
    return 0;
  },
};
