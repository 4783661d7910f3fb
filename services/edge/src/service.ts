import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { ServiceHost, ServingStatus, auditStream, closeHttp, listenHttp, type Logger } from "@nearhub/platform";
import { auditRoutes } from "./audit-routes.js";
import { connectBackends } from "./backends.js";
import type { EdgeConfig } from "./config.js";
import { gitRoutes } from "./git-http.js";
import { gitMirrorRoutes } from "./git-mirror-api.js";
import { modelMirrorRoutes } from "./hf-mirror-api.js";
import { hfMirror } from "./hf-routes.js";
import { createRouter } from "./router.js";
import { edgeRoutes } from "./routes.js";
import { searchRoutes } from "./search-routes.js";

/** A running edge: the service host plus its public HTTP port. */
export interface Edge {
  host: ServiceHost;
  httpPort: number;
  stop(): Promise<void>;
}

/** Starts the edge: the public HTTP front door, calling the other services over gRPC. */
export async function startEdge(config: EdgeConfig, options: { logger?: Logger } = {}): Promise<Edge> {
  let httpPort = -1;
  const host = await ServiceHost.start(
    {
      name: "edge",
      common: config,
      grpcPort: config.NEARHUB_GRPC_PORT,
      opsServer: false,
      ...(options.logger ? { logger: options.logger } : {}),
      provisioning: (names) => ({ streams: [auditStream(names)] }),
    },
    async (h) => {
      const backends = connectBackends(config, h.metrics);
      h.onStop(() => backends.close());
      const server = createServer(
        { maxHeaderSize: 16 * 1024, requestTimeout: 300_000, headersTimeout: 15_000 },
        createRouter(
          [
            ...edgeRoutes(backends, h.metrics, () => h.health.get() === ServingStatus.SERVING),
            ...searchRoutes(backends),
            ...auditRoutes(backends),
            ...gitMirrorRoutes({ backends, config, logger: h.logger }),
            // Before the git routes: `/gpt2/resolve/main/info/refs` is a file, not a clone.
            ...(
              await hfMirror({ backends, config, metrics: h.metrics, logger: h.logger, onStop: (fn) => h.onStop(fn) })
            ).routes,
            ...modelMirrorRoutes({ config, metrics: h.metrics, onStop: (fn) => h.onStop(fn) }),
            ...gitRoutes({ backends, config, metrics: h.metrics, logger: h.logger }),
          ],
          h.metrics,
        ),
      );
      await listenHttp(server, config.NEARHUB_BIND_HOST, config.NEARHUB_HTTP_PORT);
      httpPort = (server.address() as AddressInfo).port;
      h.onStop(() => closeHttp(server));
    },
  );
  return { host, httpPort, stop: () => host.stop() };
}
