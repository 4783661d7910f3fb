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
  lastAttemptAt?: string;
  lastError?: string;
  pausedReason?: string;
  lagSeconds?: string;
  sizeBytes?: string;
  refCount?: number;
  nextSyncAt?: string;
  consecutiveFailures?: number;
  lastDurationMs?: number;
}

const stateOf = (m: MirrorJson) => (m.state ?? "MIRROR_STATE_PENDING").replace("MIRROR_STATE_", "").toLowerCase();

/** `1.2 MiB`, `340 KiB`… */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit] ?? "B"}`;
}

/** `45s`, `12m`, `3h`, `2d`. */
export function formatAge(seconds: number): string {
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)}m`;
  if (seconds < 172_800) return `${Math.round(seconds / 3600)}h`;
  return `${Math.round(seconds / 86_400)}d`;
}

function ago(iso: string | undefined): string {
  if (!iso) return "never";
  return `${formatAge(Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000)))} ago`;
}

function mirrorLine(m: MirrorJson): string {
  const lag = m.lastSuccessAt ? formatAge(Number(m.lagSeconds ?? 0)) : "-";
  const size = m.sizeBytes ? formatBytes(Number(m.sizeBytes)) : "-";
  const problem = m.pausedReason ? `  paused: ${m.pausedReason}` : m.lastError ? `  last error: ${m.lastError}` : "";
  return `${m.name.padEnd(44)} ${stateOf(m).padEnd(8)} synced ${ago(m.lastSuccessAt).padEnd(10)} lag ${lag.padEnd(5)} ${size.padStart(10)}  every ${m.intervalSeconds ?? 300}s${problem}`;
}

function mirrorDetails(m: MirrorJson): string {
  const rows: [string, string][] = [
    ["name", m.name],
    ["state", stateOf(m)],
    ["refs", `${m.refs ?? "heads,tags"} (${m.refCount ?? 0} served)`],
    ["interval", `${m.intervalSeconds ?? 300}s`],
    ["lfs", m.lfs ? "yes" : "no"],
    ["last success", m.lastSuccessAt ? `${m.lastSuccessAt} (${ago(m.lastSuccessAt)})` : "never"],
    ["last attempt", m.lastAttemptAt ? `${m.lastAttemptAt} (${ago(m.lastAttemptAt)})` : "never"],
    ["lag", m.lastSuccessAt ? formatAge(Number(m.lagSeconds ?? 0)) : "-"],
    ["size", m.sizeBytes ? formatBytes(Number(m.sizeBytes)) : "-"],
    ["last duration", m.lastDurationMs ? `${m.lastDurationMs} ms` : "-"],
    ["next sync", m.nextSyncAt ?? "-"],
    ["failures in a row", String(m.consecutiveFailures ?? 0)],
    ["last error", m.lastError || "-"],
  ];
  if (m.pausedReason) rows.push(["paused", m.pausedReason]);
  return rows.map(([k, v]) => `${k.padEnd(18)} ${v}`).join("\n");
}

const path = (name: string) => `/api/mirrors/${name.split("/").map(encodeURIComponent).join("/")}`;

/** `nearhub mirror add|list|show|sync|pause|resume|remove`: git mirrors, through the edge. */
export const mirrorCommand: Command = {
  name: "mirror",
  usage: [
    "nearhub mirror add <upstream/owner/repo> [--interval 5m] [--refs heads,tags|all] [--lfs]",
    "nearhub mirror list [--prefix P] [--json]",
    "nearhub mirror show <name> [--json]",
    "nearhub mirror sync <name> [--wait] [--timeout 10m]",
    "nearhub mirror pause <name> [--reason TEXT]",
    "nearhub mirror resume <name>",
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
      wait: { type: "boolean" },
      timeout: { type: "string" },
      reason: { type: "string" },
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
            : [
                `${"NAME".padEnd(44)} ${"STATE".padEnd(8)} ${"LAST SUCCESS".padEnd(17)} ${"LAG".padEnd(9)} ${"SIZE".padStart(10)}`,
                ...result.mirrors.map(mirrorLine),
              ].join("\n"),
        );
        return 0;
      }
      case "show": {
        const result = (await callApi(base, "GET", path(needName()))) as { mirror: MirrorJson };
        print(values.json ?? false, result, () => mirrorDetails(result.mirror));
        return 0;
      }
      case "sync": {
        const timeout = values.timeout ? parseDuration(values.timeout) : 600;
        if (timeout < 1 || timeout > 3600) throw new UsageError("--timeout must be from 1s to 1h");
        if (!values.wait) {
          const queued = (await callApi(base, "POST", `${path(needName())}/sync`)) as { mirror: MirrorJson };
          print(values.json ?? false, queued, () => `sync of ${needName()} queued`);
          return 0;
        }
        // The edge answers once a sync that started after the request has ended; show time passing.
        const started = Date.now();
        const ticker = values.json
          ? undefined
          : setInterval(
              () => process.stderr.write(`\rsyncing ${needName()}… ${Math.round((Date.now() - started) / 1000)}s`),
              1000,
            );
        let result: { mirror: MirrorJson; finished: boolean };
        try {
          result = (await callApi(
            base,
            "POST",
            `${path(needName())}/sync?wait=1&timeout=${timeout}`,
            undefined,
            (timeout + 15) * 1000,
          )) as typeof result;
        } finally {
          if (ticker) {
            clearInterval(ticker);
            if (Date.now() - started >= 1000) process.stderr.write("\n");
          }
        }
        print(values.json ?? false, result, () => mirrorLine(result.mirror));
        return stateOf(result.mirror) === "failed" || stateOf(result.mirror) === "paused" ? 1 : 0;
      }
      case "pause": {
        const result = (await callApi(base, "POST", `${path(needName())}/pause`, {
          reason: values.reason ?? "",
        })) as { mirror: MirrorJson };
        print(values.json ?? false, result, () => `paused: ${mirrorLine(result.mirror)}`);
        return 0;
      }
      case "resume": {
        const result = (await callApi(base, "POST", `${path(needName())}/resume`)) as { mirror: MirrorJson };
        print(values.json ?? false, result, () => `resumed: ${mirrorLine(result.mirror)}`);
        return 0;
      }
      case "remove": {
        await callApi(base, "DELETE", path(needName()));
        process.stdout.write(`removed ${needName()}\n`);
        return 0;
      }
      default:
        throw new UsageError(
          `unknown mirror command ${JSON.stringify(sub ?? "")}; use add, list, show, sync, pause, resume or remove`,
        );
    }
  },
};
