import { ConfigError, commonEnv, port } from "@nearhub/platform";
import { z } from "zod";

const bool = z
  .enum(["true", "false", "1", "0"], { error: "must be true or false" })
  .transform((v) => v === "true" || v === "1");

/** The storage service's environment. */
export const storageEnv = {
  ...commonEnv,
  NEARHUB_GRPC_PORT: port(7102),
  NEARHUB_BLOB_BACKEND: z.enum(["fs", "s3"], { error: "must be fs (a local folder) or s3 (S3/MinIO)" }).default("fs"),
  /** Folder of the fs backend; `<NEARHUB_DATA_DIR>/blobs` when unset. */
  NEARHUB_BLOB_DIR: z.string().min(1).optional(),
  NEARHUB_S3_ENDPOINT: z.url({ error: "must be an http(s) URL such as http://minio:9000" }).optional(),
  NEARHUB_S3_BUCKET: z
    .string()
    .regex(
      /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/,
      "must be an S3 bucket name (3-63 lower-case letters, digits, '.', '-')",
    )
    .optional(),
  NEARHUB_S3_REGION: z.string().min(1).default("us-east-1"),
  NEARHUB_S3_ACCESS_KEY: z.string().min(1).optional(),
  NEARHUB_S3_SECRET_KEY: z.string().min(1).optional(),
  NEARHUB_S3_PATH_STYLE: bool.default(true),
  /** Idle time after which a resumable upload session and its parts are removed. */
  NEARHUB_UPLOAD_SESSION_TTL_MS: z.coerce
    .number({ error: "must be a number of milliseconds" })
    .int()
    .min(1000, "must be at least 1000 ms")
    .default(24 * 60 * 60 * 1000),
  /** How often expired upload sessions are looked for. */
  NEARHUB_UPLOAD_SWEEP_INTERVAL_MS: z.coerce
    .number({ error: "must be a number of milliseconds" })
    .int()
    .min(100, "must be at least 100 ms")
    .default(10 * 60 * 1000),
  /** How often unreferenced blobs are collected; 0 turns garbage collection off. */
  NEARHUB_GC_INTERVAL_MS: z.coerce
    .number({ error: "must be a number of milliseconds" })
    .int()
    .min(0, "must be 0 (off) or more")
    .default(6 * 60 * 60 * 1000),
  /** A blob younger than this is never collected (its revision may not be published yet). */
  NEARHUB_GC_GRACE_MS: z.coerce
    .number({ error: "must be a number of milliseconds" })
    .int()
    .min(0, "must be 0 or more")
    .default(24 * 60 * 60 * 1000),
  /** How often a sample of blobs is re-hashed; 0 turns scrubbing off. */
  NEARHUB_SCRUB_INTERVAL_MS: z.coerce
    .number({ error: "must be a number of milliseconds" })
    .int()
    .min(0, "must be 0 (off) or more")
    .default(60 * 60 * 1000),
  /** Blobs re-hashed per scrub run. */
  NEARHUB_SCRUB_SAMPLE: z.coerce.number({ error: "must be a number" }).int().min(1, "must be at least 1").default(16),
};

/** The parsed configuration of the storage service. */
export type StorageConfig = z.infer<z.ZodObject<typeof storageEnv>>;

/** Where and how the s3 backend reaches its bucket. */
export interface S3Settings {
  /** `http(s)://host[:port]`, as configured; named in every error message. */
  endpoint: string;
  bucket: string;
  region: string;
  accessKey: string;
  secretKey: string;
  /** `host/bucket/key` (MinIO, most self-hosted servers) rather than `bucket.host/key`. */
  pathStyle: boolean;
}

const S3_REQUIRED = [
  "NEARHUB_S3_ENDPOINT",
  "NEARHUB_S3_BUCKET",
  "NEARHUB_S3_ACCESS_KEY",
  "NEARHUB_S3_SECRET_KEY",
] as const;

/**
 * The settings of the s3 backend. parseEnv checks each variable on its own (it takes a shape,
 * so it cannot hold a rule across variables); this adds the rule that NEARHUB_BLOB_BACKEND=s3
 * needs all four, and throws one ConfigError naming every one that is missing or unusable.
 */
export function s3Settings(config: StorageConfig): S3Settings {
  const problems = S3_REQUIRED.filter((name) => config[name] === undefined).map(
    (name) => `${name} is required when NEARHUB_BLOB_BACKEND=s3 (unset)`,
  );
  if (config.NEARHUB_S3_ENDPOINT !== undefined) {
    const url = new URL(config.NEARHUB_S3_ENDPOINT);
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      problems.push(
        `NEARHUB_S3_ENDPOINT must be an http:// or https:// URL (got ${JSON.stringify(config.NEARHUB_S3_ENDPOINT)})`,
      );
    } else if (url.username !== "" || url.password !== "") {
      // Not echoed: the value holds a secret.
      problems.push(
        "NEARHUB_S3_ENDPOINT must not hold credentials; put them in NEARHUB_S3_ACCESS_KEY and NEARHUB_S3_SECRET_KEY",
      );
    } else if (url.pathname !== "/" || url.search !== "") {
      problems.push(
        `NEARHUB_S3_ENDPOINT must be scheme, host and port only, such as http://minio:9000; put the bucket in NEARHUB_S3_BUCKET (got ${JSON.stringify(config.NEARHUB_S3_ENDPOINT)})`,
      );
    }
  }
  const {
    NEARHUB_S3_ENDPOINT: endpoint,
    NEARHUB_S3_BUCKET: bucket,
    NEARHUB_S3_ACCESS_KEY: accessKey,
    NEARHUB_S3_SECRET_KEY: secretKey,
  } = config;
  if (problems.length > 0 || !endpoint || !bucket || !accessKey || !secretKey)
    throw new ConfigError("storage", problems);
  return {
    endpoint: endpoint.replace(/\/$/, ""),
    bucket,
    region: config.NEARHUB_S3_REGION,
    accessKey,
    secretKey,
    pathStyle: config.NEARHUB_S3_PATH_STYLE,
  };
}
