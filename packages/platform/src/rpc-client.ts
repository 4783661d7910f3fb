import { create, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { SpanKind, SpanStatusCode, context, trace } from "@opentelemetry/api";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, NearhubError, codeName } from "./errors.js";
import type { ServiceMetrics } from "./metrics.js";
import { methodDefinition } from "./rpc-definition.js";
import type { CallOptions, Client } from "./rpc-types.js";
import { injectIntoMetadata } from "./trace-context.js";

/** Options of {@link createClient}. */
export interface ClientOptions {
  /** Default deadline of unary and client-streaming calls; default 10 s. */
  timeoutMs?: number;
  /** Default deadline of server-streaming and bidi calls; default 5 min. */
  streamTimeoutMs?: number;
  /** Attempts for idempotent unary methods failing with UNAVAILABLE; default 3. */
  maxAttempts?: number;
  /** Metadata sent on every call (e.g. a service identity). */
  metadata?: Record<string, string>;
  /** Metadata computed for each call, e.g. the identity of the user a request runs for. */
  callMetadata?: () => Record<string, string>;
  metrics?: ServiceMetrics;
  credentials?: grpc.ChannelCredentials;
  maxMessageBytes?: number;
}

const tracer = trace.getTracer("nearhub-rpc");

/**
 * A typed client for a protobuf-es service over grpc-js. Every call has a deadline, carries the
 * trace context, retries only idempotent unary methods (declared with `idempotency_level`) and
 * only when the server was unreachable, and fails with a {@link NearhubError}.
 */
export function createClient<S extends DescService>(
  service: S,
  address: string,
  options: ClientOptions = {},
): Client<S> {
  const max = options.maxMessageBytes ?? 8 * 1024 * 1024;
  const channel = new grpc.Client(address, options.credentials ?? grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": max,
    "grpc.max_send_message_length": max,
    "grpc.keepalive_time_ms": 30_000,
    // No channelz service is served, so its per-call bookkeeping would be pure cost.
    "grpc.enable_channelz": 0,
    // A 16 MiB receive window instead of HTTP/2's 64 KiB, so large streamed downloads are not
    // throttled by flow-control round trips.
    "grpc-node.flow_control_window": 16 * 1024 * 1024,
  });
  const client: Record<string, unknown> = {};
  for (const method of service.methods) {
    client[method.localName] = makeMethod(channel, address, method, options);
  }
  Object.defineProperty(client, "$close", { value: () => channel.close(), enumerable: false });
  return client as Client<S>;
}

function makeMethod(channel: grpc.Client, address: string, method: DescMethod, options: ClientOptions): unknown {
  const def = methodDefinition(method);
  const fullMethod = `${method.parent.typeName}/${method.name}`;
  const idempotent = method.idempotency !== MethodOptions_IdempotencyLevel.IDEMPOTENCY_UNKNOWN;
  const timeoutFor = (call?: CallOptions) =>
    call?.timeoutMs ??
    (method.methodKind === "unary" || method.methodKind === "client_streaming"
      ? (options.timeoutMs ?? 10_000)
      : (options.streamTimeoutMs ?? 300_000));
  const metadataFor = (call?: CallOptions) => {
    const md = new grpc.Metadata();
    // Later sources win, as `set` replaces: the client's, then the per-call function's, then the call's.
    setAll(md, options.metadata);
    if (options.callMetadata) setAll(md, options.callMetadata());
    setAll(md, call?.metadata);
    injectIntoMetadata(md);
    return md;
  };
  // The histogram's child per status code, bound on first use rather than labelled per call.
  const durations: Array<{ observe(value: number): void } | undefined> = [];
  const observe = (started: bigint, code: Code) => {
    if (!options.metrics) return;
    (durations[code] ??= options.metrics.rpcClientDuration.labels({
      rpc_service: method.parent.typeName,
      method: method.name,
      code: codeName(code),
    })).observe(Number(process.hrtime.bigint() - started) / 1e9);
  };
  const fail = (error: unknown): NearhubError => toClientError(error, fullMethod, address);
  const spanOptions = {
    kind: SpanKind.CLIENT,
    attributes: { "rpc.system": "grpc", "rpc.service": method.parent.typeName, "rpc.method": method.name },
  };

  switch (method.methodKind) {
    case "unary":
      return async (request: unknown, call?: CallOptions) => {
        const message = create(method.input, request as never);
        const deadline = Date.now() + timeoutFor(call);
        return tracer.startActiveSpan(fullMethod, spanOptions, async (span) => {
          const started = process.hrtime.bigint();
          const attempts = idempotent ? (options.maxAttempts ?? 3) : 1;
          try {
            for (let attempt = 1; ; attempt++) {
              try {
                const result = await new Promise<unknown>((resolve, reject) => {
                  const c = channel.makeUnaryRequest(
                    def.path,
                    def.requestSerialize,
                    def.responseDeserialize,
                    message,
                    metadataFor(call),
                    { deadline },
                    (error, value) => (error ? reject(error) : resolve(value)),
                  );
                  abortOn(call?.signal, () => c.cancel());
                });
                observe(started, Code.Ok);
                return result;
              } catch (error) {
                const e = fail(error);
                const backoff = 100 * 2 ** (attempt - 1);
                if (e.code !== Code.Unavailable || attempt >= attempts || Date.now() + backoff >= deadline) throw e;
                span.addEvent("retry", { attempt });
                await sleep(backoff);
              }
            }
          } catch (error) {
            const e = NearhubError.from(error);
            observe(started, e.code);
            span.setStatus({ code: SpanStatusCode.ERROR, message: e.rawMessage });
            throw e;
          } finally {
            span.end();
          }
        });
      };
    case "server_streaming":
      return (request: unknown, call?: CallOptions) => {
        const message = create(method.input, request as never);
        return streamResponses(
          fullMethod,
          spanOptions,
          fail,
          observe,
          () =>
            channel.makeServerStreamRequest(
              def.path,
              def.requestSerialize,
              def.responseDeserialize,
              message,
              metadataFor(call),
              {
                deadline: Date.now() + timeoutFor(call),
              },
            ),
          call?.signal,
        );
      };
    case "client_streaming":
      return async (requests: AsyncIterable<unknown>, call?: CallOptions) => {
        return tracer.startActiveSpan(fullMethod, spanOptions, async (span) => {
          const started = process.hrtime.bigint();
          try {
            let stream: grpc.ClientWritableStream<unknown> | undefined;
            const result = new Promise<unknown>((resolve, reject) => {
              stream = channel.makeClientStreamRequest(
                def.path,
                def.requestSerialize,
                def.responseDeserialize,
                metadataFor(call),
                { deadline: Date.now() + timeoutFor(call) },
                (error, value) => (error ? reject(error) : resolve(value)),
              );
            });
            const writable = stream as unknown as grpc.ClientWritableStream<unknown>;
            abortOn(call?.signal, () => writable.cancel());
            result.catch(() => undefined);
            await pump(requests, writable, method, result).catch((error: unknown) => {
              // A failed request source must end the call now: left open, the server would
              // wait for more requests until the deadline.
              writable.cancel();
              throw error;
            });
            const value = await result;
            observe(started, Code.Ok);
            return value;
          } catch (error) {
            const e = fail(error);
            observe(started, e.code);
            span.setStatus({ code: SpanStatusCode.ERROR, message: e.rawMessage });
            throw e;
          } finally {
            span.end();
          }
        });
      };
    case "bidi_streaming":
      return (requests: AsyncIterable<unknown>, call?: CallOptions) =>
        streamResponses(
          fullMethod,
          spanOptions,
          fail,
          observe,
          () => {
            const duplex = channel.makeBidiStreamRequest(
              def.path,
              def.requestSerialize,
              def.responseDeserialize,
              metadataFor(call),
              {
                deadline: Date.now() + timeoutFor(call),
              },
            );
            pump(requests, duplex, method).catch((error: unknown) => duplex.destroy(error as Error));
            return duplex;
          },
          call?.signal,
        );
  }
}

