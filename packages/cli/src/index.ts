export { parseDuration } from "./duration.js";
export { ApiError, callApi } from "./http-api.js";
export { up } from "./up.js";
export type { UpOptions } from "./up.js";
