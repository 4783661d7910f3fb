import { z } from "zod";

const ms = (fallback: number, min: number) =>
  z.coerce
    .number({ error: "must be a number of milliseconds" })
    .int()
    .min(min, `must be at least ${min} ms`)
    .default(fallback);

/** The edge's Hugging Face mirror settings (spread into the edge's environment schema). */
export const hfEnv = {
  /** The hub pulled through on a miss; `off` serves only what is already stored. */
  NEARHUB_HF_UPSTREAM: z
    .union([z.literal("off"), z.url({ error: "must be an http(s) URL such as https://huggingface.co, or off" })])
    .default("https://huggingface.co"),
  /** The mirror's own upstream credential (gated and private repos); never the user's token. */
  NEARHUB_HF_TOKEN: z.string().min(1).optional(),
  /** How long a branch name (`main`) is trusted before it is re-validated upstream. */
  NEARHUB_HF_REF_TTL_MS: ms(10 * 60 * 1000, 0),
  /** Deadline of one upstream metadata call; past it the last known commit is served. */
  NEARHUB_HF_UPSTREAM_TIMEOUT_MS: ms(10_000, 100),
  /** The edge's hot-file cache folder; `<NEARHUB_DATA_DIR>/hf-cache` when unset. */
  NEARHUB_HF_CACHE_DIR: z.string().min(1).optional(),
  /** The hot cache's size bound in bytes (least recently used files are evicted past it). */
  NEARHUB_HF_CACHE_MAX_BYTES: z.coerce
    .number({ error: "must be a number of bytes" })
    .int()
    .min(1024 * 1024, "must be at least 1 MiB")
    .default(20 * 1024 ** 3),
};
