export { GENESIS_HASH, canonicalEvent, checkpointPayload, keyIdOf, recordHash, verifyTrail } from "./chain.js";
export type { TrailEntry, Verdict } from "./chain.js";
export { MIN_RETENTION_DAYS, auditEnv } from "./config.js";
export type { AuditConfig } from "./config.js";
export { RecordIndex } from "./record-index.js";
export type { RecordQuery } from "./record-index.js";
export { startAudit } from "./service.js";
export { loadSigningKey } from "./signing-key.js";
export type { SigningKey } from "./signing-key.js";
