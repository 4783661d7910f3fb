export { edgeEnv } from "./config.js";
export type { EdgeConfig } from "./config.js";
export { startEdge } from "./service.js";
export type { Edge } from "./service.js";
export { sendFile } from "./hf-cache.js";
