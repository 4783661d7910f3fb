import { type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Code, NearhubError, httpStatusOf } from "./errors.js";
import type { ServiceMetrics } from "./metrics.js";
import { TransportSecurity } from "./tls.js";

/** Sends a JSON body with the right headers. */
export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

/** Sends `{"error": message}` with the HTTP status of the error's code. */
export function sendError(res: ServerResponse, error: unknown): void {
  const e = NearhubError.from(error, Code.Internal);
  const internal = e.code === Code.Internal && !(error instanceof NearhubError);
  sendJson(res, httpStatusOf(e.code), {
    error: internal ? "internal error; the server log has the details" : e.rawMessage,
  });
}

/** Serves Prometheus text from a service's registry. */
export async function sendMetrics(res: ServerResponse, metrics: ServiceMetrics): Promise<void> {
  const body = await metrics.registry.metrics();
  res.writeHead(200, { "content-type": metrics.registry.contentType });
  res.end(body);
}

/** Times a request into the HTTP RED histogram under a route template (never the raw path). */
export function observeHttp(metrics: ServiceMetrics, req: IncomingMessage, res: ServerResponse, route: string): void {
  const started = process.hrtime.bigint();
  res.once("close", () => {
    metrics.httpDuration.observe(
      { method: req.method ?? "GET", route, status: String(res.statusCode) },
      Number(process.hrtime.bigint() - started) / 1e9,
    );
  });
}

/** Options of {@link startOpsServer}. */
export interface OpsServerOptions {
  host: string;
  port: number;
  metrics: ServiceMetrics;
  /** Whether the service is ready (SERVING); `/healthz` answers 503 until it is. */
  ready: () => boolean;
  /** Extra detail for `/healthz`. */
  details?: () => Record<string, unknown>;
  /** Serve over TLS with these settings; plain text when absent. */
  tls?: TransportSecurity;
}

/** The per-service operations port: `/metrics`, `/healthz` (readiness) and `/livez`. */
export async function startOpsServer(options: OpsServerOptions): Promise<{ server: Server; port: number }> {
  const server = (options.tls ?? TransportSecurity.plain()).createHttpServer({}, (req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      sendJson(
        res,
        405,
        { error: `${req.method ?? "this method"} is not allowed here; use GET` },
        { allow: "GET, HEAD" },
      );
      return;
    }
    switch (path) {
      case "/metrics":
        observeHttp(options.metrics, req, res, "/metrics");
        sendMetrics(res, options.metrics).catch((error: unknown) => sendError(res, error));
        return;
      case "/healthz": {
        observeHttp(options.metrics, req, res, "/healthz");
        const ready = options.ready();
        sendJson(res, ready ? 200 : 503, { status: ready ? "SERVING" : "NOT_SERVING", ...options.details?.() });
        return;
      }
      case "/livez":
        sendJson(res, 200, { status: "alive" });
        return;
      default:
        sendJson(res, 404, { error: `no route ${path ?? "/"}; try /metrics, /healthz or /livez` });
    }
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  await listenHttp(server, options.host, options.port);
  return { server, port: (server.address() as AddressInfo).port };
}

/** Listens and fails with a clear message when the port is taken. */
export async function listenHttp(server: Server, host: string, port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) =>
      reject(
        new NearhubError(
          Code.Unavailable,
          `cannot listen for HTTP on ${host}:${port}: ${error.code === "EADDRINUSE" ? "the port is in use (choose another port or stop what holds it)" : error.message}`,
          { cause: error },
        ),
      );
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      resolve();
    });
  });
}

/** Closes a server, cutting idle keep-alive connections so it does not linger. */
export async function closeHttp(server: Server): Promise<void> {
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
    setTimeout(() => server.closeAllConnections(), 2000).unref();
  });
}
