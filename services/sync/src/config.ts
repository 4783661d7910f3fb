import { commonEnv, port } from "@nearhub/platform";
import { z } from "zod";

/** Parses `name=url,name=url` into a map, rejecting what git could not fetch from. */
const upstreams = z
  .string()
  .default("github.com=https://github.com,gitlab.com=https://gitlab.com")
  .transform((value, ctx) => {
    const map = new Map<string, string>();
    for (const part of value
      .split(",")
      .map((p) => p.trim())
      .filter(Boolean)) {
      const eq = part.indexOf("=");
      const name = part.slice(0, eq).trim();
      const url = part.slice(eq + 1).trim();
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

/** The sync service's environment. */
export const syncEnv = {
  ...commonEnv,
  NEARHUB_GRPC_PORT: port(7101),
  NEARHUB_GIT_UPSTREAMS: upstreams,
};

/** The parsed configuration of the sync service. */
export type SyncConfig = z.infer<z.ZodObject<typeof syncEnv>>;
