export { inferenceEnv } from "./config.js";
export type { InferenceConfig } from "./config.js";
export { SERVER_NAME, SERVER_VERSION } from "./inference-api.js";
export { ModelRepository } from "./model-repository.js";
export type { ModelEntry } from "./model-repository.js";
export { startInferenceGateway } from "./service.js";
