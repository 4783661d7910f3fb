import { parse, print, UsageError, type Command } from "../command.js";
import { parseDuration } from "../duration.js";
import { callApi } from "../http-api.js";

interface MirrorJson {
  name: string;
  state?: string;
  intervalSeconds?: number;
  refs?: string;
  lfs?: boolean;
  lastSuccessAt?: string;
  lastError?: string;
}

function mirrorLine(m: MirrorJson): string {
  const state = (m.state ?? "MIRROR_STATE_PENDING").replace("MIRROR_STATE_", "").toLowerCase();
  return `${m.name.padEnd(48)} ${state.padEnd(9)} every ${m.intervalSeconds ?? 300}s  refs ${m.refs ?? "heads,tags"}${m.lfs ? "  lfs" : ""}${m.lastError ? `  last error: ${m.lastError}` : ""}`;
}

/** `nearhub mirror add|list|show|remove`: git mirror definitions, through the edge. */
export const mirrorCommand: Command = {
  name: "mirror",
  usage: [
    "nearhub mirror add <upstream/owner/repo> [--interval 5m] [--refs heads,tags|all] [--lfs]",
    "nearhub mirror list [--prefix P] [--json]",
    "nearhub mirror show <name> [--json]",
    "nearhub mirror remove <name>",
  ],
  async run(rest, ctx) {
    const [sub, ...args] = rest;
    const { values, positionals } = parse(args, {
      url: { type: "string" },
      interval: { type: "string" },
      refs: { type: "string" },
      lfs: { type: "boolean" },
      prefix: { type: "string" },
      json: { type: "boolean" },
    });
    const base = values.url ?? ctx.defaultUrl;
    const name = positionals[0];
    const needName = () => {
      if (!name) throw new UsageError(`mirror ${sub ?? ""} needs a name such as github.com/owner/repo`);
      return name;
    };
    switch (sub) {
      case "add": {
        const interval = values.interval ? parseDuration(values.interval) : 0;
        const result = (await callApi(base, "POST", "/api/mirrors", {
          name: needName(),
          interval_seconds: interval,
          ...(values.refs ? { refs: values.refs } : {}),
          lfs: values.lfs ?? false,
        })) as { mirror: MirrorJson; created: boolean };
        print(
          values.json ?? false,
          result,
          () => `${result.created ? "added" : "already mirrored"}: ${mirrorLine(result.mirror)}`,
        );
        return 0;
      }
      case "list": {
        const query = values.prefix ? `?prefix=${encodeURIComponent(values.prefix)}` : "";
        const result = (await callApi(base, "GET", `/api/mirrors${query}`)) as { mirrors: MirrorJson[] };
        print(values.json ?? false, result, () =>
          result.mirrors.length === 0
            ? "no mirrors yet; add one with: nearhub mirror add github.com/owner/repo"
            : result.mirrors.map(mirrorLine).join("\n"),
        );
        return 0;
      }
      case "show": {
        const result = (await callApi(base, "GET", `/api/mirrors/${needName()}`)) as { mirror: MirrorJson };
        print(values.json ?? false, result, () => mirrorLine(result.mirror));
        return 0;
      }
      case "remove": {
        await callApi(base, "DELETE", `/api/mirrors/${needName()}`);
        process.stdout.write(`removed ${needName()}\n`);
        return 0;
      }
      default:
        throw new UsageError(`unknown mirror command ${JSON.stringify(sub ?? "")}; use add, list, show or remove`);
    }
  },
};
