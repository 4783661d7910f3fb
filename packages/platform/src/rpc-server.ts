import { once } from "node:events";
import type * as http2 from "node:http2";
import { create, type DescMethod, type DescService } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { SpanKind, SpanStatusCode, context, trace } from "@opentelemetry/api";
import { Code, NearhubError, codeName } from "./errors.js";
import type { Logger } from "./logger.js";
import type { ServiceMetrics } from "./metrics.js";
import { methodDefinition } from "./rpc-definition.js";
import { runAs } from "./auth/context.js";
import type { Permission } from "./auth/permissions.js";
import type { CallContext, Principal, ServiceImpl } from "./rpc-types.js";
import { extractFromMetadata } from "./trace-context.js";

/** Wraps the whole lifetime of a call (for streams, until the last message). */
export type ServerInterceptor = (ctx: CallContext, next: () => Promise<void>) => Promise<void>;

/** Decides who is calling; throws UNAUTHENTICATED or PERMISSION_DENIED to refuse the call. */
export type Authenticate = (ctx: CallContext) => Promise<Principal>;

/**
 * Checks that the call's principal may do `permission` on `resource`; throws PERMISSION_DENIED
 * (UNAUTHENTICATED for anonymous callers) and audits the denial otherwise.
 */
export type Authorize = (ctx: CallContext, permission: Permission, resource: string) => Promise<void>;

/** Whether a principal may do `permission` on `resource`, without side effects. */
export type Decide = (principal: Principal, permission: Permission, resource: string) => boolean;

/** Options of {@link RpcServer}. */
export interface RpcServerOptions {
  /** The nearhub service name, for logs and metrics. */
  service: string;
  logger: Logger;
  metrics: ServiceMetrics;
  /** The authentication hook (RBAC fills it in); by default every caller is `anonymous`. */
  authenticate?: Authenticate;
  /** The authorization check handlers run through `ctx.authorize` (RBAC fills it in). */
  authorize?: Authorize;
  /** The side-effect-free check behind `ctx.can`. */
  decide?: Decide;
  /** Extra interceptors, run innermost (after authentication, just around the handler). */
  interceptors?: ServerInterceptor[];
  /** Largest message accepted or sent; default 8 MiB. */
  maxMessageBytes?: number;
  /** Server TLS; plain text when absent. */
  credentials?: grpc.ServerCredentials;
}

const anonymous: Principal = { subject: "anonymous", groups: [] };
const QUIET_SERVICES = new Set(["grpc.health.v1.Health"]);
const tracer = trace.getTracer("nearhub-rpc");

/** What every call of one method shares, computed once per method rather than per call. */
interface MethodInfo {
  serviceName: string;
  fullMethod: string;
  quiet: boolean;
  spanOptions: { kind: SpanKind; attributes: Record<string, string> };
}

function methodInfo(method: DescMethod): MethodInfo {
  const serviceName = method.parent.typeName;
  return {
    serviceName,
    fullMethod: `${serviceName}/${method.name}`,
    quiet: QUIET_SERVICES.has(serviceName),
    // The SDK copies span attributes, so one object serves every call.
    spanOptions: {
      kind: SpanKind.SERVER,
      attributes: { "rpc.system": "grpc", "rpc.service": serviceName, "rpc.method": method.name },
    },
  };
}

/** The context of one call; its logger is created on first use (most calls never log). */
class ServerCallContext implements CallContext {
  principal: Principal = anonymous;
  authorizer: Authorize | undefined;
  decider: Decide | undefined;
  private callLogger: Logger | undefined;

  constructor(
    readonly method: string,
    readonly service: string,
    readonly peer: string,
    readonly metadata: grpc.Metadata,
    readonly deadline: Date | undefined,
    readonly signal: AbortSignal,
    private readonly parentLogger: Logger,
  ) {}

  get logger(): Logger {
    return (this.callLogger ??= this.parentLogger.child({ component: "rpc", method: this.method }));
  }

