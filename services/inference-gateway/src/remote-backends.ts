import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { Code, NearhubError, codeName, injectIntoMetadata, methodDefinition, type Logger } from "@nearhub/platform";
import {
  GRPCInferenceService,
  RepositoryIndexRequestSchema,
  ServerReadyRequestSchema,
  type ModelInferRequest,
  type ModelInferResponse,
  type RepositoryIndexResponse,
} from "@nearhub/proto/inference";
import { SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { Counter, Gauge, type Registry } from "prom-client";

const tracer = trace.getTracer("nearhub-inference");

/** The RepositoryIndex reason of a model a nearhub gateway holds but has not loaded yet. */
export const LAZY_LOAD_REASON = "not loaded; loads on first request";
const INFER = methodDefinition(GRPCInferenceService.method.modelInfer);
const INDEX = methodDefinition(GRPCInferenceService.method.repositoryIndex);
const READY = methodDefinition(GRPCInferenceService.method.serverReady);

/** Options of {@link RemoteBackends}. */
export interface RemoteBackendsOptions {
  /** `host:port` of Triton or KServe v2 servers. */
  addresses: string[];
  /** Metadata of every call (a nearhub gateway behind this one checks the caller's identity). */
  callMetadata?: () => Record<string, string>;
  /** How often each backend's readiness and model index are probed. */
  probeIntervalMs: number;
  /** Consecutive failures of requests that reached a backend before it is ejected. */
  ejectAfterFailures: number;
  /** How long an ejected backend stays out of rotation. */
  ejectionMs: number;
  /** How long to wait for a connection before a request counts as unsent and tries the next backend. */
  connectTimeoutMs: number;
  logger: Logger;
  registry: Registry;
  /** Backends registered by heartbeat (the KV bucket), read before every probe round. */
  discover?: () => Promise<string[]>;
}

interface Backend {
  address: string;
  /** Listed in configuration (kept) rather than discovered (dropped when its heartbeat expires). */
  configured: boolean;
  client: grpc.Client;
  outstanding: number;
  healthy: boolean;
  /** `name` and `name/version` of the models the backend reports READY. */
  models: Set<string>;
  failures: number;
  ejectedUntil: number;
}

/**
 * Remote KServe v2 backends (Triton, another nearhub gateway): models the gateway does not
 * hold itself are routed by name and version to the backends whose RepositoryIndex lists them
 * READY, least outstanding requests first. A probe keeps readiness and model lists fresh; a
 * backend whose requests keep failing is ejected for a while. A request is retried on another
 * backend only when it never reached one (no connection could be made); once sent, its
 * outcome is the answer.
 */
export class RemoteBackends {
  private backends: Backend[];
  private timer: NodeJS.Timeout | undefined;
  private readonly requests: Counter<"backend" | "code">;
  private readonly outstandingGauge: Gauge<"backend">;
  private readonly ejections: Counter<"backend">;
  private readonly unsentRetries: Counter<"backend">;

  constructor(private readonly options: RemoteBackendsOptions) {
    this.backends = options.addresses.map((address) => newBackend(address, true));
    const registers = [options.registry];
    this.requests = new Counter({
      name: "nearhub_inference_remote_requests_total",
      help: "Requests forwarded to remote backends by status",
      labelNames: ["backend", "code"],
      registers,
    });
    this.outstandingGauge = new Gauge({
      name: "nearhub_inference_remote_outstanding",
      help: "Requests in flight per remote backend",
      labelNames: ["backend"],
      registers,
    });
    this.ejections = new Counter({
      name: "nearhub_inference_remote_ejections_total",
      help: "Outlier ejections per remote backend",
      labelNames: ["backend"],
      registers,
    });
    this.unsentRetries = new Counter({
      name: "nearhub_inference_remote_unsent_retries_total",
      help: "Requests moved to another backend because this one could not be reached",
      labelNames: ["backend"],
      registers,
    });
  }

  /** Probes every backend now, then every probe interval. */
  async start(): Promise<void> {
    await this.probeAll();
    const tick = () => {
      this.timer = setTimeout(() => void this.probeAll().finally(tick), this.options.probeIntervalMs);
      this.timer.unref();
    };
    tick();
  }

  /** Stops probing and closes the connections. */
  close(): void {
    if (this.timer) clearTimeout(this.timer);
    for (const b of this.backends) b.client.close();
  }

  /** The state of every backend (for tests and diagnostics). */
  status(): Array<{ address: string; healthy: boolean; ejected: boolean; outstanding: number; models: string[] }> {
    const now = Date.now();
    return this.backends.map((b) => ({
      address: b.address,
      healthy: b.healthy,
      ejected: b.ejectedUntil > now,
      outstanding: b.outstanding,
      models: [...b.models].filter((m) => !m.includes("/")).sort(),
    }));
  }

  /** Remote models for RepositoryIndex: name, version and which backend. */
  index(): Array<{ name: string; version: string; state: string; reason: string }> {
    const rows = new Map<string, { name: string; version: string; state: string; reason: string }>();
    for (const b of this.backends) {
      if (!b.healthy) continue;
      for (const key of b.models) {
        const [name, version] = key.split("/");
        if (!version || !name || rows.has(key)) continue;
        rows.set(key, { name, version, state: "READY", reason: `remote ${b.address}` });
      }
    }
    return [...rows.values()];
  }

  /** Whether some backend serves this model (and version, when given). */
  has(name: string, version: string): boolean {
    const key = version ? `${name}/${version}` : name;
    return this.backends.some((b) => b.healthy && b.models.has(key));
  }

  private async probeAll(): Promise<void> {
    if (this.options.discover) {
      try {
        this.reconcile(await this.options.discover());
      } catch (error) {
        this.options.logger.warn("cannot read registered backends", { error: NearhubError.from(error).rawMessage });
      }
    }
    await Promise.all(this.backends.map((b) => this.probe(b)));
  }

  /** Adds newly registered backends and drops discovered ones whose registration expired. */
  private reconcile(discovered: string[]): void {
    const wanted = new Set(discovered);
    for (const address of wanted) {
      if (!this.backends.some((b) => b.address === address)) {
        this.backends.push(newBackend(address, false));
        this.options.logger.info("remote backend registered", { backend: address });
      }
    }
    this.backends = this.backends.filter((b) => {
      if (b.configured || wanted.has(b.address) || b.outstanding > 0) return true;
      b.client.close();
      this.options.logger.info("remote backend deregistered", { backend: b.address });
      return false;
    });
  }

  private async probe(b: Backend): Promise<void> {
    const deadline = Date.now() + Math.max(1000, this.options.connectTimeoutMs);
    try {
      const ready = await unary<{ ready: boolean }>(
        b.client,
        READY,
        create(ServerReadyRequestSchema),
        deadline,
        this.options.callMetadata?.(),
      );
      const index = await unary<RepositoryIndexResponse>(
        b.client,
        INDEX,
        create(RepositoryIndexRequestSchema, { ready: false }),
        deadline,
        this.options.callMetadata?.(),
      );
      const models = new Set<string>();
      for (const m of index.models) {
        // Triton serves READY models; a nearhub gateway also loads listed ones on first request.
        if (m.state !== "READY" && m.state !== "LOADING" && m.reason !== LAZY_LOAD_REASON) continue;
        models.add(m.name);
        if (m.version) models.add(`${m.name}/${m.version}`);
      }
      if (!b.healthy && ready.ready)
        this.options.logger.info("remote backend up", { backend: b.address, models: models.size });
      b.healthy = ready.ready;
      b.models = models;
    } catch (error) {
      if (b.healthy) {
        this.options.logger.warn("remote backend down", {
          backend: b.address,
          error: NearhubError.from(error).rawMessage,
        });
      }
      b.healthy = false;
    }
  }

  private candidates(name: string, version: string, exclude: Set<Backend>): Backend[] {
    const key = version ? `${name}/${version}` : name;
    const now = Date.now();
    return this.backends
      .filter((b) => !exclude.has(b) && b.healthy && b.ejectedUntil <= now && b.models.has(key))
      .sort((a, c) => a.outstanding - c.outstanding);
  }

  /** Forwards one request; NOT_FOUND when no backend serves the model. */
  async infer(request: ModelInferRequest, deadline: Date | undefined): Promise<ModelInferResponse> {
    const tried = new Set<Backend>();
    const deadlineMs = deadline?.getTime() ?? Date.now() + 60_000;
    for (;;) {
      const b = this.candidates(request.modelName, request.modelVersion, tried)[0];
      if (!b) {
        throw new NearhubError(
          tried.size > 0 ? Code.Unavailable : Code.NotFound,
          tried.size > 0
            ? `model ${request.modelName}: no remote backend could be reached (tried ${[...tried].map((t) => t.address).join(", ")}); retry later`
            : `model ${request.modelName}${request.modelVersion ? ` version ${request.modelVersion}` : ""} is not in the repository; register it with: nearhub model serve ./model.onnx --name ${request.modelName}`,
        );
      }
      tried.add(b);
      // Counted from the pick, so concurrent requests spread while this one connects.
      b.outstanding++;
      this.outstandingGauge.set({ backend: b.address }, b.outstanding);
      try {
        // Unsent: the connection could not be made, so the request never left this gateway.
        if (!(await connected(b.client, Math.min(deadlineMs, Date.now() + this.options.connectTimeoutMs)))) {
          this.unsentRetries.inc({ backend: b.address });
          b.healthy = false;
          continue;
        }
        return await this.send(b, request, deadlineMs);
      } finally {
        b.outstanding--;
        this.outstandingGauge.set({ backend: b.address }, b.outstanding);
      }
    }
  }

  private async send(b: Backend, request: ModelInferRequest, deadlineMs: number): Promise<ModelInferResponse> {
    return tracer.startActiveSpan(
      `remote ${request.modelName}`,
      { kind: SpanKind.CLIENT, attributes: { "inference.backend": b.address, "inference.model": request.modelName } },
      async (span) => {
        try {
          const response = await unary<ModelInferResponse>(
            b.client,
            INFER,
            request,
            deadlineMs,
            this.options.callMetadata?.(),
          );
          b.failures = 0;
          this.requests.inc({ backend: b.address, code: "ok" });
          return response;
        } catch (error) {
          const e = NearhubError.from(error, Code.Internal);
          this.requests.inc({ backend: b.address, code: codeName(e.code) });
          span.setStatus({ code: SpanStatusCode.ERROR, message: e.rawMessage });
          // Only failures of the backend count towards ejection, not the caller's bad input.
          if ([Code.Unavailable, Code.Internal, Code.Unknown, Code.DeadlineExceeded, Code.DataLoss].includes(e.code)) {
            b.failures++;
            if (b.failures >= this.options.ejectAfterFailures) {
              b.ejectedUntil = Date.now() + this.options.ejectionMs;
              b.failures = 0;
              this.ejections.inc({ backend: b.address });
              this.options.logger.warn("remote backend ejected", {
                backend: b.address,
                ejection_ms: this.options.ejectionMs,
              });
            }
          }
          throw e;
        } finally {
          span.end();
        }
      },
    );
  }
}

function newBackend(address: string, configured: boolean): Backend {
  return {
    address,
    configured,
    client: new grpc.Client(address, grpc.credentials.createInsecure(), {
      "grpc.max_receive_message_length": 64 * 1024 * 1024,
      "grpc.max_send_message_length": 64 * 1024 * 1024,
    }),
    outstanding: 0,
    healthy: false,
    models: new Set(),
    failures: 0,
    ejectedUntil: 0,
  };
}

function unary<T>(
  client: grpc.Client,
  def: grpc.MethodDefinition<unknown, unknown>,
  message: unknown,
  deadline: number,
  extra: Record<string, string> = {},
): Promise<T> {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(extra)) metadata.set(k, v);
  injectIntoMetadata(metadata);
  return new Promise<T>((resolve, reject) => {
    client.makeUnaryRequest(
      def.path,
      def.requestSerialize,
      def.responseDeserialize,
      message,
      metadata,
      { deadline },
      (error, value) => (error ? reject(NearhubError.from(error, Code.Unavailable)) : resolve(value as T)),
    );
  });
}

/** Waits for the channel to be READY (connecting if idle); false when it cannot connect in time. */
async function connected(client: grpc.Client, deadline: number): Promise<boolean> {
  const channel = client.getChannel();
  for (;;) {
    const state = channel.getConnectivityState(true);
    if (state === grpc.connectivityState.READY) return true;
    if (state === grpc.connectivityState.SHUTDOWN || Date.now() >= deadline) return false;
    if (state === grpc.connectivityState.TRANSIENT_FAILURE) return false;
    const changed = await new Promise<boolean>((resolve) =>
      channel.watchConnectivityState(state, deadline, (e) => resolve(!e)),
    );
    if (!changed) return false;
  }
}
