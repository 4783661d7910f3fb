import { hostname } from "node:os";
import { join } from "node:path";
import { IDENTITY_HEADER, ServiceHost, auditStream, codeName, eventsStream, type Logger } from "@nearhub/platform";
import { modelFailed, modelLoaded, modelUnloaded } from "@nearhub/proto/events";
import { GRPCInferenceService } from "@nearhub/proto/inference";
import type { InferenceConfig } from "./config.js";
import { inferenceApi } from "./inference-api.js";
import { ModelManager, type BackendFactory, type ModelEvent } from "./model-manager.js";
import { LocalFolderSource, type ModelSource } from "./model-source.js";
import { CompositeSource, RegistrySource } from "./registry-source.js";
import { BackendRegistry } from "./backend-registry.js";
import { RemoteBackends } from "./remote-backends.js";
import { InferenceMetrics } from "./model-statistics.js";

/** Options of {@link startInferenceGateway} beyond the environment. */
export interface InferenceGatewayOptions {
  logger?: Logger;
  /** Where models come from; by default the folder NEARHUB_MODEL_DIR. */
  source?: ModelSource;
  /** Replaces ONNX Runtime (tests use a backend they can hold). */
  createBackend?: BackendFactory;
}

/** A running gateway: the service host and its models. */
export interface InferenceGateway extends ServiceHost {
  readonly models: ModelManager;
  /** Remote backends, when NEARHUB_INFERENCE_REMOTES lists any. */
  readonly remotes: RemoteBackends | undefined;
}

/** Starts the inference gateway on the KServe v2 gRPC protocol. */
export async function startInferenceGateway(
  config: InferenceConfig,
  options: InferenceGatewayOptions = {},
): Promise<InferenceGateway> {
  let models: ModelManager | undefined;
  let remotes: RemoteBackends | undefined;
  const host = await ServiceHost.start(
    {
      name: "inference-gateway",
      common: config,
      grpcPort: config.NEARHUB_GRPC_PORT,
      maxMessageBytes: 64 * 1024 * 1024,
      ...(options.logger ? { logger: options.logger } : {}),
      provisioning: (names) => ({ streams: [eventsStream(names), auditStream(names)] }),
    },
    async (host) => {
      const log = host.logger.child({ component: "models" });
      const folder = new LocalFolderSource(config.NEARHUB_MODEL_DIR ?? join(config.NEARHUB_DATA_DIR, "models"));
      const registry = config.NEARHUB_STORAGE_ADDR
        ? new RegistrySource(config.NEARHUB_STORAGE_ADDR, {
            credentials: host.tls.grpcChannelCredentials(),
            // Models are loaded once for everyone: as the gateway itself, not as the first caller.
            callMetadata: () => ({ [IDENTITY_HEADER]: host.access.identity.assert() }),
          })
        : undefined;
      if (registry) host.onStop(() => registry.close());
      const source = options.source ?? (registry ? new CompositeSource([folder, registry]) : folder);
      const metrics = new InferenceMetrics(host.metrics.registry);
      const gateway = `${hostname()}:${host.grpcPort}`;
      // Events are published with acks; shutdown waits for those still in flight.
      const publishing = new Set<Promise<unknown>>();
      const publish = (p: Promise<unknown>) => {
        const tracked = p
          .catch((error: unknown) => log.warn("model event not published", { error }))
          .finally(() => publishing.delete(tracked));
        publishing.add(tracked);
      };
      const onEvent = (event: ModelEvent) => {
        const { name: model, version } = event;
        switch (event.type) {
          case "loaded":
            publish(
              host.bus.publishEvent(modelLoaded, {
                model,
                version,
                loadMicros: BigInt(Math.round(event.loadMs * 1000)),
                memoryBytes: BigInt(event.memoryBytes),
                gateway,
              }),
            );
            break;
          case "unloaded":
            publish(host.bus.publishEvent(modelUnloaded, { model, version, reason: event.reason, gateway }));
            break;
          case "failed":
            publish(
              host.bus.publishEvent(modelFailed, {
                model,
                version,
                code: codeName(event.error.code),
                message: event.error.rawMessage,
                gateway,
              }),
            );
            break;
        }
        switch (event.type) {
          case "loaded":
            log.info("model loaded", {
              model: event.name,
              version: event.version,
              load_ms: Math.round(event.loadMs),
              memory_bytes: event.memoryBytes,
            });
            break;
          case "unloaded":
            log.info("model unloaded", { model: event.name, version: event.version, reason: event.reason });
            break;
          case "failed":
            log.warn("model failed to load", {
              model: event.name,
              version: event.version,
              error: event.error.rawMessage,
            });
            break;
        }
      };
      models = new ModelManager({
        source,
        memoryBudgetBytes: config.NEARHUB_INFERENCE_MEMORY_BUDGET_MB * 1024 * 1024,
        metrics,
        logger: log,
        onEvent,
        ...(options.createBackend ? { createBackend: options.createBackend } : {}),
      });
      const manager = models;
      const announce = config.NEARHUB_INFERENCE_ADVERTISE_HOST;
      const backendRegistry =
        announce || config.NEARHUB_INFERENCE_DISCOVER
          ? await BackendRegistry.open(host.bus, config.NEARHUB_INFERENCE_HEARTBEAT_TTL_MS, log)
          : undefined;
      const self = announce ? `${announce}:${host.grpcPort}` : "";
      if (config.NEARHUB_INFERENCE_REMOTES.length > 0 || config.NEARHUB_INFERENCE_DISCOVER) {
        const pool = new RemoteBackends({
          addresses: config.NEARHUB_INFERENCE_REMOTES,
          callMetadata: host.callMetadata(),
          probeIntervalMs: config.NEARHUB_INFERENCE_PROBE_INTERVAL_MS,
          ejectAfterFailures: config.NEARHUB_INFERENCE_EJECT_AFTER_FAILURES,
          ejectionMs: config.NEARHUB_INFERENCE_EJECTION_MS,
          connectTimeoutMs: 2000,
          logger: host.logger.child({ component: "remotes" }),
          registry: host.metrics.registry,
          ...(config.NEARHUB_INFERENCE_DISCOVER && backendRegistry
            ? { discover: async () => (await backendRegistry.live()).filter((a) => a !== self) }
            : {}),
        });
        remotes = pool;
        await pool.start();
        host.onStop(() => pool.close());
      }
      host.serve(
        GRPCInferenceService,
        inferenceApi(manager, host.health, metrics, remotes, (ctx, resource) =>
          host.access.countRead(ctx, "model.infer", resource),
        ),
        // Only remote inference calls another service for the caller, and it enters the
        // principal's context itself: local inference never switches AsyncLocalStorage on.
        { principalContext: false },
      );
      // Runs before the gRPC server drains: requests in flight finish, then instances are freed.
      host.onStop(async () => {
        await manager.close();
        await Promise.allSettled([...publishing]);
      });
      if (announce && backendRegistry) {
        await backendRegistry.advertise(self);
        // Registered last, so it runs first on stop: no new traffic is routed here while draining.
        host.onStop(() => backendRegistry.stop());
      }
    },
  );
  return Object.assign(host, { models: models as unknown as ModelManager, remotes });
}
