import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  Code,
  NearhubError,
  createClient,
  sendJson,
  type ServiceMetrics,
  type TransportSecurity,
} from "@nearhub/platform";
import { ModelMirrorService, type ModelMirror } from "@nearhub/proto/model-mirror";
import { RepoKind } from "@nearhub/proto/registry";
import type { EdgeConfig } from "./config.js";
import { HfError, checkRepoId as checkHfRepoId } from "./hf-names.js";
import { readJson, type Route } from "./router.js";

const KINDS: Record<string, RepoKind> = { model: RepoKind.MODEL, dataset: RepoKind.DATASET, space: RepoKind.SPACE };
const KIND_NAME: Record<number, string> = {
  [RepoKind.MODEL]: "model",
  [RepoKind.DATASET]: "dataset",
  [RepoKind.SPACE]: "space",
};

/** The HF id check, answered as INVALID_ARGUMENT (400) by the router. */
function checkRepoId(id: string): string {
  try {
    return checkHfRepoId(id);
  } catch (error) {
    if (error instanceof HfError) throw new NearhubError(Code.InvalidArgument, error.message);
    throw error;
  }
}

const iso = (t: Timestamp | undefined) => (t ? new Date(timestampMs(t)).toISOString() : undefined);

/** A model mirror as the CLI and scripts read it; `drift` when upstream moved past what is mirrored. */
export function mirrorJson(m: ModelMirror): Record<string, unknown> {
  return {
    kind: KIND_NAME[m.repo?.kind ?? 0] ?? "model",
    id: m.repo?.id ?? "",
    revision: m.revision,
    include: m.include,
    exclude: m.exclude,
    intervalSeconds: m.intervalSeconds,
    mirroredCommit: m.mirroredCommit || undefined,
    upstreamCommit: m.upstreamCommit || undefined,
    drift: m.upstreamCommit !== "" && m.upstreamCommit !== m.mirroredCommit,
    syncing: m.syncing,
    fileCount: Number(m.fileCount),
    totalBytes: Number(m.totalBytes),
    createdAt: iso(m.createdAt),
    lastAttemptAt: iso(m.lastAttemptAt),
    lastSuccessAt: iso(m.lastSuccessAt),
    nextSyncAt: iso(m.nextSyncAt),
    lastError: m.lastError || undefined,
    consecutiveFailures: m.consecutiveFailures,
  };
}

function kindOf(value: unknown): RepoKind {
  const kind = KINDS[value === undefined ? "model" : typeof value === "string" ? value : ""];
  if (!kind) throw new NearhubError(Code.InvalidArgument, "kind must be model, dataset or space");
  return kind;
}

function stringList(value: unknown, what: string): string[] {
  if (value === undefined) return [];
  const list = typeof value === "string" ? [value] : value;
  if (!Array.isArray(list) || list.some((x) => typeof x !== "string")) {
    throw new NearhubError(Code.InvalidArgument, `${what} must be a list of glob patterns such as "*.safetensors"`);
  }
  return list as string[];
}

/**
 * `/api/model-mirrors`: scheduled Hugging Face mirrors (`nearhub model add|list|show|remove|sync`),
 * kept by the sync service.
 */
export function modelMirrorRoutes(deps: {
  config: EdgeConfig;
  metrics: ServiceMetrics;
  onStop: (fn: () => void) => void;
  /** TLS of the calls to sync. */
  tls?: TransportSecurity;
  /** The identity of the request's caller, for sync to check. */
  callMetadata?: () => Record<string, string>;
}): Route[] {
  const sync = createClient(ModelMirrorService, deps.config.NEARHUB_SYNC_ADDR, {
    ...(deps.tls ? { credentials: deps.tls.grpcChannelCredentials() } : {}),
    metrics: deps.metrics,
    ...(deps.callMetadata ? { callMetadata: deps.callMetadata } : {}),
  });
  deps.onStop(() => sync.$close());
  const ONE = /^\/api\/model-mirrors\/(?<kind>model|dataset|space)\/(?<id>[^/]+(?:\/[^/]+)?)$/;
  const SYNC = /^\/api\/model-mirrors\/(?<kind>model|dataset|space)\/(?<id>[^/]+(?:\/[^/]+)?)\/sync$/;
  const repoOf = (params: Record<string, string>) => ({
    kind: kindOf(params["kind"]),
    id: checkRepoId(params["id"] ?? ""),
  });
  return [
    {
      method: "GET",
      pattern: /^\/api\/model-mirrors$/,
      template: "/api/model-mirrors",
      handler: async ({ res }) => {
        const { mirrors } = await sync.listModelMirrors({});
        sendJson(res, 200, { mirrors: mirrors.map(mirrorJson) });
      },
    },
    {
      method: "POST",
      pattern: /^\/api\/model-mirrors$/,
      template: "/api/model-mirrors",
      handler: async ({ req, res }) => {
        const body = (await readJson(req)) as Record<string, unknown> | null;
        if (!body || typeof body !== "object")
          throw new NearhubError(
            Code.InvalidArgument,
            "send a JSON object: {repo, kind?, revision?, include?, exclude?, intervalSeconds?}",
          );
        if (typeof body["repo"] !== "string")
          throw new NearhubError(Code.InvalidArgument, "repo is required: owner/name, e.g. openai-community/gpt2");
        const interval = body["intervalSeconds"] ?? 0;
        if (typeof interval !== "number" || !Number.isInteger(interval) || interval < 0) {
          throw new NearhubError(Code.InvalidArgument, "intervalSeconds must be a whole number of seconds");
        }
        const revision = body["revision"] ?? "";
        if (typeof revision !== "string")
          throw new NearhubError(Code.InvalidArgument, "revision must be a branch, tag or commit");
        const response = await sync.addModelMirror({
          repo: { kind: kindOf(body["kind"]), id: checkRepoId(body["repo"]) },
          revision,
          include: stringList(body["include"], "include"),
          exclude: stringList(body["exclude"], "exclude"),
          intervalSeconds: interval,
        });
        sendJson(res, response.created ? 201 : 200, {
          created: response.created,
          mirror: response.mirror ? mirrorJson(response.mirror) : undefined,
        });
      },
    },
    {
      method: "GET",
      pattern: ONE,
      template: "/api/model-mirrors/{kind}/{id}",
      handler: async ({ res, params }) => {
        const { mirror } = await sync.getModelMirror({ repo: repoOf(params) });
        sendJson(res, 200, mirror ? mirrorJson(mirror) : {});
      },
    },
    {
      method: "DELETE",
      pattern: ONE,
      template: "/api/model-mirrors/{kind}/{id}",
      handler: async ({ res, params }) => {
        const { removed } = await sync.removeModelMirror({ repo: repoOf(params) });
        if (!removed)
          throw new NearhubError(Code.NotFound, `${params["kind"] ?? ""} ${params["id"] ?? ""} is not mirrored`);
        sendJson(res, 200, { removed });
      },
    },
    {
      method: "POST",
      pattern: SYNC,
      template: "/api/model-mirrors/{kind}/{id}/sync",
      handler: async ({ res, params }) => {
        const { mirror } = await sync.syncModelMirror({ repo: repoOf(params) }, { timeoutMs: 60 * 60 * 1000 });
        sendJson(res, 200, mirror ? mirrorJson(mirror) : {});
      },
    },
  ];
}
