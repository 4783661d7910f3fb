import type { AddressInfo } from "node:net";
import { ServiceHost, ServingStatus, auditStream, closeHttp, listenHttp, type Logger } from "@nearhub/platform";
import { accessRoutes } from "./access-routes.js";
import { auditRoutes } from "./audit-routes.js";
import { connectBackends } from "./backends.js";
import type { EdgeConfig } from "./config.js";
import { gitRoutes } from "./git-http.js";
import { gitLfsRoutes } from "./git-lfs.js";
import { gitMirrorRoutes } from "./git-mirror-api.js";
import { PullThrough } from "./git-pull-through.js";
import { startGitSsh } from "./git-ssh.js";
import { modelMirrorRoutes } from "./hf-mirror-api.js";
import { hfMirror } from "./hf-routes.js";
import { createRouter } from "./router.js";
import { edgeRoutes } from "./routes.js";
import { searchRoutes } from "./search-routes.js";

/** A running edge: the service host plus its public HTTP port. */
export interface Edge {
  host: ServiceHost;
  httpPort: number;
  /** The bound SSH port (git-upload-pack over SSH), 0 when SSH is off. */
  sshPort: number;
  stop(): Promise<void>;
}

/** Starts the edge: the public HTTP front door, calling the other services over gRPC. */
export async function startEdge(config: EdgeConfig, options: { logger?: Logger } = {}): Promise<Edge> {
  let httpPort = -1;
  let sshPort = 0;
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
      const backends = connectBackends(config, h.metrics, h.tls, h.callMetadata());
      h.onStop(() => backends.close());
      const pullThrough = new PullThrough({ backends, config, metrics: h.metrics, logger: h.logger });
      const server = h.tls.createHttpServer(
        { maxHeaderSize: 16 * 1024, requestTimeout: 300_000, headersTimeout: 15_000 },
        createRouter(
          [
            ...edgeRoutes(backends, h.metrics, () => h.health.get() === ServingStatus.SERVING),
            ...searchRoutes(backends),
            ...auditRoutes(backends),
            ...accessRoutes(backends),
            ...gitMirrorRoutes({ backends, config, logger: h.logger }),
            // Before the git routes: `/gpt2/resolve/main/info/refs` is a file, not a clone.
            ...(
              await hfMirror({
                backends,
                config,
                metrics: h.metrics,
                logger: h.logger,
                onStop: (fn) => h.onStop(fn),
                tls: h.tls,
              })
            ).routes,
            ...modelMirrorRoutes({
              config,
              metrics: h.metrics,
              onStop: (fn) => h.onStop(fn),
              tls: h.tls,
              callMetadata: h.callMetadata(),
            }),
            ...gitLfsRoutes({ backends, config, metrics: h.metrics, logger: h.logger }),
            ...gitRoutes({ backends, config, metrics: h.metrics, logger: h.logger, pullThrough }),
          ],
          h.metrics,
          h.access,
        ),
      );
      await listenHttp(server, config.NEARHUB_BIND_HOST, config.NEARHUB_HTTP_PORT);
      httpPort = (server.address() as AddressInfo).port;
      h.onStop(() => closeHttp(server));
      if (config.NEARHUB_SSH_PORT !== 0) {
        const ssh = await startGitSsh({
          config,
          backends,
          pullThrough,
          logger: h.logger,
          metrics: h.metrics,
          // The key's subject reads what RBAC lets it read; refusals are audited like any other.
          authorize: (subject, name) =>
            h.access
              .authorize(
                {
                  principal: { subject, groups: [], method: subject.startsWith("token:") ? "token" : "ssh" },
                  peer: "ssh",
                  userAgent: "ssh",
                },
                "read",
                name,
              )
              .then(
                () => {
                  h.access.recordRead(
                    { principal: { subject, groups: [], method: "ssh" }, peer: "ssh" },
                    "git.fetch",
                    name,
                  );
                  return true;
                },
                () => false,
              ),
        });
        sshPort = ssh.port;
        h.onStop(() => ssh.close());
      }
    },
  );
  return { host, httpPort, sshPort, stop: () => host.stop() };
}
