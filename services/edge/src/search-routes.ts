import { createHash } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { toJson } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, sendJson } from "@nearhub/platform";
import {
  DocumentKind,
  SearchResponseSchema,
  SortDirection,
  SortField,
  SuggestionSchema,
  type SearchHit,
} from "@nearhub/proto/search";
import type { Backends } from "./backends.js";
import type { Route } from "./router.js";

const KINDS: Record<string, DocumentKind> = {
  "": DocumentKind.UNSPECIFIED,
  all: DocumentKind.UNSPECIFIED,
  repo: DocumentKind.GIT_REPO,
  git: DocumentKind.GIT_REPO,
  model: DocumentKind.MODEL,
  dataset: DocumentKind.DATASET,
};

const SORTS: Record<string, SortField> = {
  "": SortField.UNSPECIFIED,
  relevance: SortField.RELEVANCE,
  downloads: SortField.DOWNLOADS,
  likes: SortField.LIKES,
  updated: SortField.UPDATED,
  lastModified: SortField.UPDATED,
  last_modified: SortField.UPDATED,
  created: SortField.CREATED,
  createdAt: SortField.CREATED,
  created_at: SortField.CREATED,
  name: SortField.NAME,
  id: SortField.NAME,
  modelId: SortField.NAME,
  // nearhub keeps no trending score; downloads is the closest popularity signal it has.
  trendingScore: SortField.DOWNLOADS,
  trending: SortField.DOWNLOADS,
};

/** What `?expand=` may ask for, per repository type, as the Hub lists them. */
const EXPANDABLE: Record<"models" | "datasets", string[]> = {
  models: [
    "author",
    "cardData",
    "createdAt",
    "disabled",
    "downloads",
    "downloadsAllTime",
    "gated",
    "lastModified",
    "library_name",
    "likes",
    "pipeline_tag",
    "private",
    "sha",
    "siblings",
    "tags",
    "trendingScore",
  ],
  datasets: [
    "author",
    "cardData",
    "createdAt",
    "description",
    "disabled",
    "downloads",
    "downloadsAllTime",
    "gated",
    "lastModified",
    "likes",
    "private",
    "sha",
    "siblings",
    "tags",
    "trendingScore",
  ],
};

/** Every page at most this many items; larger `limit`s continue through the Link header. */
const PAGE = 100;
const MAX_LIMIT = 1000;

function badRequest(message: string): NearhubError {
  return new NearhubError(Code.InvalidArgument, message);
}

function parseLimit(raw: string | null, fallback: number, max: number): number {
  if (raw === null || raw === "") return fallback;
  const limit = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isInteger(limit) || limit < 1 || limit > max) {
    throw badRequest(`limit ${JSON.stringify(raw.slice(0, 20))} must be a whole number from 1 to ${max}`);
  }
  return limit;
}

function parseSort(raw: string | null): SortField {
  const sort = SORTS[raw ?? ""];
  if (sort === undefined) {
    throw badRequest(
      `sort ${JSON.stringify((raw ?? "").slice(0, 50))} must be one of ${Object.keys(SORTS).filter(Boolean).join(", ")}`,
    );
  }
  return sort;
}

function parseDirection(raw: string | null): SortDirection {
  switch (raw ?? "") {
    case "":
      return SortDirection.UNSPECIFIED;
    case "-1":
    case "desc":
      return SortDirection.DESC;
    case "1":
    case "asc":
      return SortDirection.ASC;
    default:
      throw badRequest(
        `direction ${JSON.stringify((raw ?? "").slice(0, 20))} must be -1 (descending) or 1 (ascending)`,
      );
  }
}

function truthy(raw: string | null): boolean {
  return raw !== null && raw !== "false" && raw !== "0";
}

/** Repeated and comma-separated values alike: `filter=a&filter=b,c`. */
function multi(url: URL, name: string): string[] {
  return url.searchParams
    .getAll(name)
    .flatMap((v) => v.split(","))
    .map((v) => v.trim())
    .filter(Boolean);
}

/** The Hub's `_id` is a 24-hex object id; nearhub derives a stable one from the repository id. */
function objectId(kind: DocumentKind, id: string): string {
  return createHash("sha1").update(`${kind}:${id}`).digest("hex").slice(0, 24);
}

const iso = (ms: number): string => new Date(ms).toISOString();

