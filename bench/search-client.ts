/**
 * The gRPC client bench/search.ts times queries with, in a process of its own: the measuring
 * end holds nothing but the client, so its own garbage collections (the bench process holds an
 * open index and the in-process runs' garbage) stay out of the measured calls. Forked with the
 * server's port; answers `ready`, then one `figures` per `run` and `stopped` to `stop`.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { createClient } from "@nearhub/platform";
import { SearchService, type SearchRequestSchema } from "@nearhub/proto/search";
import { time, type Figures } from "./query-timing.js";

type Request = MessageInitShape<typeof SearchRequestSchema>;

/** Parent → client: time these searches or suggests (each after a warm-up), or send them once unmeasured. */
export type SearchClientRequest =
  | { type: "run"; searches: Request[] }
  | { type: "run"; prefixes: string[] }
  | { type: "send"; searches: Request[] }
  | { type: "stop" };

/** Client → parent. */
export type SearchClientMessage =
  { type: "ready" } | { type: "figures"; figures: Figures } | { type: "sent" } | { type: "stopped" };

function serve(port: number, send: (m: SearchClientMessage) => void): void {
  const client = createClient(SearchService, `127.0.0.1:${port}`);
  process.on("message", (m: SearchClientRequest) => {
    void (async () => {
      switch (m.type) {
        case "run":
          send({
            type: "figures",
            figures:
              "searches" in m
                ? await time(m.searches, (r) => client.search(r))
                : await time(m.prefixes, (prefix) => client.suggest({ prefix })),
          });
          break;
        case "send":
          for (const r of m.searches) await client.search(r);
          (globalThis as { gc?: () => void }).gc?.();
          send({ type: "sent" });
          break;
        case "stop":
          client.$close();
          send({ type: "stopped" });
          process.disconnect();
          break;
      }
    })();
  });
  send({ type: "ready" });
}

if (process.send && process.env["NEARHUB_BENCH_SEARCH_CLIENT"] === "1") {
  serve(Number(process.argv[2]), (m) => process.send?.(m));
}
