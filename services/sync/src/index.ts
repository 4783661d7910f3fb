export { syncEnv } from "./config.js";
export type { SyncConfig } from "./config.js";
export { parseInterval, parseMirrorName, parseRefs } from "./mirror-name.js";
export type { MirrorName } from "./mirror-name.js";
export { startSync } from "./service.js";
export type { SyncHandle } from "./service.js";
export { serveGitHttpBackend } from "./git-http-backend.js";
export type { HttpBackend, HttpBackendOptions } from "./git-http-backend.js";
