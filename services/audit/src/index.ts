export { MIN_RETENTION_DAYS, auditEnv } from "./config.js";
export type { AuditConfig } from "./config.js";
export { RecordIndex } from "./record-index.js";
export type { RecordQuery } from "./record-index.js";
export { startAudit } from "./service.js";