  authorize(permission: Permission, resource: string): Promise<void> {
    return this.authorizer ? this.authorizer(this, permission, resource) : Promise.resolve();
  }

  can(permission: Permission, resource: string): boolean {
    return this.decider ? this.decider(this.principal, permission, resource) : true;
  }
}

/**
 * A grpc-js server whose services are protobuf-es descriptors and typed handlers. Every call
 * runs through deadline enforcement, tracing (context from metadata), RED metrics, logging and
 * the authentication hook; errors become gRPC statuses with a human message.
 */
export class RpcServer {
  private readonly server: grpc.Server;
  private readonly options: RpcServerOptions;
  private readonly methods = new Map<DescMethod, MethodInfo>();
  private boundPort = -1;

  constructor(options: RpcServerOptions) {
    this.options = options;
    const max = options.maxMessageBytes ?? 8 * 1024 * 1024;
    this.server = new grpc.Server({
      "grpc.max_receive_message_length": max,
      "grpc.max_send_message_length": max,
      "grpc.keepalive_permit_without_calls": 1,
      // No channelz service is registered, so its per-call bookkeeping would be pure cost.
      "grpc.enable_channelz": 0,
    });
    widenFlowControlWindows(this.server);
  }

  /** Installs the authentication and authorization hooks (before services are added). */
  useAccess(hooks: { authenticate: Authenticate; authorize: Authorize; decide: Decide }): void {
    this.options.authenticate = hooks.authenticate;
    this.options.authorize = hooks.authorize;
    this.options.decide = hooks.decide;
  }

  /** The port bound by {@link listen}. */
  get port(): number {
    return this.boundPort;
  }

  /** Registers a service implementation: one typed handler per method. */
  addService<S extends DescService>(service: S, impl: ServiceImpl<S>): void {
    const handlers: grpc.UntypedServiceImplementation = {};
    const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
    for (const method of service.methods) {
      const fn = (impl as Record<string, unknown>)[method.localName];
      if (typeof fn !== "function") {
        throw new Error(`${service.typeName}: no handler for ${method.name}`);
      }
      definition[method.name] = methodDefinition(method);
      handlers[method.name] = this.bind(method, fn.bind(impl) as Handler);
    }
    this.server.addService(definition, handlers);
  }

