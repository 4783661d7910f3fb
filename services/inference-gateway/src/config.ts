import { commonEnv, port } from "@nearhub/platform";
import { z } from "zod";

/** The inference gateway's environment. */
export const inferenceEnv = {
  ...commonEnv,
  // Triton's and KServe's default gRPC port, so existing clients need no flag.
  NEARHUB_GRPC_PORT: port(8001),
  /** A Triton-style model folder (`<name>/<version>/model.onnx`); default `$NEARHUB_DATA_DIR/models`. */
  NEARHUB_MODEL_DIR: z.string().min(1).optional(),
  /** The storage service whose registry holds model repos (`nearhub model serve`); unset = folder only. */
  NEARHUB_STORAGE_ADDR: z
    .string()
    .regex(/^[^\s/:]+:\d{1,5}$/, "must be host:port, e.g. 127.0.0.1:7102")
    .optional(),
  /** Remote KServe v2 / Triton backends, `host:port,host:port`, for models this gateway does not hold. */
  NEARHUB_INFERENCE_REMOTES: z
    .string()
    .default("")
    .transform((v) =>
      v
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean),
    )
    .refine(
      (list) => list.every((a) => /^[^\s/:]+:\d{1,5}$/.test(a)),
      "must be host:port[,host:port…], e.g. 10.0.0.5:8001",
    ),
  /** Announce this gateway as a backend in the `inference-backends` KV bucket, reachable at this host. */
  NEARHUB_INFERENCE_ADVERTISE_HOST: z
    .string()
    .regex(/^[^\s/:]+$/, "must be a host name or IPv4 address, e.g. 10.0.0.5")
    .optional(),
  /** Route to the backends announced in the `inference-backends` KV bucket as well. */
  NEARHUB_INFERENCE_DISCOVER: z
    .enum(["true", "false"], { error: "must be true or false" })
    .default("false")
    .transform((v) => v === "true"),
  /** How long an announcement lives without a heartbeat. */
  NEARHUB_INFERENCE_HEARTBEAT_TTL_MS: z.coerce.number().int().min(1000).max(3_600_000).default(15_000),
  /** How often remote backends' readiness and model lists are probed. */
  NEARHUB_INFERENCE_PROBE_INTERVAL_MS: z.coerce.number().int().min(100).max(3_600_000).default(5000),
  /** Consecutive backend failures before a remote backend is ejected, and for how long. */
  NEARHUB_INFERENCE_EJECT_AFTER_FAILURES: z.coerce.number().int().min(1).max(1000).default(3),
  NEARHUB_INFERENCE_EJECTION_MS: z.coerce.number().int().min(100).max(3_600_000).default(30_000),
  /** Estimated memory all loaded models may hold before idle ones are unloaded, least recently used first. */
  NEARHUB_INFERENCE_MEMORY_BUDGET_MB: z.coerce
    .number({ error: "must be a number of MiB, e.g. 2048" })
    .int("must be a whole number of MiB, e.g. 2048")
    .min(1, "must be at least 1 MiB")
    .default(2048),
};

/** The parsed configuration of the inference gateway. */
export type InferenceConfig = z.infer<z.ZodObject<typeof inferenceEnv>>;
