import type { Server } from "node:http";
import type { DescService } from "@bufbuild/protobuf";
import { Health } from "@nearhub/proto/health";
import { Access } from "./auth/access.js";
import { Bus, type Provisioning } from "./bus.js";
import type { CommonConfig } from "./config.js";
import { HealthReporter, ServingStatus } from "./health.js";
import { closeHttp, startOpsServer } from "./http-server.js";
import { createLogger, type Logger } from "./logger.js";
import { ServiceMetrics } from "./metrics.js";
import { Names } from "./names.js";
import { RpcServer, type AddServiceOptions, type Authenticate, type ServerInterceptor } from "./rpc-server.js";
import type { ServiceImpl } from "./rpc-types.js";
import { TransportSecurity } from "./tls.js";

/** Options of {@link ServiceHost.start}. */
export interface ServiceHostOptions {
  /** `sync`, `storage`, …: the `service` field of logs and metrics. */
  name: string;
  common: CommonConfig;
  /** gRPC port; 0 picks a free one. */
  grpcPort: number;
  logger?: Logger;
  /** Streams, buckets and consumers to create before reporting SERVING. */
  provisioning?: (names: Names) => Provisioning;
  authenticate?: Authenticate;
  interceptors?: ServerInterceptor[];
  maxMessageBytes?: number;
  /** Serve `/metrics` and `/healthz` on NEARHUB_METRICS_PORT; edge serves them itself. */
  opsServer?: boolean;
  /** Listener and client TLS; read from the NEARHUB_TLS_* variables of `common` when absent. */
  tls?: TransportSecurity;
}

/**
 * The lifecycle every nearhub service shares: gRPC server with grpc.health.v1 (NOT_SERVING
 * until ready), metrics and health on the ops port, the NATS connection and provisioning, then
 * the service's own set-up, then SERVING. `stop()` reverses it: NOT_SERVING, stop callbacks
 * (consumers hand back their messages), gRPC drain, NATS drain.
 */
export class ServiceHost {
  readonly logger: Logger;
  readonly metrics: ServiceMetrics;
  readonly health = new HealthReporter();
  readonly rpc: RpcServer;
  readonly names: Names;
  /** TLS of every listener and of calls to other services (plain text without a certificate). */
  readonly tls: TransportSecurity;
  private busInstance: Bus | undefined;
  private accessInstance: Access | undefined;
  private opsServer: Server | undefined;
  private readonly stopCallbacks: Array<() => Promise<void> | void> = [];
  private stopped: Promise<void> | undefined;
  /** The bound gRPC port. */
  grpcPort = -1;
  /** The bound metrics port (-1 when the ops server is off). */
  metricsPort = -1;

  private constructor(readonly options: ServiceHostOptions) {
    this.logger = options.logger ?? createLogger({ service: options.name, level: options.common.LOG_LEVEL });
    this.metrics = new ServiceMetrics(options.name);
    this.names = new Names(options.common.NEARHUB_NAMESPACE);
    // Before any listener: an expired or unreadable certificate stops the start here.
    this.tls = options.tls ?? TransportSecurity.load(options.name, options.common, { logger: this.logger });
    this.rpc = new RpcServer({
      credentials: this.tls.grpcServerCredentials(),
      service: options.name,
      logger: this.logger,
      metrics: this.metrics,
      ...(options.authenticate ? { authenticate: options.authenticate } : {}),
      ...(options.interceptors ? { interceptors: options.interceptors } : {}),
      ...(options.maxMessageBytes ? { maxMessageBytes: options.maxMessageBytes } : {}),
    });
  }

  /** The NATS connection (available once `start` has connected). */
  get bus(): Bus {
    if (!this.busInstance) throw new Error(`${this.options.name}: the bus is not connected yet`);
    return this.busInstance;
  }

  /** Authentication and the access policy (available once `start` has connected). */
  get access(): Access {
    if (!this.accessInstance) throw new Error(`${this.options.name}: access control is not started yet`);
    return this.accessInstance;
  }

