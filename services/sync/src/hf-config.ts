import { z } from "zod";

/** The sync service's settings for scheduled Hugging Face mirrors (spread into its environment). */
export const hfSyncEnv = {
  /** The hub model mirrors snapshot from. */
  NEARHUB_HF_UPSTREAM: z
    .url({ error: "must be an http(s) URL such as https://huggingface.co" })
    .default("https://huggingface.co"),
  /** The mirror's own upstream credential (gated and private repos). */
  NEARHUB_HF_TOKEN: z.string().min(1).optional(),
  /** The storage service (registry and blobs) snapshots are written to. */
  NEARHUB_STORAGE_ADDR: z
    .string()
    .regex(/^[^\s:/]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, "must be host:port, e.g. storage:7102")
    .default("127.0.0.1:7102"),
  /** How often due model mirrors are looked for. */
  NEARHUB_HF_MIRROR_TICK_MS: z.coerce.number({ error: "must be a number of milliseconds" }).int().min(50).default(5000),
  /** Deadline of one upstream metadata call. */
  NEARHUB_HF_UPSTREAM_TIMEOUT_MS: z.coerce
    .number({ error: "must be a number of milliseconds" })
    .int()
    .min(100)
    .default(30_000),
};
