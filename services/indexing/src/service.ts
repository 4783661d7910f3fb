import { join } from "node:path";
import { ServiceHost, eventsStream, type Logger } from "@nearhub/platform";
import { SearchService } from "@nearhub/proto/search";
import type { IndexingConfig } from "./config.js";
import { projector } from "./projector.js";
import { searchApi } from "./search-api.js";
import { SqliteSearchIndex } from "./sqlite-index.js";

/**
 * Starts the indexing service: a durable consumer of `nearhub.events.>` feeds the index, and
 * nearhub.search.v1 answers queries.
 */
export async function startIndexing(config: IndexingConfig, options: { logger?: Logger } = {}): Promise<ServiceHost> {
  if (config.NEARHUB_SEARCH_BACKEND === "elasticsearch") {
    // The Elasticsearch backend arrives with the search issue; refusing is better than
    // silently indexing somewhere the operator did not ask for.
    throw new Error("NEARHUB_SEARCH_BACKEND=elasticsearch is not available in this build; use sqlite");
  }
  let index: SqliteSearchIndex | undefined;
  return ServiceHost.start(
    {
      name: "indexing",
      common: config,
      grpcPort: config.NEARHUB_GRPC_PORT,
      ...(options.logger ? { logger: options.logger } : {}),
      provisioning: (names) => ({
        streams: [eventsStream(names)],
        consumers: [{ stream: names.stream("EVENTS"), durable: "indexing", filterSubject: names.subject("events.>") }],
      }),
    },
    async (host) => {
      const db = new SqliteSearchIndex(
        join(config.NEARHUB_DATA_DIR, `search${host.names.namespace ? `-${host.names.namespace}` : ""}.sqlite`),
      );
      index = db;
      host.onStop(() => db.close());
      host.serve(SearchService, searchApi(db));
      const consumer = await host.bus.consume(
        { stream: host.names.stream("EVENTS"), durable: "indexing" },
        projector(db),
      );
      host.onStop(() => consumer.stop(config.NEARHUB_SHUTDOWN_TIMEOUT_MS));
    },
  ).catch((error: unknown) => {
    index?.close();
    throw error;
  });
}
