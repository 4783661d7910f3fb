import { ServiceHost, auditStream, eventsStream, type Logger } from "@nearhub/platform";
import { GRPCInferenceService } from "@nearhub/proto/inference";
import type { InferenceConfig } from "./config.js";
import { inferenceApi } from "./inference-api.js";
import { ModelRepository } from "./model-repository.js";

/** Starts the inference gateway on the KServe v2 gRPC protocol. */
export async function startInferenceGateway(
  config: InferenceConfig,
  options: { logger?: Logger } = {},
): Promise<ServiceHost> {
  const models = new ModelRepository();
  return ServiceHost.start(
    {
      name: "inference-gateway",
      common: config,
      grpcPort: config.NEARHUB_GRPC_PORT,
      maxMessageBytes: 64 * 1024 * 1024,
      ...(options.logger ? { logger: options.logger } : {}),
      provisioning: (names) => ({ streams: [eventsStream(names), auditStream(names)] }),
    },
    async (host) => {
      host.serve(GRPCInferenceService, inferenceApi(models, host.health));
    },
  );
}