  /** Binds host:port (0 for any free port) and starts serving; returns the bound port. */
  async listen(host: string, port: number): Promise<number> {
    const credentials = this.options.credentials ?? grpc.ServerCredentials.createInsecure();
    const address = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
    this.boundPort = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(address, credentials, (error, bound) => {
        if (error) {
          reject(
            new NearhubError(
              Code.Unavailable,
              `cannot listen for gRPC on ${address}: ${error.message} (choose another port or stop what holds it)`,
              { cause: error },
            ),
          );
        } else resolve(bound);
      });
    });
    return this.boundPort;
  }

  /** Stops accepting calls, lets running calls finish for up to `timeoutMs`, then cuts them. */
  async shutdown(timeoutMs = 3000): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, timeoutMs);
      timer.unref();
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private bind(method: DescMethod, handler: Handler): grpc.UntypedHandleCall {
    const kind = method.methodKind;
    const run = (call: AnyCall, body: (ctx: CallContext) => Promise<void>) => this.runCall(method, call, body);
    switch (kind) {
      case "unary":
        return (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
          let response: unknown;
          run(call, async (ctx) => {
            response = create(method.output, (await handler(call.request, ctx)) as never);
          }).then(
            () => callback(null, response),
            (error: unknown) => callback(toServiceError(error)),
          );
        };
      case "server_streaming":
        return (call: grpc.ServerWritableStream<unknown, unknown>) => {
          run(call, async (ctx) => {
            for await (const out of handler(call.request, ctx) as AsyncIterable<unknown>) {
              if (ctx.signal.aborted) break;
              if (!call.write(create(method.output, out as never))) await drained(call, ctx.signal);
            }
          }).then(
            () => call.end(),
            (error: unknown) => call.emit("error", toServiceError(error)),
          );
        };
      case "client_streaming":
        return (call: grpc.ServerReadableStream<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
          let response: unknown;
          run(call, async (ctx) => {
            response = create(method.output, (await handler(call as AsyncIterable<unknown>, ctx)) as never);
          }).then(
            () => callback(null, response),
            (error: unknown) => callback(toServiceError(error)),
          );
        };
      case "bidi_streaming":
        return (call: grpc.ServerDuplexStream<unknown, unknown>) => {
          run(call, async (ctx) => {
            // The default stream iterator destroys the call when the requests end, and a
            // destroyed grpc-js call never sends its status: the client would hang.
            const requests = call.iterator({ destroyOnReturn: false }) as AsyncIterable<unknown>;
            for await (const out of handler(requests, ctx) as AsyncIterable<unknown>) {
              if (ctx.signal.aborted) break;
              if (!call.write(create(method.output, out as never))) await drained(call, ctx.signal);
            }
          }).then(
            () => call.end(),
            (error: unknown) => call.emit("error", toServiceError(error)),
          );
        };
    }
  }

  private async runCall(method: DescMethod, call: AnyCall, body: (ctx: CallContext) => Promise<void>): Promise<void> {
    const { logger, metrics, service } = this.options;
    let info = this.methods.get(method);
    if (!info) this.methods.set(method, (info = methodInfo(method)));
    const { serviceName, fullMethod, quiet } = info;
    const controller = new AbortController();
    const rawDeadline = call.getDeadline();
    const deadlineMs = rawDeadline instanceof Date ? rawDeadline.getTime() : Number(rawDeadline);
    const deadline = Number.isFinite(deadlineMs) ? new Date(deadlineMs) : undefined;
    const onCancel = () =>
      controller.abort(new NearhubError(Code.Cancelled, `${fullMethod}: the client cancelled the call`));
    const events = call as unknown as NodeJS.EventEmitter;
    events.on("cancelled", onCancel);

    const ctx = new ServerCallContext(
      fullMethod,
      service,
      call.getPeer(),
      call.metadata,
      deadline,
      controller.signal,
      logger,
    );
    ctx.authorizer = this.options.authorize;
    ctx.decider = this.options.decide;

    const started = process.hrtime.bigint();
    let deadlineTimer: NodeJS.Timeout | undefined;
    const execute = (): Promise<void> => {
      if (!deadline) return this.chain(ctx, body);
      // Deadline enforcement: the handler sees an aborted signal, and the call ends at the
      // deadline even if the handler ignores it.
      const deadlinePassed = new Promise<never>((_, reject) => {
        deadlineTimer = setTimeout(
          () => {
            const error = new NearhubError(
              Code.DeadlineExceeded,
              `${fullMethod}: the deadline passed before the call finished`,
            );
            controller.abort(error);
            reject(error);
          },
          Math.max(0, deadline.getTime() - Date.now()),
        );
      });
      deadlinePassed.catch(() => undefined);
      return Promise.race([this.chain(ctx, body), deadlinePassed]);
    };

    let code = Code.Ok;
    try {
      if (quiet) {
        await execute();
      } else {
        await tracer.startActiveSpan(fullMethod, info.spanOptions, extractFromMetadata(call.metadata), async (span) => {
          try {
            await execute();
          } catch (error) {
            const e = NearhubError.from(error, Code.Internal);
            span.setAttribute("rpc.grpc.status_code", e.code);
            span.setStatus({ code: SpanStatusCode.ERROR, message: e.rawMessage });
            throw error;
          } finally {
            span.end();
          }
        });
      }
    } catch (error) {
      const e = NearhubError.from(error, Code.Internal);
      code = e.code;
      if (code === Code.Internal || code === Code.Unknown || code === Code.DataLoss) {
        ctx.logger.error("call failed", { code: codeName(code), error });
      } else if (!quiet) {
        ctx.logger.debug("call refused", { code: codeName(code), message: e.rawMessage });
      }
      // The original, not `e`: toServiceError hides the message of anything not thrown as a
      // NearhubError, and `e` would always look like one.
      throw error;
    } finally {
      if (deadlineTimer) clearTimeout(deadlineTimer);
      events.off("cancelled", onCancel);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      metrics.rpcServerDuration.observe(
        { rpc_service: serviceName, method: method.name, code: codeName(code) },
        seconds,
      );
    }
  }

  /** Authentication, then the interceptors, then the handler; no wrapping when there are none. */
  private async chain(ctx: CallContext, body: (ctx: CallContext) => Promise<void>): Promise<void> {
    const { authenticate, interceptors } = this.options;
    if (authenticate) {
      ctx.principal = await authenticate(ctx);
      // Calls the handler makes to other services carry this principal's identity.
      return runAs(ctx.principal, () => this.intercepted(ctx, body, interceptors));
    }
    return this.intercepted(ctx, body, interceptors);
  }

  private async intercepted(
    ctx: CallContext,
    body: (ctx: CallContext) => Promise<void>,
    interceptors: ServerInterceptor[] | undefined,
  ): Promise<void> {
    if (!interceptors || interceptors.length === 0) return body(ctx);
    const invoke = async (index: number): Promise<void> => {
      const interceptor = interceptors[index];
      if (interceptor) return interceptor(ctx, () => invoke(index + 1));
      return body(ctx);
    };
    return invoke(0);
  }
}

