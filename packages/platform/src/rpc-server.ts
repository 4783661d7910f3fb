import { once } from "node:events";
import type * as http2 from "node:http2";
import type { Socket } from "node:net";
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
import { extractFromMetadata, spansMayRecord } from "./trace-context.js";

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

/** Options of one service registered with {@link RpcServer.addService}. */
export interface AddServiceOptions {
  /**
   * Whether handlers run inside `runAs(principal)`, so calls they make to other services carry
   * the caller's identity (default true). A service whose handlers make no such calls, or wrap
   * the few that do in `runAs` themselves, turns it off: entering AsyncLocalStorage is what
   * switches Node 20's promise hooks on, a cost every promise of the process then pays.
   */
  principalContext?: boolean;
}

/** What every call of one method shares, computed once when the service is added. */
interface MethodInfo {
  name: string;
  serviceName: string;
  fullMethod: string;
  quiet: boolean;
  principalContext: boolean;
  spanOptions: { kind: SpanKind; attributes: Record<string, string> };
  cancelledMessage: string;
  deadlineMessage: string;
  /** The RED histogram's child per status code, bound on first use. */
  durations: Array<{ observe(value: number): void } | undefined>;
}

/**
 * The context of one call. What most calls never touch is made on first use: the logger, the
 * deadline's Date and the AbortSignal (with the listener for the client's cancellation), so a
 * call that reads none of them pays for none.
 */
class ServerCallContext implements CallContext {
  principal: Principal = anonymous;
  authorizer: Authorize | undefined;
  decider: Decide | undefined;
  private callLogger: Logger | undefined;
  private deadlineDate: Date | undefined;
  private controller: AbortController | undefined;
  private abortReason: NearhubError | undefined;
  private cancelListener: (() => void) | undefined;
  private finished = false;

  constructor(
    readonly method: string,
    readonly service: string,
    readonly peer: string,
    readonly metadata: grpc.Metadata,
    /** Epoch milliseconds; NaN when the client set no deadline. */
    readonly deadlineMs: number,
    private readonly call: AnyCall,
    private readonly cancelledMessage: string,
    private readonly parentLogger: Logger,
  ) {}

  get logger(): Logger {
    return (this.callLogger ??= this.parentLogger.child({ component: "rpc", method: this.method }));
  }

