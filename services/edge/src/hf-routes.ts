import { createHash } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import {
  Code,
  asService,
  NearhubError,
  createClient,
  httpStatusOf,
  type Logger,
  type ServiceMetrics,
  type TransportSecurity,
} from "@nearhub/platform";
import { RegistryService } from "@nearhub/proto/registry";
import type { Backends } from "./backends.js";
import type { EdgeConfig } from "./config.js";
import { BlobCache } from "./hf-cache.js";
import {
  HfError,
  UpstreamUnavailable,
  checkFilePath,
  parseApiUrl,
  parseFileUrl,
  type FileEntry,
  type HfType,
} from "./hf-names.js";
import { HfRepos, type Pinned } from "./hf-repos.js";
import { HfUpstream } from "./hf-upstream.js";
import type { Route, RouteContext } from "./router.js";

const EXPOSED = [
  "Content-Range",
  "Content-Length",
  "Accept-Ranges",
  "ETag",
  "X-Repo-Commit",
  "X-Linked-Etag",
  "X-Linked-Size",
  "X-Error-Code",
  "X-Error-Message",
  "Link",
].join(", ");
const TREE_PAGE = 1000;
const MAX_PATHS = 10_000;
const MAX_FORM_BYTES = 2 * 1024 * 1024;

/** Header-safe text: one line of printable Latin-1, at most 500 characters. */
function headerText(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, " ").slice(0, 500);
}

function cors(req: IncomingMessage, res: ServerResponse): void {
  res.setHeader("access-control-allow-origin", req.headers.origin ? String(req.headers.origin) : "*");
  res.setHeader("access-control-expose-headers", EXPOSED);
  res.setHeader("vary", "Origin");
}

/** Sends an error the way the hub does: `{"error"}`, `X-Error-Code`, `X-Error-Message`. */
function sendHfError(res: ServerResponse, error: unknown, logger: Logger): void {
  if (res.headersSent) {
    res.destroy(error as Error);
    return;
  }
  let status: number;
  let message: string;
  const headers: Record<string, string> = {};
  if (error instanceof HfError) {
    status = error.status;
    message = error.message;
    Object.assign(headers, error.headers);
    if (error.errorCode) headers["x-error-code"] = error.errorCode;
  } else if (error instanceof UpstreamUnavailable) {
    status = 502;
    message = error.message;
  } else if (error instanceof NearhubError) {
    status = httpStatusOf(error.code);
    message = error.code === Code.Internal ? "internal error; the edge log has the details" : error.rawMessage;
    // What huggingface_hub maps to "repository not found / log in" without saying whether it exists.
    if (error.code === Code.Unauthenticated || error.code === Code.PermissionDenied) {
      headers["x-error-code"] = "RepoNotFound";
      if (error.code === Code.Unauthenticated) headers["www-authenticate"] = 'Bearer realm="nearhub"';
    }
    if (error.code === Code.Unavailable || error.code === Code.DeadlineExceeded) {
      message = `nearhub storage is unavailable: ${error.rawMessage}`;
    }
  } else {
    logger.error("HF request failed", { error });
    status = 500;
    message = "internal error; the edge log has the details";
  }
  headers["x-error-message"] = headerText(message);
  const body = JSON.stringify({ error: message });
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(body),
    ...headers,
  });
  res.end(body);
}

