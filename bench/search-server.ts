/**
 * The search server bench/search.ts measures at the gRPC boundary, in a process of its own, as
 * the indexing service runs in a deployment: the client's work (encoding requests, decoding
 * responses, its garbage) does not sit on the server's event loop. Forked by the bench with the
 * index file as its argument; it answers one `ready` message with the port, then serves
 * `gc-start`/`gc-stop` (the server's garbage-collection pauses over a window) and `stop`.
 */
import { PerformanceObserver, constants, type PerformanceEntry } from "node:perf_hooks";
import { RpcServer, ServiceMetrics, silentLogger } from "@nearhub/platform";
import { SearchService } from "@nearhub/proto/search";
import { SqliteSearchIndex, searchApi } from "@nearhub/indexing";

/** Parent → server. */
export type SearchServerRequest = { type: "gc-start" } | { type: "gc-stop" } | { type: "stop" };

/** Garbage collections of the server over a window. */
export interface GcFigures {
  /** Scavenges (young generation) and their longest pause, ms. */
  minor: number;
  minorMaxMs: number;
  /** Mark-compacts and incremental marking steps, and their longest pause, ms. */
  major: number;
  majorMaxMs: number;
  totalMs: number;
}

/** Server → parent. */
export type SearchServerMessage =
  { type: "ready"; port: number } | { type: "gc"; figures: GcFigures } | { type: "stopped" };

async function serve(file: string, send: (m: SearchServerMessage) => void): Promise<void> {
  const index = new SqliteSearchIndex(file);
  const server = new RpcServer({ service: "indexing", logger: silentLogger, metrics: new ServiceMetrics("indexing") });
  server.addService(SearchService, searchApi(index));
  const port = await server.listen("127.0.0.1", 0);
  let gcs: PerformanceEntry[] = [];
  const observer = new PerformanceObserver((list) => gcs.push(...list.getEntries()));
  process.on("message", (m: SearchServerRequest) => {
    switch (m.type) {
      case "gc-start":
        gcs = [];
        observer.observe({ entryTypes: ["gc"] });
        break;
      case "gc-stop": {
        observer.disconnect();
        const isMinor = (e: PerformanceEntry) =>
          (e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR;
        const minor = gcs.filter(isMinor);
        const major = gcs.filter((e) => !isMinor(e));
        const max = (entries: PerformanceEntry[]) => Math.max(0, ...entries.map((e) => e.duration));
        send({
          type: "gc",
          figures: {
            minor: minor.length,
            minorMaxMs: max(minor),
            major: major.length,
            majorMaxMs: max(major),
            totalMs: gcs.reduce((n, e) => n + e.duration, 0),
          },
        });
        break;
      }
      case "stop":
        void server
          .shutdown(1000)
          .then(() => index.close())
          .finally(() => {
            send({ type: "stopped" });
            process.disconnect();
          });
        break;
    }
  });
  send({ type: "ready", port });
}

// As a child process: serve the index file given as the first argument.
if (process.send && process.env["NEARHUB_BENCH_SEARCH_SERVER"] === "1") {
  const send = (m: SearchServerMessage) => process.send?.(m);
  serve(process.argv[2] ?? "", send).catch((error: unknown) => {
    process.stderr.write(`search server: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  });
}
