import { NodeSDK } from "@opentelemetry/sdk-node";
import {
  AlwaysOffSampler,
  BatchSpanProcessor,
  NoopSpanProcessor,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from "@opentelemetry/semantic-conventions";
import { setSpansMayRecord } from "./trace-context.js";

/** Options of {@link startTelemetry}. */
export interface TelemetryOptions {
  serviceName: string;
  /** OTLP/HTTP base URL (e.g. http://jaeger:4318); spans go nowhere when unset. */
  otlpEndpoint?: string | undefined;
  /** Extra processors, e.g. an in-memory exporter in tests. */
  spanProcessors?: SpanProcessor[];
}

/** A running telemetry pipeline. */
export interface Telemetry {
  /** Flushes pending spans and stops the SDK. */
  shutdown(): Promise<void>;
}

/**
 * Starts the OpenTelemetry Node SDK once per process: AsyncLocalStorage context, the W3C trace
 * context propagator, and OTLP export when an endpoint is configured. No auto-instrumentation:
 * nearhub creates its own spans for RPCs, HTTP routes and NATS messages, so traces are the
 * same under ESM and CommonJS.
 *
 * With nowhere to send spans (no endpoint, no processors) nothing is sampled: spans are
 * non-recording but still carry trace and span ids, so logs keep their `trace_id` and calls
 * keep propagating `traceparent`, without paying for span objects that would be dropped.
 */
export function startTelemetry(options: TelemetryOptions): Telemetry {
  const processors: SpanProcessor[] = [...(options.spanProcessors ?? [])];
  if (options.otlpEndpoint) {
    const url = `${options.otlpEndpoint.replace(/\/+$/, "")}/v1/traces`;
    processors.push(new BatchSpanProcessor(new OTLPTraceExporter({ url })));
  }
  // The SDK registers a tracer provider only when it has a processor: without one every span
  // would be the API's no-op with an all-zero trace id, and logs would lose their trace_id.
  const exporting = processors.length > 0;
  if (!exporting) processors.push(new NoopSpanProcessor());
  const sdk = new NodeSDK({
    resource: resourceFromAttributes({
      [ATTR_SERVICE_NAME]: options.serviceName,
      [ATTR_SERVICE_VERSION]: "0.1.0",
    }),
    spanProcessors: processors,
    ...(exporting ? {} : { sampler: new AlwaysOffSampler() }),
    instrumentations: [],
    autoDetectResources: false,
  });
  sdk.start();
  setSpansMayRecord(exporting);
  return { shutdown: () => sdk.shutdown() };
}