/** A single byte range, or why the Range header cannot be satisfied. */
export function parseRange(header: string, size: number): { start: number; end: number } | "unsatisfiable" {
  const m = /^\s*bytes\s*=\s*(\d{0,20})\s*-\s*(\d{0,20})\s*$/i.exec(header);
  if (!m || (m[1] === "" && m[2] === "")) return "unsatisfiable";
  if (m[1] === "") {
    const suffix = Number(m[2]);
    if (suffix === 0 || size === 0) return "unsatisfiable";
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (!Number.isSafeInteger(start) || start >= size || end < start) return "unsatisfiable";
  return { start, end };
}

/** What the file endpoints send for an entry: the hub's metadata headers. */
function fileHeaders(p: Pinned, entry: FileEntry, immutable: boolean): Record<string, string> {
  const etag = `"${entry.lfs ? entry.sha256 : entry.oid}"`;
  const name = entry.path.slice(entry.path.lastIndexOf("/") + 1);
  return {
    "x-repo-commit": p.commit,
    etag,
    "x-linked-etag": etag,
    "x-linked-size": String(entry.size),
    "accept-ranges": "bytes",
    "content-type": "application/octet-stream",
    "content-disposition": `inline; filename*=UTF-8''${encodeURIComponent(name)}; filename="${name.replace(/[^\x20-\x7e]|"/g, "_")}"`,
    "cache-control": immutable ? "public, max-age=31536000, immutable" : "no-cache",
  };
}

function treeEntry(p: Pinned, path: string, expand: boolean): Record<string, unknown> {
  const f = p.files.get(path);
  const lastCommit = expand ? { lastCommit: { id: p.commit, title: "", date: p.lastModified } } : {};
  if (f) {
    return {
      type: "file",
      oid: f.oid,
      size: f.size,
      path,
      ...(f.lfs ? { lfs: { oid: f.sha256, size: f.size, pointerSize: f.pointerSize } } : {}),
      ...lastCommit,
    };
  }
  return { type: "directory", oid: p.dirs.get(path) ?? "", size: 0, path, ...lastCommit };
}

const parentOf = (path: string) => (path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "");

async function readBody(req: IncomingMessage, limit: number): Promise<string> {
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > limit) throw new HfError(413, `the body is larger than ${limit} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new HfError(413, `the body is larger than ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** The mirror's own origin for `Link` headers, from the request. */
function originOf(req: IncomingMessage): string {
  const proto = req.headers["x-forwarded-proto"] === "https" ? "https" : "http";
  const host = String(req.headers.host ?? "localhost");
  return `${proto}://${/^[A-Za-z0-9.:[\]-]{1,255}$/.test(host) ? host : "localhost"}`;
}

/** The HF mirror wiring: its cache, upstream and repo layer, and its routes. */
export interface HfMirror {
  routes: Route[];
  repos: HfRepos;
  cache: BlobCache;
}

/**
 * The Hugging Face Hub API at the edge (../shared/HF-API.md): file resolve with ranges and
 * every header, repo info, tree, paths-info, whoami, CORS; revisions pinned in the registry
 * and pulled through from the upstream on a miss.
 */
export async function hfMirror(deps: {
  backends: Backends;
  config: EdgeConfig;
  metrics: ServiceMetrics;
  logger: Logger;
  onStop: (fn: () => void) => void;
  /** TLS of the calls to storage. */
  tls?: TransportSecurity;
}): Promise<HfMirror> {
  const { config, backends } = deps;
  const logger = deps.logger.child({ component: "hf" });
  const registry = createClient(RegistryService, config.NEARHUB_STORAGE_ADDR, {
    ...(deps.tls ? { credentials: deps.tls.grpcChannelCredentials() } : {}),
    metrics: deps.metrics,
    callMetadata: backends.identity,
  });
  deps.onStop(() => registry.$close());
  const cache = new BlobCache(
    config.NEARHUB_HF_CACHE_DIR ?? join(config.NEARHUB_DATA_DIR, "hf-cache"),
    config.NEARHUB_HF_CACHE_MAX_BYTES,
    logger.child({ component: "hf-cache" }),
    deps.metrics.registry,
  );
  await cache.init();
  const upstream =
    config.NEARHUB_HF_UPSTREAM === "off"
      ? undefined
      : new HfUpstream(config.NEARHUB_HF_UPSTREAM.replace(/\/+$/, ""), {
          ...(config.NEARHUB_HF_TOKEN ? { token: config.NEARHUB_HF_TOKEN } : {}),
          timeoutMs: config.NEARHUB_HF_UPSTREAM_TIMEOUT_MS,
          logger,
          registry: deps.metrics.registry,
        });
  const repos = new HfRepos({
    registry,
    storage: backends.storage,
    upstream,
    cache,
    refTtlMs: config.NEARHUB_HF_REF_TTL_MS,
    logger,
    metrics: deps.metrics.registry,
  });
  const guard = (handler: (ctx: RouteContext) => Promise<void>) => async (ctx: RouteContext) => {
    cors(ctx.req, ctx.res);
    try {
      // The router's URL parser resolves `..` and `%2e%2e` segments; refuse them instead.
      const rawPath = String(ctx.req.url ?? "/").split("?")[0]!;
      if (rawPath.split("/").some((s) => /^(?:\.|%2e){1,2}$/i.test(s))) {
        throw new HfError(400, "the path has '.' or '..' segments: name files by their path inside the repo");
      }
      // Reading the repo is the caller's permission to check (RBAC, anonymous read where the
      // operator allows it); filling the cache from upstream is then edge's own work.
      const target = parseFileUrl(ctx.url.pathname) ?? parseApiUrl(ctx.url.pathname);
      if (target) {
        await ctx.authorize("read", `${target.type}s/${target.id}`);
        // A file download (not the HEAD probes before it) is an audited read.
        if (ctx.req.method === "GET" && "path" in target && parseFileUrl(ctx.url.pathname))
          ctx.recordRead("hf.download", `${target.type}s/${target.id}/${target.path}`);
      }
      await asService(() => handler(ctx));
    } catch (error) {
      sendHfError(ctx.res, error, logger);
    }
  };

  const preflight = (ctx: RouteContext) => {
    cors(ctx.req, ctx.res);
    ctx.res.writeHead(204, {
      "access-control-allow-methods": "GET, HEAD, POST, OPTIONS",
      "access-control-allow-headers": String(
        ctx.req.headers["access-control-request-headers"] ?? "authorization, range, content-type, user-agent",
      ).slice(0, 1000),
      "access-control-max-age": "86400",
    });
    ctx.res.end();
  };

  const resolveFile = async ({ req, res, url }: RouteContext) => {
    const target = parseFileUrl(url.pathname);
    if (!target) throw new HfError(404, `no file route for ${url.pathname.slice(0, 200)}`);
    const p = await repos.resolve(target.type, target.id, target.revision);
    const entry = p.files.get(target.path);
    if (!entry) {
      throw new HfError(
        404,
        `${target.path} is not a file of ${target.type} ${target.id} at ${p.commit}`,
        "EntryNotFound",
        {
          "x-repo-commit": p.commit,
        },
      );
    }
    const headers = fileHeaders(p, entry, target.revision === p.commit);
    const rangeHeader = req.headers.range;
    const head = req.method === "HEAD";
    if (entry.size === 0) {
      // Nothing to range over: the whole (empty) file, with the size where range clients look.
      res.writeHead(200, {
        ...headers,
        "content-length": "0",
        ...(rangeHeader ? { "content-range": "bytes */0" } : {}),
      });
      res.end();
      if (!head) repos.countDownload(target.type, target.id);
      return;
    }
    let start = 0;
    let end = entry.size - 1;
    let status = 200;
    if (rangeHeader !== undefined) {
      const range = parseRange(rangeHeader, entry.size);
      if (range === "unsatisfiable") {
        throw new HfError(
          416,
          `Range ${JSON.stringify(rangeHeader.slice(0, 100))} cannot be satisfied: send one range, bytes=START-[END] or bytes=-SUFFIX, within the ${entry.size}-byte file`,
          undefined,
          { "content-range": `bytes */${entry.size}`, "x-repo-commit": p.commit },
        );
      }
      ({ start, end } = range);
      status = 206;
      headers["content-range"] = `bytes ${start}-${end}/${entry.size}`;
    }
    headers["content-length"] = String(end - start + 1);
    if (head) {
      res.writeHead(status, headers);
      res.end();
      return;
    }
    const reader = await repos.openFile(p, entry);
    if (start === 0) repos.countDownload(target.type, target.id);
    res.writeHead(status, { ...headers, "x-cache": reader.cached ? "HIT" : "MISS" });
    // A hit goes from the cached file to the socket in large reused buffers; a fill in
    // progress streams as its bytes arrive.
    const transfer = reader.send ? reader.send(res, start, end) : pipeline(reader.stream(start, end), res);
    await transfer.catch((error: unknown) => {
      logger.warn("file transfer ended early", { path: entry.path, sha256: entry.sha256, error });
      res.destroy();
    });
  };

  const api = async ({ req, res, url }: RouteContext) => {
    const target = parseApiUrl(url.pathname);
    if (!target) throw new HfError(404, `no API route for ${url.pathname.slice(0, 200)}`);
    if (req.method === "POST") {
      if (target.action !== "paths-info") throw new HfError(405, "only paths-info takes POST");
      return pathsInfo(req, res, await repos.resolve(target.type, target.id, target.revision));
    }
    if (target.action === "paths-info") throw new HfError(405, "paths-info takes POST with paths as a form or JSON");
    const p = await repos.resolve(target.type, target.id, target.action === "info" ? "HEAD" : target.revision);
    if (target.action === "tree") return tree(req, res, url, p, target.path);
    return repoInfo(res, url, p);
  };

  const repoInfo = (res: ServerResponse, url: URL, p: Pinned) => {
    const blobs = ["1", "true"].includes(url.searchParams.get("blobs") ?? "");
    const files = [...p.files.values()].sort((a, b) => (a.path < b.path ? -1 : 1));
    const owner = p.id.includes("/") ? p.id.slice(0, p.id.indexOf("/")) : undefined;
    const full: Record<string, unknown> = {
      ...p.info,
      _id:
        typeof p.info["_id"] === "string"
          ? p.info["_id"]
          : createHash("sha1").update(`${p.type}/${p.id}`).digest("hex").slice(0, 24),
      id: p.id,
      ...(p.type === "model" ? { modelId: p.id } : {}),
      ...(owner ? { author: owner } : {}),
      sha: p.commit,
      lastModified: p.lastModified,
      private: p.info["private"] ?? false,
      gated: p.info["gated"] ?? false,
      disabled: false,
      downloads: Number(p.info["downloads"] ?? 0) + repos.downloadsOf(p.type, p.id),
      likes: p.info["likes"] ?? 0,
      tags: p.info["tags"] ?? [],
      siblings: files.map((f) =>
        blobs
          ? {
              rfilename: f.path,
              size: f.size,
              blobId: f.oid,
              ...(f.lfs ? { lfs: { size: f.size, sha256: f.sha256, pointerSize: f.pointerSize } } : {}),
            }
          : { rfilename: f.path },
      ),
    };
    const expand = [...url.searchParams.getAll("expand"), ...url.searchParams.getAll("expand[]")];
    let body = full;
    if (expand.length > 0) {
      body = { _id: full["_id"], id: full["id"] };
      for (const key of expand) if (key in full) body[key] = full[key];
    }
    const text = JSON.stringify(body);
    res.writeHead(200, {
      "content-type": "application/json; charset=utf-8",
      "content-length": Buffer.byteLength(text),
      "x-repo-commit": p.commit,
    });
    res.end(text);
  };

  const tree = (req: IncomingMessage, res: ServerResponse, url: URL, p: Pinned, base: string) => {
    if (base !== "" && !p.dirs.has(base)) {
      throw new HfError(404, `${base} is not a folder of ${p.type} ${p.id} at ${p.commit}`, "EntryNotFound", {
        "x-repo-commit": p.commit,
      });
    }
    const recursive = ["1", "true"].includes(url.searchParams.get("recursive") ?? "");
    const expand = ["1", "true"].includes(url.searchParams.get("expand") ?? "");
    const limitParam = Number(url.searchParams.get("limit") ?? TREE_PAGE);
    const limit = Number.isInteger(limitParam) && limitParam >= 1 ? Math.min(limitParam, TREE_PAGE) : TREE_PAGE;
    let after = "";
    const cursor = url.searchParams.get("cursor");
    if (cursor) {
      after = Buffer.from(cursor, "base64url").toString("utf8");
      if (after === "" || Buffer.from(after).toString("base64url") !== cursor) {
        throw new HfError(400, "cursor is not one this mirror issued; follow the Link header of the previous page");
      }
    }
    const prefix = base === "" ? "" : `${base}/`;
    const inScope = (path: string) =>
      path !== "" && path !== base && path.startsWith(prefix) && (recursive || parentOf(path) === base);
    const paths = [...[...p.dirs.keys()].filter(inScope), ...[...p.files.keys()].filter(inScope)].sort();
    const from = after === "" ? 0 : paths.findIndex((x) => x > after);
    const page = from < 0 ? [] : paths.slice(from, from + limit);
    const headers: Record<string, string> = {
      "content-type": "application/json; charset=utf-8",
      "x-repo-commit": p.commit,
    };
    const last = page.at(-1);
    if (from >= 0 && last !== undefined && from + limit < paths.length) {
      const next = new URLSearchParams(url.searchParams);
      next.set("cursor", Buffer.from(last).toString("base64url"));
      headers["link"] = `<${originOf(req)}${url.pathname}?${next.toString()}>; rel="next"`;
    }
    const text = JSON.stringify(page.map((path) => treeEntry(p, path, expand)));
    res.writeHead(200, { ...headers, "content-length": String(Buffer.byteLength(text)) });
    res.end(text);
  };

  const pathsInfo = async (req: IncomingMessage, res: ServerResponse, p: Pinned) => {
    const type = String(req.headers["content-type"] ?? "");
    const text = await readBody(req, MAX_FORM_BYTES);
    let paths: unknown;
    let expand: unknown;
    if (/^application\/json\b/i.test(type)) {
      let body: { paths?: unknown; expand?: unknown };
      try {
        body = JSON.parse(text) as typeof body;
      } catch (error) {
        throw new HfError(400, `the body is not valid JSON: ${(error as Error).message}`);
      }
      paths = body?.paths;
      expand = body?.expand;
    } else if (/^application\/x-www-form-urlencoded\b/i.test(type) || type === "") {
      const form = new URLSearchParams(text);
      paths = form.getAll("paths");
      expand = form.get("expand");
    } else {
      throw new HfError(415, "send paths as a form (application/x-www-form-urlencoded) or as JSON");
    }
    const list = typeof paths === "string" ? [paths] : paths;
    if (!Array.isArray(list) || list.some((x) => typeof x !== "string")) {
      throw new HfError(400, "paths must be a list of file or folder paths");
    }
    if (list.length > MAX_PATHS) throw new HfError(400, `at most ${MAX_PATHS} paths per request; got ${list.length}`);
    const wantExpand = expand === true || expand === "true" || expand === "1" || expand === "True";
    const found = (list as string[])
      .map((path) => checkFilePath(path.replace(/^\/+|\/+$/g, "")))
      .filter((path) => p.files.has(path) || p.dirs.has(path))
      .map((path) => treeEntry(p, path, wantExpand));
    const out = JSON.stringify(found);
    res.writeHead(200, {
      "content-type": "application/json; charset=utf-8",
      "content-length": Buffer.byteLength(out),
      "x-repo-commit": p.commit,
    });
    res.end(out);
  };

  const whoami = async ({ res, principal }: RouteContext) => {
    if (principal.subject === "anonymous")
      throw new HfError(401, "send a nearhub API token: Authorization: Bearer nhp_… (see `nearhub token create`)");
    const user = principal.subject;
    const body = JSON.stringify({
      type: "user",
      id: createHash("sha1").update(`user:${user}`).digest("hex").slice(0, 24),
      name: user,
      fullname: user,
      email: null,
      emailVerified: false,
      canPay: false,
      isPro: false,
      periodEnd: null,
      avatarUrl: "",
      orgs: [],
      auth: { type: "access_token", accessToken: { displayName: "nearhub", role: "read" } },
    });
    res.writeHead(200, {
      "content-type": "application/json; charset=utf-8",
      "content-length": Buffer.byteLength(body),
    });
    res.end(body);
  };

  const FILE = /^\/(?:(?:datasets|spaces)\/)?[^/]+(?:\/[^/]+)?\/(?:resolve|raw)\/.+/;
  const API = /^\/api\/(?:models|datasets|spaces)\/.+/;
  const WHOAMI = /^\/api\/whoami-v2$/;
  const routes: Route[] = [
    { method: "GET", pattern: FILE, template: "/{repo}/resolve/{revision}/{path}", handler: guard(resolveFile) },
    { method: "OPTIONS", pattern: FILE, template: "/{repo}/resolve/{revision}/{path}", handler: preflight },
    { method: "GET", pattern: API, template: "/api/{type}/{repo}/…", handler: guard(api) },
    { method: "POST", pattern: API, template: "/api/{type}/{repo}/paths-info/{revision}", handler: guard(api) },
    { method: "OPTIONS", pattern: API, template: "/api/{type}/{repo}/…", handler: preflight },
    {
      method: "GET",
      pattern: WHOAMI,
      template: "/api/whoami-v2",
      handler: async (ctx) => {
        cors(ctx.req, ctx.res);
        await whoami(ctx).catch((error: unknown) => sendHfError(ctx.res, error, logger));
      },
    },
    { method: "OPTIONS", pattern: WHOAMI, template: "/api/whoami-v2", handler: preflight },
  ];
  return { routes, repos, cache };
}

export type { HfType };
