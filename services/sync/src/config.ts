import { commonEnv, port } from "@nearhub/platform";
import { z } from "zod";
import { listEntries } from "./env-list.js";
import { githubApiUrlsEnv, githubAppsEnv } from "./github-app.js";
import { hfSyncEnv } from "./hf-config.js";

/** Parses `name=url,name=url` into a map, rejecting what git could not fetch from. */
const upstreams = z
  .string()
  .default("github.com=https://github.com,gitlab.com=https://gitlab.com")
  .transform((value, ctx) => {
    const map = new Map<string, string>();
    for (const { part, eq, name, value: url } of listEntries(value)) {
      if (eq <= 0 || !/^[a-z0-9][a-z0-9.-]*$/.test(name) || !/^(https?|file):\/\/\S+$/.test(url)) {
        ctx.addIssue({
          code: "custom",
          message: `entry ${JSON.stringify(part)} must be name=url, e.g. github.com=https://github.com`,
        });
        return z.NEVER;
      }
      map.set(name, url.replace(/\/+$/, ""));
    }
    if (map.size === 0) {
      ctx.addIssue({ code: "custom", message: "must name at least one upstream, e.g. github.com=https://github.com" });
      return z.NEVER;
    }
    return map;
  });

/** Parses `name=token,name=token` (per-upstream credentials; never logged). */
const tokens = z
  .string()
  .default("")
  .transform((value, ctx) => {
    const map = new Map<string, string>();
    for (const { part, eq, name, value: token } of listEntries(value)) {
      if (eq <= 0 || eq === part.length - 1) {
        ctx.addIssue({ code: "custom", message: "entries must be upstream=token, e.g. github.com=ghp_…" });
        return z.NEVER;
      }
      map.set(name, token);
    }
    return map;
  });

const seconds = (fallback: number, min: number, max: number, example: string) =>
  z.coerce
    .number({ error: `must be whole seconds from ${min} to ${max}, e.g. ${example}` })
    .int(`must be whole seconds from ${min} to ${max}, e.g. ${example}`)
    .min(min, `must be whole seconds from ${min} to ${max}, e.g. ${example}`)
    .max(max, `must be whole seconds from ${min} to ${max}, e.g. ${example}`)
    .default(fallback);

/** The sync service's environment. */
export const syncEnv = {
  ...commonEnv,
  ...hfSyncEnv,
  NEARHUB_GRPC_PORT: port(7101),
  NEARHUB_GIT_UPSTREAMS: upstreams,
  /** Per-upstream tokens, `github.com=ghp_…`; sent to git through its environment only. */
  NEARHUB_GIT_TOKENS: tokens,
  /** Per-upstream GitHub Apps, `github.com=appId:installationId:/path/key.pem`; installation tokens are minted from them. */
  NEARHUB_GIT_GITHUB_APPS: githubAppsEnv,
  /** The GitHub API of an app's upstream, `github.com=https://api.github.com` (the default for https://github.com). */
  NEARHUB_GIT_GITHUB_API_URLS: githubApiUrlsEnv,
  /** The internal git smart-HTTP port the edge proxies clones to. */
  NEARHUB_GIT_HTTP_PORT: port(7111),
  /** Parallel syncs per replica. */
  NEARHUB_GIT_SYNC_CONCURRENCY: z.coerce.number().int().min(1).max(64).default(4),
  /** How often each replica looks for due mirrors, in milliseconds. */
  NEARHUB_GIT_SCHEDULER_TICK_MS: z.coerce.number().int().min(100).max(600_000).default(5_000),
  NEARHUB_GIT_LS_REMOTE_TIMEOUT_S: seconds(60, 1, 3600, "60"),
  NEARHUB_GIT_FETCH_TIMEOUT_S: seconds(3600, 1, 86_400, "3600"),
  NEARHUB_GIT_CLONE_TIMEOUT_S: seconds(6 * 3600, 1, 86_400, "21600"),
  /** A transfer slower than 1 KiB/s for this long is cut off. */
  NEARHUB_GIT_LOW_SPEED_TIME_S: seconds(120, 1, 3600, "120"),
  NEARHUB_GIT_BACKOFF_S: seconds(30, 1, 3600, "30"),
  NEARHUB_GIT_MAX_BACKOFF_S: seconds(3600, 1, 86_400, "3600"),
  NEARHUB_GIT_RATE_LIMIT_BACKOFF_S: seconds(300, 1, 86_400, "300"),
  NEARHUB_GIT_MAINTENANCE_INTERVAL_S: seconds(86_400, 0, 30 * 86_400, "86400"),
  /** How long old tips of deleted and force-pushed refs stay under refs/archive/. */
  NEARHUB_GIT_ARCHIVE_RETENTION_S: seconds(30 * 86_400, 0, 3650 * 86_400, "2592000"),
};

/** The parsed configuration of the sync service. */
export type SyncConfig = z.infer<z.ZodObject<typeof syncEnv>>;
