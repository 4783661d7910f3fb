import { context, propagation, type Context, type TextMapGetter, type TextMapSetter } from "@opentelemetry/api";
import type { MsgHdrs } from "@nats-io/nats-core";
import type { Metadata } from "@grpc/grpc-js";

// No published instrumentation carries W3C trace context through nats.js v3 headers, so these
// few lines do: the registered propagator writes `traceparent`/`tracestate` into the headers.
const natsSetter: TextMapSetter<MsgHdrs> = {
  set: (carrier, key, value) => carrier.set(key, value),
};

const natsGetter: TextMapGetter<MsgHdrs> = {
  get: (carrier, key) => (carrier.has(key) ? carrier.get(key) : undefined),
  keys: (carrier) => carrier.keys(),
};

const metadataSetter: TextMapSetter<Metadata> = {
  set: (carrier, key, value) => carrier.set(key, value),
};

const metadataGetter: TextMapGetter<Metadata> = {
  get: (carrier, key) => {
    const values = carrier.get(key);
    return values.length > 0 ? values.map(String) : undefined;
  },
  keys: (carrier) => Object.keys(carrier.getMap()),
};

let recording = false;

/**
 * Whether spans may be recorded in this process: startTelemetry says so when it has somewhere to
 * send them. When not (no provider, or the no-exporter AlwaysOff sampler), a server call that
 * continues no trace starts no span at all: a non-recording root span would be dropped unseen.
 */
export function spansMayRecord(): boolean {
  return recording;
}

/** Set by startTelemetry (see {@link spansMayRecord}). */
export function setSpansMayRecord(on: boolean): void {
  recording = on;
}

/** Writes the active (or given) trace context into NATS message headers. */
export function injectIntoHeaders(headers: MsgHdrs, ctx: Context = context.active()): void {
  propagation.inject(ctx, headers, natsSetter);
}

/** Reads a trace context from NATS message headers (the root context when there is none). */
export function extractFromHeaders(headers: MsgHdrs | undefined): Context {
  if (!headers) return context.active();
  return propagation.extract(context.active(), headers, natsGetter);
}

/** Writes the active (or given) trace context into gRPC metadata. */
export function injectIntoMetadata(metadata: Metadata, ctx: Context = context.active()): void {
  propagation.inject(ctx, metadata, metadataSetter);
}

/** Reads a trace context from gRPC metadata. */
export function extractFromMetadata(metadata: Metadata): Context {
  return propagation.extract(context.active(), metadata, metadataGetter);
}
