export { BACKENDS_BUCKET, BackendRegistry } from "./backend-registry.js";
export { BatchScheduler } from "./batch-scheduler.js";
export type { ExecutionReport, RequestTiming, SchedulerOptions, SubmitRequest } from "./batch-scheduler.js";
export { inferenceEnv } from "./config.js";
export type { InferenceConfig } from "./config.js";
export { SERVER_NAME, SERVER_VERSION } from "./inference-api.js";
export { modelConfigSchema, parseModelConfig } from "./model-config.js";
export type { ModelConfig, ResolvedModelConfig, TensorConfig } from "./model-config.js";
export { ModelManager } from "./model-manager.js";
export type { BackendFactory, LoadedModel, ModelEvent, ModelManagerOptions, ModelState } from "./model-manager.js";
export { LocalFolderSource, checkModelName, checkModelVersion } from "./model-source.js";
export type { FetchedModel, ModelListing, ModelSource } from "./model-source.js";
export { InferenceMetrics } from "./model-statistics.js";
export { OnnxBackend } from "./onnx-backend.js";
export type { ExecutionBackend, GraphSignature, RunOutcome } from "./onnx-backend.js";
export {
  addModel,
  encodeOnnxModel,
  identityModel,
  mlpModel,
  seededFloats,
  stringIdentityModel,
} from "./onnx-model-builder.js";
export type { OnnxGraph, OnnxNode, OnnxValue } from "./onnx-model-builder.js";
export type { GraphValue, RunResult, TensorData, WorkerTensor } from "./onnx-protocol.js";
export { CompositeSource, MODEL_CONFIG_FILE, RegistrySource, modelNameOf, repoIdOf } from "./registry-source.js";
export type { RegistrySourceOptions } from "./registry-source.js";
export { LAZY_LOAD_REASON, RemoteBackends } from "./remote-backends.js";
export type { RemoteBackendsOptions } from "./remote-backends.js";
export { startInferenceGateway } from "./service.js";
export type { InferenceGateway, InferenceGatewayOptions } from "./service.js";
export { DATATYPES, decodeInputs, encodeOutput, encodeRawBytes } from "./tensor-codec.js";
export type { Datatype } from "./tensor-codec.js";
