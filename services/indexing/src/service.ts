import { Client as ElasticsearchClient } from "@elastic/elasticsearch";
import { setTimeout as sleep } from "node:timers/promises";
import { Counter, Gauge, Histogram } from "prom-client";
import {
  Code,
  NearhubError,
  ServiceHost,
  createClient,
  eventsStream,
  type Logger,
  type MessageHandler,
} from "@nearhub/platform";
import { RegistryService } from "@nearhub/proto/registry";
import { SearchService } from "@nearhub/proto/search";
import { StorageService } from "@nearhub/proto/storage";
import type { IndexingConfig } from "./config.js";
import { ElasticsearchBackend } from "./elasticsearch-index.js";
import { LiveIndex, SqliteBackend, type IndexBackend } from "./live-index.js";
import { registryHandlers } from "./model-documents.js";
import { projector } from "./projector.js";
import { replayFromStream } from "./replay.js";
import { searchApi } from "./search-api.js";

/** Waits for Elasticsearch to answer, up to `timeoutMs`; UNAVAILABLE naming the URL otherwise. */
async function connectElasticsearch(url: string, timeoutMs: number, logger: Logger): Promise<ElasticsearchClient> {
  const client = new ElasticsearchClient({ node: url, requestTimeout: 10_000, maxRetries: 3 });
  const giveUpAt = Date.now() + timeoutMs;
  for (;;) {
    try {
      await client.cluster.health({ wait_for_status: "yellow", timeout: "5s" });
      return client;
    } catch (error) {
      if (Date.now() >= giveUpAt) {
        await client.close();
        throw new NearhubError(
          Code.Unavailable,
          `cannot reach Elasticsearch at ${url}: ${(error as Error).message}. Start it, fix ELASTICSEARCH_URL, or set NEARHUB_SEARCH_BACKEND=sqlite.`,
          { cause: error },
        );
      }
      logger.warn("Elasticsearch is not answering yet; retrying", { url, error: (error as Error).message });
      await sleep(1000);
    }
  }
}

/**
 * Starts the indexing service: a durable consumer of `nearhub.events.>` feeds the index
 * (embedded SQLite FTS5, or Elasticsearch through an alias), and nearhub.search.v1 answers
 * queries and rebuilds.
 */
export async function startIndexing(config: IndexingConfig, options: { logger?: Logger } = {}): Promise<ServiceHost> {
  if (config.NEARHUB_SEARCH_BACKEND === "elasticsearch" && !config.ELASTICSEARCH_URL) {
    throw new NearhubError(
      Code.FailedPrecondition,
      "NEARHUB_SEARCH_BACKEND=elasticsearch needs ELASTICSEARCH_URL, e.g. http://elasticsearch:9200",
    );
  }
  let live: LiveIndex | undefined;
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
      const log = host.logger.child({ component: "index" });
      const ns = host.names.namespace;
      const registers = [host.metrics.registry];
      const events = new Counter({
        name: "nearhub_search_index_events_total",
        help: "Events the index projected, by event type and outcome (applied, stale, skipped)",
        labelNames: ["type", "outcome"],
        registers,
      });
      const lag = new Histogram({
        name: "nearhub_search_event_to_searchable_seconds",
        help: "Time from an event's ce-time to its effect being written to the index",
        buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
        registers,
      });
      new Gauge({
        name: "nearhub_search_documents",
        help: "Live documents in the active search index",
        registers,
        async collect() {
          if (live) this.set(await live.count().catch(() => 0));
        },
      });

      let backend: IndexBackend;
      if (config.NEARHUB_SEARCH_BACKEND === "elasticsearch") {
        const client = await connectElasticsearch(
          config.ELASTICSEARCH_URL ?? "",
          config.NEARHUB_NATS_CONNECT_TIMEOUT_MS,
          log,
        );
        backend = new ElasticsearchBackend(client, ns ? `nearhub-search-${ns.toLowerCase()}` : "nearhub-search");
      } else {
        backend = new SqliteBackend(config.NEARHUB_DATA_DIR, ns ? `search-${ns}` : "search");
      }
      const observe = (type: string, outcome: "applied" | "stale" | "skipped") => events.inc({ type, outcome });
      // Model and dataset documents read manifests and cards from storage (lazily connected).
      const clientOptions = {
        metrics: host.metrics,
        callMetadata: host.callMetadata(),
        credentials: host.tls.grpcChannelCredentials(),
      };
      const registry = createClient(RegistryService, config.NEARHUB_STORAGE_ADDR, clientOptions);
      const storage = createClient(StorageService, config.NEARHUB_STORAGE_ADDR, clientOptions);
      host.onStop(() => {
        registry.$close();
        storage.$close();
      });
      const extra = registryHandlers({ registry, storage });
      const replay = replayFromStream(
        host.bus,
        host.names.stream("EVENTS"),
        (target) => projector(target, observe, extra),
        (error) => log.warn("skipped a malformed event during replay", { error }),
      );
      const opened = await LiveIndex.open(backend).catch(async (error: unknown) => {
        await backend.close();
        throw error;
      });
      live = opened;
      host.onStop(() => opened.close());
      if (opened.fresh) {
        // A new index (first start, or a new layout) fills from the events stream in the
        // background, retrying while a dependency (storage) is not up yet; the live consumer
        // writes meanwhile, and versions make both converge.
        const stop = new AbortController();
        const filling = (async () => {
          for (let attempt = 1; !stop.signal.aborted; attempt++) {
            try {
              await opened.fill(replay, stop.signal);
              log.info("search index filled from the events stream", { index: opened.name });
              return;
            } catch (error) {
              if (stop.signal.aborted) return;
              log.warn("filling the new search index failed; retrying", { attempt, error });
              await sleep(Math.min(30_000, 1000 * 2 ** attempt), undefined, { signal: stop.signal }).catch(
                () => undefined,
              );
            }
          }
        })();
        host.onStop(async () => {
          stop.abort(new Error("shutting down"));
          await filling;
        });
      }
      log.info("search index open", { backend: config.NEARHUB_SEARCH_BACKEND, index: opened.name });
      host.serve(SearchService, searchApi(opened, replay));

      const project = projector(opened, observe, extra);
      const handler: MessageHandler = async (message, signal) => {
        await project(message, signal);
        const time = message.headers?.has("ce-time") ? Date.parse(message.headers.get("ce-time")) : NaN;
        if (Number.isFinite(time)) lag.observe(Math.max(0, Date.now() - time) / 1000);
      };
      const consumer = await host.bus.consume({ stream: host.names.stream("EVENTS"), durable: "indexing" }, handler);
      host.onStop(() => consumer.stop(config.NEARHUB_SHUTDOWN_TIMEOUT_MS));
    },
  );
}
