import { commonEnv, port } from "@nearhub/platform";
import { z } from "zod";

/** Compliance floor: the trail must be kept at least this long. */
export const MIN_RETENTION_DAYS = 180;

/** The audit service's environment. */
export const auditEnv = {
  ...commonEnv,
  NEARHUB_GRPC_PORT: port(7104),
  NEARHUB_AUDIT_RETENTION_DAYS: z.coerce
    .number({ error: "must be a number of days, e.g. 400" })
    .int("must be a whole number of days")
    .min(MIN_RETENTION_DAYS, `must be at least ${MIN_RETENTION_DAYS} days (the compliance minimum)`)
    .max(36_500, "must be at most 36500 days")
    .default(400),
  /** PEM Ed25519 private key for checkpoints; created on first start when absent. */
  NEARHUB_AUDIT_SIGNING_KEY: z.string().min(1, "must be a file path").optional(),
  NEARHUB_AUDIT_CHECKPOINT_RECORDS: z.coerce
    .number({ error: "must be a number of records, e.g. 1000" })
    .int()
    .min(1, "must be at least 1")
    .max(1_000_000)
    .default(1000),
  NEARHUB_AUDIT_CHECKPOINT_SECONDS: z.coerce
    .number({ error: "must be a number of seconds, e.g. 300" })
    .int()
    .min(1, "must be at least 1")
    .max(86_400)
    .default(300),
};

/** The parsed configuration of the audit service. */
export type AuditConfig = z.infer<z.ZodObject<typeof auditEnv>>;