  /**
   * Metadata for gRPC clients to other nearhub services: each call carries the identity of the
   * principal the current request runs for, or this service's own.
   */
  callMetadata(): () => Record<string, string> {
    return this.access.clientMetadata();
  }

  /** Starts a service: `setup` registers its gRPC services, consumers and stop callbacks. */
  static async start(options: ServiceHostOptions, setup: (host: ServiceHost) => Promise<void>): Promise<ServiceHost> {
    const host = new ServiceHost(options);
    try {
      await host.boot(setup);
      return host;
    } catch (error) {
      await host.stop().catch(() => undefined);
      throw error;
    }
  }

  private async boot(setup: (host: ServiceHost) => Promise<void>): Promise<void> {
    const { common, name } = this.options;
    this.tls.warnIfPlainText(common.NEARHUB_BIND_HOST, this.logger, [`${name} gRPC`, `${name} HTTP`]);
    // Health answers from memory and calls no other service: no principal context to enter.
    this.rpc.addService(Health, this.health.implementation(), { principalContext: false });
    this.grpcPort = await this.rpc.listen(common.NEARHUB_BIND_HOST, this.options.grpcPort);
    if (this.options.opsServer !== false) {
      const ops = await startOpsServer({
        host: common.NEARHUB_BIND_HOST,
        port: common.NEARHUB_METRICS_PORT,
        metrics: this.metrics,
        ready: () => this.health.get() === ServingStatus.SERVING,
        // Encrypted, but probes and scrapes carry no client certificate.
        tls: this.tls.withoutClientAuth(),
      });
      this.opsServer = ops.server;
      this.metricsPort = ops.port;
    }
    this.busInstance = await Bus.connect({
      url: common.NATS_URL,
      name: `nearhub-${name}`,
      source: `nearhub/${name}`,
      names: this.names,
      logger: this.logger,
      metrics: this.metrics,
      monitorUrl: common.NEARHUB_NATS_MONITOR_URL,
      connectTimeoutMs: common.NEARHUB_NATS_CONNECT_TIMEOUT_MS,
      replicas: common.NEARHUB_STREAM_REPLICAS,
    });
    if (this.options.provisioning) await this.bus.provision(this.options.provisioning(this.names));
    const access = await Access.start({ service: name, bus: this.bus, config: common, logger: this.logger });
    this.accessInstance = access;
    this.rpc.useAccess({
      authenticate: access.grpcAuthenticate(),
      authorize: access.grpcAuthorize(),
      decide: (principal, permission, resource) => access.decide(principal, permission, resource).allowed,
    });
    await setup(this);
    this.health.setAll(ServingStatus.SERVING);
    this.metrics.ready.set(1);
    this.logger.info(`${name} ready`, { grpc_port: this.grpcPort, metrics_port: this.metricsPort });
  }

  /** Registers a gRPC service; it reports NOT_SERVING until the host is ready. */
  serve<S extends DescService>(service: S, impl: ServiceImpl<S>, options?: AddServiceOptions): void {
    this.health.set(service.typeName, this.health.get() ?? ServingStatus.NOT_SERVING);
    this.rpc.addService(service, impl, options);
  }

  /** Runs `fn` on stop, in reverse order of registration, before NATS drains. */
  onStop(fn: () => Promise<void> | void): void {
    this.stopCallbacks.push(fn);
  }

  /** Stops the service gracefully; safe to call more than once. */
  stop(): Promise<void> {
    this.stopped ??= this.shutdown();
    return this.stopped;
  }

  private async shutdown(): Promise<void> {
    const timeout = this.options.common.NEARHUB_SHUTDOWN_TIMEOUT_MS;
    this.health.setAll(ServingStatus.NOT_SERVING);
    this.metrics.ready.set(0);
    for (const fn of this.stopCallbacks.reverse()) {
      try {
        await fn();
      } catch (error) {
        this.logger.error("stop callback failed", { error });
      }
    }
    await this.rpc.shutdown(Math.min(timeout, 3000));
    await this.accessInstance?.stop();
    await this.busInstance?.drain(timeout);
    if (this.opsServer) await closeHttp(this.opsServer);
    this.logger.info(`${this.options.name} stopped`);
  }
}
