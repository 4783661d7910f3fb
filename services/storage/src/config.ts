import { commonEnv, port } from "@nearhub/platform";
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
    .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, "must be an S3 bucket name (3-63 lower-case letters, digits, '.', '-')")
    .optional(),
  NEARHUB_S3_REGION: z.string().min(1).default("us-east-1"),
  NEARHUB_S3_ACCESS_KEY: z.string().min(1).optional(),
  NEARHUB_S3_SECRET_KEY: z.string().min(1).optional(),
  NEARHUB_S3_PATH_STYLE: bool.default(true),
};

/** The parsed configuration of the storage service. */
export type StorageConfig = z.infer<z.ZodObject<typeof storageEnv>>;
