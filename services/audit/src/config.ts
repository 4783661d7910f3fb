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
};

/** The parsed configuration of the audit service. */
export type AuditConfig = z.infer<z.ZodObject<typeof auditEnv>>;
