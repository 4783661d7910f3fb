import { Code, NearhubError, ServingStatus, type HealthReporter, type ServiceImpl } from "@nearhub/platform";
import { type GRPCInferenceService } from "@nearhub/proto/inference";
import type { ModelRepository } from "./model-repository.js";

/** The server name and version ServerMetadata reports. */
export const SERVER_NAME = "nearhub";
export const SERVER_VERSION = "0.1.0";

/**
 * inference.GRPCInferenceService (KServe v2 / Triton wire protocol). Liveness, readiness,
 * server metadata and the repository index are answered from the gateway's state;
 * model-addressed calls resolve the model in the repository first.
 */
export function inferenceApi(
  models: ModelRepository,
  health: HealthReporter,
): ServiceImpl<typeof GRPCInferenceService> {
  const notServable = (name: string): never => {
    models.require(name);
    throw new NearhubError(Code.Unavailable, `model ${name} is not loaded`);
  };
  return {
    async serverLive() {
      return { live: true };
    },
    async serverReady() {
      return { ready: health.get() === ServingStatus.SERVING };
    },
    async modelReady(request) {
      const model = models.require(request.name, request.version);
      return { ready: model.state === "READY" };
    },
    async serverMetadata() {
      return { name: SERVER_NAME, version: SERVER_VERSION, extensions: ["model_repository", "statistics"] };
    },
    async modelMetadata(request) {
      const model = models.require(request.name, request.version);
      return { name: model.name, versions: [model.version], platform: "onnxruntime_onnx", inputs: [], outputs: [] };
    },
    async modelInfer(request) {
      return notServable(request.modelName);
    },
    async *modelStreamInfer(requests) {
      for await (const request of requests) {
        try {
          notServable(request.modelName);
        } catch (error) {
          yield { errorMessage: NearhubError.from(error).rawMessage };
        }
      }
    },
    async modelStatistics(request) {
      const selected = request.name ? [models.require(request.name, request.version)] : models.list();
      return { modelStats: selected.map((m) => ({ name: m.name, version: m.version })) };
    },
    async repositoryIndex(request) {
      return { models: models.list(request.ready) };
    },
    async repositoryModelLoad(request) {
      return notServable(request.modelName);
    },
    async repositoryModelUnload(request) {
      models.require(request.modelName);
      return {};
    },
  };
}