// A handler of any kind, erased for binding.
type Handler = (input: unknown, ctx: CallContext) => unknown;
type AnyCall =
  | grpc.ServerUnaryCall<unknown, unknown>
  | grpc.ServerWritableStream<unknown, unknown>
  | grpc.ServerReadableStream<unknown, unknown>
  | grpc.ServerDuplexStream<unknown, unknown>;

async function drained(stream: NodeJS.EventEmitter, signal: AbortSignal): Promise<void> {
  await once(stream, "drain", { signal }).catch((error: unknown) => {
    if (!signal.aborted) throw error;
  });
}

/** HTTP/2 receive window of server sessions and streams (the client sets the same). */
const SERVER_WINDOW = 16 * 1024 * 1024;

/**
 * grpc-js leaves its server at HTTP/2's 64 KiB receive windows (it has no option for them), which
 * throttles large client-streamed uploads to one flow-control round trip per 64 KiB. Raise the
 * per-stream window in the SETTINGS it sends and the connection window of each new session.
 * Uses grpc-js internals (1.14); if they change, the server keeps the defaults.
 */
function widenFlowControlWindows(server: grpc.Server): void {
  const internals = server as unknown as {
    commonServerOptions?: http2.ServerOptions;
    createHttp2Server?: (credentials: unknown) => http2.Http2Server;
  };
  const common = internals.commonServerOptions;
  const create = internals.createHttp2Server;
  if (!common || typeof create !== "function") return;
  common.settings = { ...common.settings, initialWindowSize: SERVER_WINDOW };
  internals.createHttp2Server = (credentials) => {
    const http2Server = create.call(server, credentials);
    http2Server.on("session", (session: http2.ServerHttp2Session) => {
      try {
        session.setLocalWindowSize(SERVER_WINDOW);
      } catch {
        // A session already closing keeps its window.
      }
    });
    return http2Server;
  };
}

/** The grpc-js error object for anything thrown; internal errors keep their detail in the log. */
function toServiceError(error: unknown): Partial<grpc.StatusObject> {
  const e = NearhubError.from(error, Code.Internal);
  if (e.code === Code.Internal && !(error instanceof NearhubError)) {
    const traceId = trace.getSpan(context.active())?.spanContext().traceId;
    return {
      code: grpc.status.INTERNAL,
      details: `internal error; the server log has the details${traceId ? ` (trace ${traceId})` : ""}`,
    };
  }
  return { code: e.code as number, details: e.rawMessage };
}
