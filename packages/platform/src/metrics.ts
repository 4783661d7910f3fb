import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/**
 * One prom-client registry per service: default process metrics (CPU, memory, event loop,
 * handles), RED histograms for every RPC and HTTP route, and the bus counters. Services add
 * their business metrics to `registry`.
 */
export class ServiceMetrics {
  /** The registry `/metrics` serves. */
  readonly registry = new Registry();
  /** Server-side RPC latency; `code` is the gRPC status name, so rate and errors come from the counts. */
  readonly rpcServerDuration: Histogram<"rpc_service" | "method" | "code">;
  /** Client-side RPC latency per target method. */
  readonly rpcClientDuration: Histogram<"rpc_service" | "method" | "code">;
  /** HTTP latency per route template (never the raw path, to bound cardinality). */
  readonly httpDuration: Histogram<"method" | "route" | "status">;
  /** Events and jobs published, by subject kind and result. */
  readonly published: Counter<"type" | "result">;
  /** Messages handled by durable consumers, by consumer and outcome (ack, nak, dead_letter). */
  readonly consumed: Counter<"consumer" | "outcome">;
  /** 1 while the service reports SERVING. */
  readonly ready: Gauge;

  constructor(service: string) {
    this.registry.setDefaultLabels({ service });
    collectDefaultMetrics({ register: this.registry });
    this.rpcServerDuration = new Histogram({
      name: "nearhub_rpc_server_duration_seconds",
      help: "gRPC server handling time by method and status code",
      labelNames: ["rpc_service", "method", "code"],
      buckets: LATENCY_BUCKETS,
      registers: [this.registry],
    });
    this.rpcClientDuration = new Histogram({
      name: "nearhub_rpc_client_duration_seconds",
      help: "gRPC client call time by target method and status code",
      labelNames: ["rpc_service", "method", "code"],
      buckets: LATENCY_BUCKETS,
      registers: [this.registry],
    });
    this.httpDuration = new Histogram({
      name: "nearhub_http_server_duration_seconds",
      help: "HTTP handling time by route template and status",
      labelNames: ["method", "route", "status"],
      buckets: LATENCY_BUCKETS,
      registers: [this.registry],
    });
    this.published = new Counter({
      name: "nearhub_bus_published_total",
      help: "Messages published to JetStream by type and result (ok, duplicate, error)",
      labelNames: ["type", "result"],
      registers: [this.registry],
    });
    this.consumed = new Counter({
      name: "nearhub_bus_consumed_total",
      help: "Messages handled by durable consumers by outcome (ack, nak, dead_letter)",
      labelNames: ["consumer", "outcome"],
      registers: [this.registry],
    });
    this.ready = new Gauge({
      name: "nearhub_service_ready",
      help: "1 while the service reports SERVING on grpc.health.v1",
      registers: [this.registry],
    });
  }
}