  get deadline(): Date | undefined {
    if (Number.isNaN(this.deadlineMs)) return undefined;
    return (this.deadlineDate ??= new Date(this.deadlineMs));
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.abortReason) this.controller.abort(this.abortReason);
      else if (this.call.cancelled) this.abort(new NearhubError(Code.Cancelled, this.cancelledMessage));
      else if (!this.finished) {
        this.cancelListener = () => this.abort(new NearhubError(Code.Cancelled, this.cancelledMessage));
        (this.call as unknown as NodeJS.EventEmitter).on("cancelled", this.cancelListener);
      }
    }
    return this.controller.signal;
  }

  get aborted(): boolean {
    return this.abortReason !== undefined || this.call.cancelled;
  }

  /** Aborts the call's signal (now if it exists, or as it is created). */
  abort(reason: NearhubError): void {
    if (this.abortReason) return;
    this.abortReason = reason;
    this.controller?.abort(reason);
  }

  /** The call is over: stop listening for its cancellation. */
  finish(): void {
    this.finished = true;
    if (this.cancelListener) (this.call as unknown as NodeJS.EventEmitter).off("cancelled", this.cancelListener);
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
  addService<S extends DescService>(service: S, impl: ServiceImpl<S>, options: AddServiceOptions = {}): void {
    const handlers: grpc.UntypedServiceImplementation = {};
    const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
    for (const method of service.methods) {
      const fn = (impl as Record<string, unknown>)[method.localName];
      if (typeof fn !== "function") {
        throw new Error(`${service.typeName}: no handler for ${method.name}`);
      }
      definition[method.name] = methodDefinition(method);
      handlers[method.name] = this.bind(method, fn.bind(impl) as Handler, options.principalContext ?? true);
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

  private bind(method: DescMethod, handler: Handler, principalContext: boolean): grpc.UntypedHandleCall {
    const serviceName = method.parent.typeName;
    const fullMethod = `${serviceName}/${method.name}`;
    const info: MethodInfo = {
      name: method.name,
      serviceName,
      fullMethod,
      quiet: QUIET_SERVICES.has(serviceName),
      principalContext,
      // The SDK copies span attributes, so one object serves every call.
      spanOptions: {
        kind: SpanKind.SERVER,
        attributes: { "rpc.system": "grpc", "rpc.service": serviceName, "rpc.method": method.name },
      },
      cancelledMessage: `${fullMethod}: the client cancelled the call`,
      deadlineMessage: `${fullMethod}: the deadline passed before the call finished`,
      durations: [],
    };
    const output = method.output;
    switch (method.methodKind) {
      case "unary":
        return (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
          let response: unknown;
          this.runCall(info, call, (ctx) =>
            Promise.resolve(handler(call.request, ctx)).then((out) => {
              response = create(output, out as never);
            }),
          ).then(
            () => callback(null, response),
            (error: unknown) => callback(toServiceError(error)),
          );
        };
      case "server_streaming":
        return (call: grpc.ServerWritableStream<unknown, unknown>) => {
          this.runCall(info, call, async (ctx) => {
            for await (const out of handler(call.request, ctx) as AsyncIterable<unknown>) {
              if (ctx.aborted) break;
              if (!call.write(create(output, out as never))) await drained(call, ctx.signal);
            }
          }).then(
            () => call.end(),
            (error: unknown) => call.emit("error", toServiceError(error)),
          );
        };
      case "client_streaming":
        return (call: grpc.ServerReadableStream<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
          let response: unknown;
          this.runCall(info, call, async (ctx) => {
            // As for bidi calls: the default iterator would destroy the still unanswered call
            // (an AbortError per call) when the handler stops reading.
            const requests = call.iterator({ destroyOnReturn: false }) as AsyncIterable<unknown>;
            response = create(output, (await handler(requests, ctx)) as never);
          }).then(
            () => callback(null, response),
            (error: unknown) => callback(toServiceError(error)),
          );
        };
      case "bidi_streaming":
        return (call: grpc.ServerDuplexStream<unknown, unknown>) => {
          this.runCall(info, call, async (ctx) => {
            // The default stream iterator destroys the call when the requests end, and a
            // destroyed grpc-js call never sends its status: the client would hang.
            const requests = call.iterator({ destroyOnReturn: false }) as AsyncIterable<unknown>;
            for await (const out of handler(requests, ctx) as AsyncIterable<unknown>) {
              if (ctx.aborted) break;
              if (!call.write(create(output, out as never))) await drained(call, ctx.signal);
            }
          }).then(
            () => call.end(),
            (error: unknown) => call.emit("error", toServiceError(error)),
          );
        };
    }
  }

  private async runCall(info: MethodInfo, call: AnyCall, body: (ctx: CallContext) => Promise<void>): Promise<void> {
    const { logger, service } = this.options;
    const { fullMethod, quiet } = info;
    const rawDeadline = call.getDeadline();
    const deadlineMs = typeof rawDeadline === "number" ? rawDeadline : rawDeadline.getTime();
    const ctx = new ServerCallContext(
      fullMethod,
      service,
      call.getPeer(),
      call.metadata,
      Number.isFinite(deadlineMs) ? deadlineMs : NaN,
      call,
      info.cancelledMessage,
      logger,
    );
    ctx.authorizer = this.options.authorize;
    ctx.decider = this.options.decide;

    const started = performance.now();
    let code = Code.Ok;
    try {
      if (quiet) {
        await this.execute(ctx, info, body);
      } else {
        // A span (and a context to carry it) only when it records or continues a trace: with no
        // tracer provider, or nothing to continue, the call skips the context switch.
        const parent = extractFromMetadata(call.metadata);
        const continued = trace.getSpanContext(parent) !== undefined;
        // Nothing would record or carry a root span: none is made (ids, attributes, end).
        if (!continued && !spansMayRecord()) return await this.execute(ctx, info, body);
        const span = tracer.startSpan(fullMethod, info.spanOptions, parent);
        const traced = continued || span.isRecording();
        try {
          await (traced
            ? context.with(trace.setSpan(parent, span), () => this.execute(ctx, info, body))
            : this.execute(ctx, info, body));
        } catch (error) {
          if (traced) {
            const e = NearhubError.from(error, Code.Internal);
            span.setAttribute("rpc.grpc.status_code", e.code);
            span.setStatus({ code: SpanStatusCode.ERROR, message: e.rawMessage });
          }
          throw error;
        } finally {
          span.end();
        }
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
      ctx.finish();
      const seconds = (performance.now() - started) / 1000;
      (info.durations[code] ??= this.options.metrics.rpcServerDuration.labels({
        rpc_service: info.serviceName,
        method: info.name,
        code: codeName(code),
      })).observe(seconds);
    }
  }

  /**
   * Runs the call under its deadline: at the deadline the handler sees an aborted signal, and
   * the call ends even if the handler ignores it.
   */
  private execute(ctx: ServerCallContext, info: MethodInfo, body: (ctx: CallContext) => Promise<void>): Promise<void> {
    const { deadlineMs } = ctx;
    if (Number.isNaN(deadlineMs)) return this.chain(ctx, info, body);
    let timer: NodeJS.Timeout | undefined;
    return new Promise<void>((resolve, reject) => {
      timer = setTimeout(
        () => {
          const error = new NearhubError(Code.DeadlineExceeded, info.deadlineMessage);
          ctx.abort(error);
          reject(error);
        },
        Math.max(0, deadlineMs - Date.now()),
      );
      this.chain(ctx, info, body).then(resolve, reject);
    }).finally(() => clearTimeout(timer));
  }

  /** Authentication, then the interceptors, then the handler; no wrapping when there are none. */
  private chain(ctx: CallContext, info: MethodInfo, body: (ctx: CallContext) => Promise<void>): Promise<void> {
    const { authenticate, interceptors } = this.options;
    if (!authenticate) return this.intercepted(ctx, body, interceptors);
    return authenticate(ctx).then((principal) => {
      ctx.principal = principal;
      // Calls the handler makes to other services carry this principal's identity.
      return info.principalContext
        ? runAs(principal, () => this.intercepted(ctx, body, interceptors))
        : this.intercepted(ctx, body, interceptors);
    });
  }

  private intercepted(
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
 * per-stream window in the SETTINGS it sends and the connection window of each new session; and
 * turn Nagle off on each accepted connection.
 * Uses grpc-js internals (1.14); if they change, the server keeps the defaults. Exported for
 * benchmarks whose bare grpc-js baselines must move bytes under the same windows.
 */
export function widenFlowControlWindows(server: grpc.Server): void {
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
    // TCP_NODELAY, as the grpc-js client sets on its side: with Nagle on, a response's trailers
    // written apart from its message can wait for the client's delayed ACK (up to 40 ms).
    http2Server.on("connection", (socket: Socket) => socket.setNoDelay(true));
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
