import { z } from "zod";
import { patternProblem } from "./permissions.js";

const patterns = z
  .string()
  .default("")
  .transform((v) =>
    v
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s.length > 0),
  )
  .superRefine((list, ctx) => {
    for (const p of list) {
      const problem = patternProblem(p);
      if (problem) ctx.addIssue({ code: "custom", message: `has a bad pattern: ${problem}` });
    }
  });

/** Access-control variables every service reads (spread into `commonEnv`). */
export const authEnv = {
  /**
   * The secret every service shares to vouch for callers to each other (32+ random bytes,
   * base64). `nearhub up` creates one in its data folder.
   */
  NEARHUB_INTERNAL_KEY: z
    .string()
    .max(1024, "must be at most 1024 characters of base64")
    .regex(
      /^[A-Za-z0-9+/]+={0,2}$/,
      "must be base64 (letters, digits, '+', '/', '=' padding), e.g. the output of `openssl rand -base64 32`",
    )
    .refine(
      (v) => Buffer.from(v, "base64").length >= 32,
      "must be at least 32 random bytes in base64, e.g. the output of `openssl rand -base64 32`",
    )
    .optional(),
  /**
   * A bootstrap admin API token (`nhp_…`) every service accepts from start-up; the audit
   * service records it in the `rbac` bucket so it can be listed and revoked. `nearhub up`
   * creates one in its data folder.
   */
  NEARHUB_ADMIN_TOKEN: z
    .string()
    .regex(
      /^nhp_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/,
      "must look like nhp_<16 hex>_<43 base64url characters> (see `nearhub token generate`)",
    )
    .optional(),
  /** Whether reads (clones, downloads, inferences) are recorded in the audit trail too. */
  NEARHUB_AUDIT_READS: z.enum(["on", "off"], { error: "must be on or off" }).default("on"),
  /** Resource patterns anyone may read without a token, comma-separated (e.g. `github.com/*`). */
  NEARHUB_ANONYMOUS_READ: patterns,
  /** OpenID Connect: JWTs from this issuer, for this audience, signed by a key of this JWKS. */
  NEARHUB_OIDC_ISSUER: z
    .url({ error: "must be the issuer URL, e.g. https://login.example.com/realms/acme" })
    .optional(),
  NEARHUB_OIDC_AUDIENCE: z.string().min(1).max(256).optional(),
  NEARHUB_OIDC_JWKS_URL: z.url({ error: "must be the JWKS URL, e.g. https://login.example.com/certs" }).optional(),
  NEARHUB_OIDC_USER_CLAIM: z
    .string()
    .regex(/^[A-Za-z0-9_.:-]{1,64}$/, "must be a claim name such as sub or preferred_username")
    .default("sub"),
  NEARHUB_OIDC_GROUPS_CLAIM: z
    .string()
    .regex(/^[A-Za-z0-9_.:-]{1,64}$/, "must be a claim name such as groups")
    .default("groups"),
} as const;

/** The parsed access-control variables. */
export type AuthConfig = z.infer<z.ZodObject<typeof authEnv>>;
