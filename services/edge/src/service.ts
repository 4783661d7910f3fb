import type { Duplex } from "node:stream";
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
        { maxHeaderSize: MAX_HEADER_BYTES, requestTimeout: 300_000, headersTimeout: 15_000 },
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
      server.on("clientError", answerClientError);
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

/** The most bytes of request line and headers the edge reads (Node's `maxHeaderSize`). */
const MAX_HEADER_BYTES = 16 * 1024;

/**
 * Requests Node's HTTP parser refuses before any route sees them: Node's own answer is a bare
 * status line; this one says what to fix, as JSON like every other error of the edge.
 */
function answerClientError(error: NodeJS.ErrnoException, socket: Duplex): void {
  if (error.code === "ECONNRESET" || !socket.writable) {
    socket.destroy();
    return;
  }
  const [status, reason, message] =
    error.code === "HPE_HEADER_OVERFLOW"
      ? [
          431,
          "Request Header Fields Too Large",
          `the request line and headers must total under ${MAX_HEADER_BYTES / 1024} KiB; shorten the URL or the headers`,
        ]
      : error.code === "ERR_HTTP_REQUEST_TIMEOUT" || error.code === "ERR_HTTP_HEADERS_TIMEOUT"
        ? [408, "Request Timeout", "the request was not received in time; send it again"]
        : [400, "Bad Request", `the request is not valid HTTP/1.1 (${error.code ?? "parse error"})`];
  const body = JSON.stringify({ error: message });
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}