/** Builds the absolute URL of the next page on this mirror (never upstream). */
function selfUrl(req: IncomingMessage, url: URL): URL {
  const host = req.headers.host ?? "";
  const safeHost = /^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/.test(host)
    ? host
    : `${req.socket.localAddress?.includes(":") ? `[${req.socket.localAddress}]` : (req.socket.localAddress ?? "127.0.0.1")}:${req.socket.localPort ?? 80}`;
  const proto = req.headers["x-forwarded-proto"] === "https" ? "https" : "http";
  return new URL(`${url.pathname}${url.search}`, `${proto}://${safeHost}`);
}

/** One repository as the Hub lists it: the default fields, or `_id`, `id` and what `expand` asks. */
function hubItem(
  type: "models" | "datasets",
  hit: SearchHit,
  options: { expand: string[]; full: boolean },
): Record<string, unknown> {
  const updated = hit.updatedAt ? timestampMs(hit.updatedAt) : 0;
  const created = hit.createdAt ? timestampMs(hit.createdAt) : updated;
  const fields: Record<string, unknown> = {
    author: hit.author || undefined,
    cardData: hit.license ? { license: hit.license } : {},
    createdAt: iso(created),
    description: hit.description,
    disabled: false,
    downloads: Number(hit.downloads),
    downloadsAllTime: Number(hit.downloads),
    gated: hit.gated ? "manual" : false,
    lastModified: iso(updated),
    library_name: hit.libraryName || undefined,
    likes: Number(hit.likes),
    pipeline_tag: hit.pipelineTag || undefined,
    private: hit.private,
    sha: hit.sha || undefined,
    siblings: hit.files.map((f) => ({ rfilename: f.path })),
    tags: hit.tags,
    trendingScore: 0,
  };
  // The index keeps datasets as `datasets/<id>`; the Hub lists them by `<id>`.
  const id = hit.kind === DocumentKind.DATASET ? hit.id.replace(/^datasets\//, "") : hit.id;
  const item: Record<string, unknown> = { _id: objectId(hit.kind, id), id };
  let keys: string[];
  if (options.expand.length > 0) keys = options.expand;
  else if (type === "models") {
    keys = ["likes", "trendingScore", "private", "downloads", "tags", "pipeline_tag", "library_name", "createdAt"];
  } else {
    keys = [
      "author",
      "cardData",
      "disabled",
      "gated",
      "lastModified",
      "likes",
      "trendingScore",
      "private",
      "sha",
      "description",
      "downloads",
      "tags",
      "createdAt",
    ];
  }
  if (options.full) keys = [...new Set([...keys, "author", "sha", "lastModified", "gated", "disabled", "siblings"])];
  for (const key of keys) if (fields[key] !== undefined) item[key] = fields[key];
  if (type === "models" && options.expand.length === 0) item["modelId"] = id;
  return item;
}

/** `GET /api/models` and `GET /api/datasets`, answering as the Hugging Face Hub does. */
function hubListRoute(type: "models" | "datasets", backends: Backends): Route {
  const kind = type === "models" ? DocumentKind.MODEL : DocumentKind.DATASET;
  return {
    method: "GET",
    pattern: type === "models" ? /^\/api\/models\/?$/ : /^\/api\/datasets\/?$/,
    template: `/api/${type}`,
    handler: async ({ req, res, url }) => {
      const q = url.searchParams;
      const expand = multi(url, "expand");
      const unknown = expand.filter((e) => !EXPANDABLE[type].includes(e));
      if (unknown.length > 0) {
        throw badRequest(
          `expand ${JSON.stringify(unknown[0]?.slice(0, 50))} must be one of ${EXPANDABLE[type].join(", ")}`,
        );
      }
      if (expand.length > 0 && truthy(q.get("full"))) {
        throw badRequest("use either expand or full, not both");
      }
      const limit = parseLimit(q.get("limit"), PAGE, MAX_LIMIT);
      const search = q.get("search") ?? "";
      const sort = parseSort(q.get("sort"));
      const full = truthy(q.get("full"));
      const response = await backends.search.search({
        query: search,
        kind,
        // Only `full` and `expand=siblings` list files; without them the index does not read them.
        includeFiles: full || expand.includes("siblings"),
        pageSize: Math.min(limit, PAGE),
        cursor: q.get("cursor") ?? "",
        sort: sort === SortField.UNSPECIFIED && !search.trim() ? SortField.DOWNLOADS : sort,
        direction: parseDirection(q.get("direction")),
        filters: {
          author: q.get("author") ?? "",
          tags: multi(url, "filter"),
          pipelineTag: q.get("pipeline_tag") ?? "",
          library: q.get("library") ?? "",
          license: q.get("license") ?? "",
        },
      });
      const headers: Record<string, string> = {};
      // The Hub pages with a Link header; the client follows it until `limit` items came.
      if (response.nextCursor && limit > response.hits.length) {
        const next = selfUrl(req, url);
        next.searchParams.set("cursor", response.nextCursor);
        next.searchParams.set("limit", String(limit - response.hits.length));
        headers["link"] = `<${next.toString()}>; rel="next"`;
      }
      sendJson(
        res,
        200,
        response.hits.map((hit) => hubItem(type, hit, { expand, full })),
        headers,
      );
    },
  };
}

/**
 * The edge's search routes: the Hub's repository listings (`/api/models`, `/api/datasets`),
 * nearhub's own `/api/search` over repositories and models together, completions, and the
 * index rebuild.
 */
export function searchRoutes(backends: Backends): Route[] {
  return [
    hubListRoute("models", backends),
    hubListRoute("datasets", backends),
    {
      method: "GET",
      pattern: /^\/api\/search$/,
      template: "/api/search",
      handler: async ({ res, url }) => {
        const q = url.searchParams;
        const kindParam = q.get("kind") ?? "";
        const kind = KINDS[kindParam];
        if (kind === undefined) {
          throw badRequest(`kind ${JSON.stringify(kindParam.slice(0, 50))} must be one of repo, model, dataset, all`);
        }
        const response = await backends.search.search({
          query: q.get("q") ?? "",
          kind,
          pageSize: parseLimit(q.get("limit"), 20, 100),
          cursor: q.get("cursor") ?? "",
          sort: parseSort(q.get("sort")),
          direction: parseDirection(q.get("direction")),
          filters: {
            author: q.get("author") ?? "",
            tags: multi(url, "tag"),
            pipelineTag: q.get("pipeline_tag") ?? "",
            library: q.get("library") ?? "",
            license: q.get("license") ?? "",
            upstream: q.get("upstream") ?? "",
            state: q.get("state") ?? "",
          },
        });
        sendJson(res, 200, toJson(SearchResponseSchema, response));
      },
    },
    {
      method: "GET",
      pattern: /^\/api\/suggest$/,
      template: "/api/suggest",
      handler: async ({ res, url }) => {
        const kindParam = url.searchParams.get("kind") ?? "";
        const kind = KINDS[kindParam];
        if (kind === undefined) {
          throw badRequest(`kind ${JSON.stringify(kindParam.slice(0, 50))} must be one of repo, model, dataset, all`);
        }
        const { suggestions } = await backends.search.suggest({
          prefix: url.searchParams.get("q") ?? "",
          kind,
          limit: parseLimit(url.searchParams.get("limit"), 10, 20),
        });
        sendJson(res, 200, { suggestions: suggestions.map((s) => toJson(SuggestionSchema, s)) });
      },
    },
    {
      method: "POST",
      pattern: /^\/api\/index\/rebuild$/,
      template: "/api/index/rebuild",
      handler: async ({ req, res }) => {
        // Progress as it happens, one JSON object per line; the last has "done": true.
        const abort = new AbortController();
        req.once("close", () => {
          if (!res.writableFinished) abort.abort();
        });
        const stream = backends.search.rebuildIndex({}, { timeoutMs: 6 * 3600_000, signal: abort.signal });
        const iterator = stream[Symbol.asyncIterator]();
        // The first message (or error) decides the status, so a refusal is a clean JSON error.
        const first = await iterator.next();
        res.writeHead(200, { "content-type": "application/x-ndjson; charset=utf-8", "cache-control": "no-store" });
        const line = (m: Record<string, unknown>) => res.write(`${JSON.stringify(m)}\n`);
        try {
          for (let step = first; !step.done; step = await iterator.next()) {
            const p = step.value;
            line({
              eventsReplayed: Number(p.eventsReplayed),
              eventsTotal: Number(p.eventsTotal),
              documents: Number(p.documents),
              done: p.done,
              indexName: p.indexName,
              durationMs: Number(p.durationMs),
            });
          }
        } catch (error) {
          line({ error: NearhubError.from(error).rawMessage, done: false });
        }
        res.end();
      },
    },
  ];
}