async function* streamResponses(
  fullMethod: string,
  spanOptions: { kind: SpanKind; attributes: Record<string, string> },
  fail: (e: unknown) => NearhubError,
  observe: (started: bigint, code: Code) => void,
  open: () => grpc.ClientReadableStream<unknown> | grpc.ClientDuplexStream<unknown, unknown>,
  signal: AbortSignal | undefined,
): AsyncGenerator<unknown> {
  const span = tracer.startSpan(fullMethod, spanOptions);
  const started = process.hrtime.bigint();
  const stream = context.with(trace.setSpan(context.active(), span), open);
  abortOn(signal, () => stream.cancel());
  try {
    for await (const message of stream) yield message;
    observe(started, Code.Ok);
  } catch (error) {
    const e = fail(error);
    observe(started, e.code);
    span.setStatus({ code: SpanStatusCode.ERROR, message: e.rawMessage });
    throw e;
  } finally {
    // Leaving the loop early (break) cancels the call so the server stops sending.
    stream.cancel();
    span.end();
  }
}

async function pump(
  requests: AsyncIterable<unknown>,
  stream: grpc.ClientWritableStream<unknown> | grpc.ClientDuplexStream<unknown, unknown>,
  method: DescMethod,
  ended?: Promise<unknown>,
): Promise<void> {
  // A client-streaming call reports its end (an answer, or a lost connection) only through its
  // callback, never as a stream event: waiting for "drain" alone would then wait forever.
  let over = false;
  void ended?.then(
    () => (over = true),
    () => (over = true),
  );
  for await (const request of requests) {
    if (over) return;
    if (!stream.write(create(method.input, request as never))) {
      const stop = await new Promise<boolean>((resolve, reject) => {
        const onDrain = () => {
          stream.off("error", onError);
          resolve(false);
        };
        const onError = (e: Error) => {
          stream.off("drain", onDrain);
          reject(e);
        };
        stream.once("drain", onDrain);
        stream.once("error", onError);
        const onEnd = () => {
          stream.off("drain", onDrain);
          stream.off("error", onError);
          resolve(true);
        };
        ended?.then(onEnd, onEnd);
      });
      if (stop) return;
    }
  }
  stream.end();
}

function setAll(md: grpc.Metadata, values: Record<string, string> | undefined): void {
  if (!values) return;
  for (const key in values) md.set(key, values[key] as string);
}

function abortOn(signal: AbortSignal | undefined, cancel: () => void): void {
  if (!signal) return;
  if (signal.aborted) cancel();
  else signal.addEventListener("abort", cancel, { once: true });
}

/** grpc-js errors keep their status; the message names the method and, when unreachable, the address. */
function toClientError(error: unknown, fullMethod: string, address: string): NearhubError {
  if (error instanceof NearhubError) return error;
  const e = NearhubError.from(error);
  if (e.code === Code.Unavailable) {
    // grpc-js ends a failed connection's text with "Resolution note: " and, often, nothing after it.
    const detail = e.rawMessage.replace(/\.?\s*Resolution note:\s*$/, "");
    return new NearhubError(Code.Unavailable, `${fullMethod} at ${address} is unavailable: ${detail}`, {
      cause: error,
    });
  }
  if (e.code === Code.DeadlineExceeded) {
    return new NearhubError(Code.DeadlineExceeded, `${fullMethod} at ${address}: ${e.rawMessage}`, { cause: error });
  }
  return e;
}
