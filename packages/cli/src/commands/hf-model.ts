import { parse, print, UsageError, type Command } from "../command.js";
import { parseDuration } from "../duration.js";
import { callApi } from "../http-api.js";
import { formatAge, formatBytes } from "./mirror.js";

interface ModelMirrorJson {
  kind: string;
  id: string;
  revision: string;
  include: string[];
  exclude: string[];
  intervalSeconds: number;
  mirroredCommit?: string;
  upstreamCommit?: string;
  drift: boolean;
  syncing: boolean;
  fileCount: number;
  totalBytes: number;
  lastSuccessAt?: string;
  lastAttemptAt?: string;
  nextSyncAt?: string;
  lastError?: string;
  consecutiveFailures: number;
}

const KINDS = ["model", "dataset", "space"];
const ago = (iso?: string) =>
  iso ? `${formatAge(Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000)))} ago` : "never";
const short = (sha?: string) => (sha ? sha.slice(0, 10) : "-");

/** The state a person reads: syncing, drift (upstream moved past the mirror), failing, ok, pending. */
function stateOf(m: ModelMirrorJson): string {
  if (m.syncing) return "syncing";
  if (m.drift) return "drift";
  if (m.lastError) return "failing";
  return m.mirroredCommit ? "ok" : "pending";
}

function line(m: ModelMirrorJson): string {
  const name = `${m.kind === "model" ? "" : `${m.kind}s/`}${m.id}@${m.revision}`;
  const drift = m.drift ? `  upstream at ${short(m.upstreamCommit)}` : "";
  const error = m.lastError ? `  last error: ${m.lastError}` : "";
  return `${name.padEnd(48)} ${stateOf(m).padEnd(8)} ${short(m.mirroredCommit).padEnd(11)} synced ${ago(m.lastSuccessAt).padEnd(10)} ${String(m.fileCount).padStart(6)} files ${formatBytes(m.totalBytes).padStart(10)}  every ${formatAge(m.intervalSeconds)}${drift}${error}`;
}

function details(m: ModelMirrorJson): string {
  const rows: [string, string][] = [
    ["repo", `${m.kind} ${m.id}`],
    ["revision", m.revision],
    ["state", stateOf(m)],
    ["mirrored commit", m.mirroredCommit ?? "-"],
    ["upstream commit", m.upstreamCommit ?? "-"],
    ["include", m.include.length ? m.include.join(", ") : "all LFS files"],
    ["exclude", m.exclude.length ? m.exclude.join(", ") : "-"],
    ["interval", formatAge(m.intervalSeconds)],
    ["files", `${m.fileCount} (${formatBytes(m.totalBytes)})`],
    ["last success", m.lastSuccessAt ? `${m.lastSuccessAt} (${ago(m.lastSuccessAt)})` : "never"],
    ["last attempt", m.lastAttemptAt ?? "never"],
    ["next check", m.nextSyncAt ?? "-"],
    ["failures in a row", String(m.consecutiveFailures)],
    ["last error", m.lastError ?? "-"],
  ];
  return rows.map(([k, v]) => `${k.padEnd(18)} ${v}`).join("\n");
}

const patterns = (value?: string) =>
  value
    ? value
        .split(",")
        .map((p) => p.trim())
        .filter(Boolean)
    : undefined;

/**
 * `nearhub model add|list|show|sync|remove`: scheduled mirrors of Hugging Face repos, through
 * the edge. (`nearhub model serve`, for inference, is a separate command file.)
 */
export const hfModelCommand: Command = {
  name: "model",
  usage: [
    "nearhub model add <owner/name> [--kind model|dataset|space] [--revision main] [--include GLOB,…] [--exclude GLOB,…] [--interval 6h]",
    "nearhub model list [--json]",
    "nearhub model show <owner/name> [--kind K] [--json]",
    "nearhub model sync <owner/name> [--kind K] [--json]",
    "nearhub model remove <owner/name> [--kind K]",
  ],
  async run(rest, ctx) {
    const [sub, ...args] = rest;
    const { values, positionals } = parse(args, {
      url: { type: "string" },
      kind: { type: "string" },
      revision: { type: "string" },
      include: { type: "string" },
      exclude: { type: "string" },
      interval: { type: "string" },
      json: { type: "boolean" },
    });
    const base = values.url ?? ctx.defaultUrl;
    const kind = values.kind ?? "model";
    if (!KINDS.includes(kind)) throw new UsageError("--kind must be model, dataset or space");
    const repo = () => {
      const id = positionals[0];
      if (!id) throw new UsageError(`model ${sub ?? ""} needs a repo id such as openai-community/gpt2`);
      return id;
    };
    const path = () => `/api/model-mirrors/${kind}/${repo().split("/").map(encodeURIComponent).join("/")}`;
    const json = values.json ?? false;
    switch (sub) {
      case "add": {
        const intervalSeconds = values.interval ? parseDuration(values.interval) : 0;
        const result = (await callApi(base, "POST", "/api/model-mirrors", {
          repo: repo(),
          kind,
          ...(values.revision ? { revision: values.revision } : {}),
          ...(values.include ? { include: patterns(values.include) } : {}),
          ...(values.exclude ? { exclude: patterns(values.exclude) } : {}),
          intervalSeconds,
        })) as { created: boolean; mirror: ModelMirrorJson };
        print(
          json,
          result,
          () =>
            `${result.created ? "added" : "updated"}: ${line(result.mirror)}\nthe first snapshot starts now; follow it with: nearhub model show ${repo()}`,
        );
        return 0;
      }
      case "list": {
        const result = (await callApi(base, "GET", "/api/model-mirrors")) as { mirrors: ModelMirrorJson[] };
        print(json, result, () =>
          result.mirrors.length === 0
            ? "no model mirrors yet; add one with: nearhub model add owner/name"
            : [
                `${"REPO@REVISION".padEnd(48)} ${"STATE".padEnd(8)} ${"COMMIT".padEnd(11)} ${"LAST SUCCESS".padEnd(17)} ${"FILES".padStart(12)} ${"SIZE".padStart(10)}`,
                ...result.mirrors.map(line),
              ].join("\n"),
        );
        return result.mirrors.some((m) => m.drift) ? 3 : 0;
      }
      case "show": {
        const result = (await callApi(base, "GET", path())) as ModelMirrorJson;
        print(json, result, () => details(result));
        return 0;
      }
      case "sync": {
        const started = Date.now();
        const ticker = json
          ? undefined
          : setInterval(
              () => process.stderr.write(`\rsnapshotting ${repo()}… ${Math.round((Date.now() - started) / 1000)}s`),
              1000,
            );
        let result: ModelMirrorJson;
        try {
          result = (await callApi(base, "POST", `${path()}/sync`, undefined, 3600_000)) as ModelMirrorJson;
        } finally {
          if (ticker) {
            clearInterval(ticker);
            if (Date.now() - started >= 1000) process.stderr.write("\n");
          }
        }
        print(json, result, () => line(result));
        return result.lastError ? 1 : 0;
      }
      case "remove": {
        await callApi(base, "DELETE", path());
        process.stdout.write(`removed the mirror of ${kind} ${repo()} (what was mirrored stays served)\n`);
        return 0;
      }
      default:
        throw new UsageError(
          `unknown model command ${JSON.stringify(sub ?? "")}; use serve, add, list, show, sync or remove`,
        );
    }
  },
};
