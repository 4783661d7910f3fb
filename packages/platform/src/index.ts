export { Bus, PermanentError } from "./bus.js";
export type {
  ConsumerDecl,
  ConsumerHandle,
  KvDecl,
  MessageHandler,
  Provisioning,
  ReceivedMessage,
  StreamDecl,
} from "./bus.js";
export { ConfigError, commonEnv, parseEnv, port } from "./config.js";
export type { CommonConfig } from "./config.js";
export { Code, NearhubError, codeName, formatZodIssues, httpStatusOf } from "./errors.js";
export { HealthReporter, ServingStatus } from "./health.js";
export { closeHttp, listenHttp, observeHttp, sendError, sendJson, sendMetrics, startOpsServer } from "./http-server.js";
export type { OpsServerOptions } from "./http-server.js";
export { createLogger, silentLogger } from "./logger.js";
export type { Logger, LoggerOptions } from "./logger.js";
export { ServiceMetrics } from "./metrics.js";
export { Names } from "./names.js";
export { createClient } from "./rpc-client.js";
export type { ClientOptions } from "./rpc-client.js";
export { methodDefinition, methodPath, serviceDefinition } from "./rpc-definition.js";
export { RpcServer, widenFlowControlWindows } from "./rpc-server.js";
export type {
  AddServiceOptions,
  Authenticate,
  Authorize,
  Decide,
  RpcServerOptions,
  ServerInterceptor,
} from "./rpc-server.js";
export type {
  CallContext,
  CallOptions,
  Client,
  ClientMethod,
  MethodImpl,
  Principal,
  ServiceImpl,
} from "./rpc-types.js";
export { runMain, runServiceMain } from "./run-main.js";
export type { Stoppable } from "./run-main.js";
export { ServiceHost } from "./service-host.js";
export type { ServiceHostOptions } from "./service-host.js";
export { startTelemetry } from "./telemetry.js";
export { EXPIRY_WARNING_DAYS, MIN_TLS_VERSION, TransportSecurity, isLoopback } from "./tls.js";
export type { ClientAuth, ClientTls, ClientTlsFiles, ServerTls, TlsEnv } from "./tls.js";
export type { Telemetry, TelemetryOptions } from "./telemetry.js";
export { extractFromHeaders, extractFromMetadata, injectIntoHeaders, injectIntoMetadata } from "./trace-context.js";
export { Decision, Outcome, publishAudit } from "./audit.js";
export type { AuditEntry, AuditSource } from "./audit.js";
export * from "./auth/index.js";
export { auditStream, eventsStream } from "./streams.js";
