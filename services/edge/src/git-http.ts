import { Agent, request, type IncomingMessage, type ServerResponse } from "node:http";
import { Counter } from "prom-client";
import { Code, NearhubError, type Logger, type ServiceMetrics } from "@nearhub/platform";
import { MirrorState } from "@nearhub/proto/sync";
import type { Backends } from "./backends.js";
import type { EdgeConfig } from "./config.js";
import { checkPktLines, readGitBody } from "./git-pkt.js";
import { HttpError, type Route } from "./router.js";

// `/<upstream>/<owner>/<repo>[.git]/…`, matched on the decoded path.
const REPO = String.raw`^\/(?<name>[^/]+\/[^/]+\/[^/]+?)(?:\.git)?`;
const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$/;
const UPSTREAM = /^[a-z0-9][a-z0-9.-]{0,99}$/;
const MAX_REQUEST_BYTES = 64 * 1024 * 1024;

/** Validates `<upstream>/<owner>/<repo>` syntax before anything else sees it. */
export function checkRepoName(raw: string): string {
  const parts = raw.split("/");
  const [upstream = "", owner = "", repo = ""] = parts;
  const bad = (what: string, value: string) =>
    new NearhubError(
      Code.InvalidArgument,
      `${what} ${JSON.stringify(value.slice(0, 100))} is not valid: clone URLs look like /<upstream>/<owner>/<repo>.git, e.g. /github.com/pytorch/pytorch.git`,
    );
  if (parts.length !== 3) throw bad("repository path", raw);
  if (!UPSTREAM.test(upstream)) throw bad("upstream", upstream);
  for (const [label, value] of [
    ["owner", owner],
    ["repository", repo],
  ] as const) {
    if (!SEGMENT.test(value) || value.includes("..")) throw bad(label, value);
  }
  return `${upstream}/${owner}/${repo}`;
}

/** Whether a name matches one of the comma-separated glob patterns (`*` within a segment, `**` anything). */
export function allowedByPatterns(name: string, patterns: string): boolean {
  return patterns
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean)
    .some((p) => {
      if (p === "*" || p === "**") return true;
      const re = new RegExp(
        `^${p
          .split("**")
          .map((part) =>
            part
              .split("*")
              .map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
              .join("[^/]*"),
          )
          .join(".*")}$`,
      );
      return re.test(name);
    });
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, {
    "content-type": "text/plain; charset=utf-8",
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-cache",
  });
  res.end(text);
}

/**
 * Git smart HTTP at the edge: `info/refs` and `git-upload-pack` (protocol v2 and v0) proxied
 * to the sync service's upload-pack, after the edge has checked the path, decoded gzip and
 * checked the pkt-line framing; push answered 403; and pull-through: the first clone of a
 * repository not yet mirrored adds it and waits for its first sync, concurrent first clones
 * sharing one wait (and so one upstream fetch).
 */
export function gitRoutes(deps: {
  backends: Backends;
  config: EdgeConfig;
  metrics: ServiceMetrics;
  logger: Logger;
}): Route[] {
  const { backends, config } = deps;
  const log = deps.logger.child({ component: "git-http" });
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  const syncUrl = new URL(config.NEARHUB_SYNC_GIT_URL);
  const requests = new Counter({
    name: "nearhub_edge_git_requests_total",
    help: "Git smart-HTTP requests at the edge by kind (advertise, upload-pack, push) and outcome",
    labelNames: ["kind", "outcome"],
    registers: [deps.metrics.registry],
  });
  const pullThroughs = new Counter({
    name: "nearhub_edge_git_pull_through_total",
    help: "Pull-through mirror creations by outcome (created, joined, failed, refused)",
    labelNames: ["outcome"],
    registers: [deps.metrics.registry],
  });
  const inflight = new Map<string, Promise<void>>();

  /** Forwards to the sync service; resolves "not-mirrored" without answering when it says so. */
  const forward = (
    method: string,
    path: string,
    headers: Record<string, string>,
    body: Buffer | undefined,
    res: ServerResponse,
  ): Promise<"done" | "not-mirrored"> =>
    new Promise((resolve, reject) => {
      const upstreamReq = request(
        {
          agent,
          host: syncUrl.hostname,
          port: syncUrl.port || 80,
          method,
          path,
          headers: { ...headers, ...(body ? { "content-length": String(body.length) } : {}) },
        },
        (upstreamRes: IncomingMessage) => {
          if (upstreamRes.statusCode === 404 && upstreamRes.headers["x-nearhub-not-mirrored"]) {
            upstreamRes.resume();
            resolve("not-mirrored");
            return;
          }
          const out: Record<string, string> = { "cache-control": "no-cache" };
          for (const h of ["content-type", "content-length"]) {
            const v = upstreamRes.headers[h];
            if (typeof v === "string") out[h] = v;
          }
          res.writeHead(upstreamRes.statusCode ?? 502, out);
          upstreamRes.pipe(res);
          upstreamRes.on("end", () => resolve("done"));
          upstreamRes.on("error", reject);
          res.on("close", () => upstreamRes.destroy());
        },
      );
      upstreamReq.on("error", (error) =>
        reject(
          new NearhubError(
            Code.Unavailable,
            `the sync service's git endpoint at ${config.NEARHUB_SYNC_GIT_URL} is unreachable: ${error.message}`,
          ),
        ),
      );
      upstreamReq.end(body);
    });

  const pullThrough = async (name: string): Promise<void> => {
    if (config.NEARHUB_GIT_PULL_THROUGH === "off") {
      pullThroughs.inc({ outcome: "refused" });
      throw new NearhubError(
        Code.NotFound,
        `${name} is not mirrored here; ask an administrator to run: nearhub mirror add ${name}`,
      );
    }
    if (!allowedByPatterns(name, config.NEARHUB_GIT_PULL_THROUGH_ALLOW)) {
      pullThroughs.inc({ outcome: "refused" });
      throw new NearhubError(
        Code.PermissionDenied,
        `${name} is not mirrored and pull-through is not allowed for it (NEARHUB_GIT_PULL_THROUGH_ALLOW); ask an administrator to run: nearhub mirror add ${name}`,
      );
    }
    const pending = inflight.get(name);
    if (pending) {
      pullThroughs.inc({ outcome: "joined" });
      return pending;
    }
    const work = (async () => {
      const timeoutMs = config.NEARHUB_GIT_PULL_THROUGH_TIMEOUT_S * 1000;
      const { mirror, created } = await backends.sync.addMirror({ name });
      log.info("pull-through: waiting for the first sync", { mirror: name, created });
      if (!created && mirror?.state === MirrorState.FAILED) {
        await backends.sync.syncMirror({ name, reason: "pull-through" });
      }
      const giveUp = Date.now() + timeoutMs;
      while (Date.now() < giveUp) {
        const { mirror: m } = await backends.sync.getMirror({ name });
        if (m?.lastSuccessAt) {
          pullThroughs.inc({ outcome: "created" });
          return;
        }
        if (m && (m.state === MirrorState.FAILED || m.state === MirrorState.PAUSED)) {
          pullThroughs.inc({ outcome: "failed" });
          throw new HttpError(
            502,
            Code.Unavailable,
            `the first sync of ${name} from its upstream failed: ${m.pausedReason || m.lastError || "unknown error"}`,
          );
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      pullThroughs.inc({ outcome: "failed" });
      throw new HttpError(504, Code.DeadlineExceeded, `the first sync of ${name} is still running; try again shortly`);
    })().finally(() => inflight.delete(name));
    inflight.set(name, work);
    return work;
  };

  const refusePush = (name: string, res: ServerResponse) => {
    requests.inc({ kind: "push", outcome: "refused" });
    sendText(
      res,
      403,
      `nearhub: ${name} is a read-only mirror; push to the upstream repository instead, and it will be mirrored here.\n`,
    );
  };

  return [
    {
      method: "GET",
      pattern: new RegExp(`${REPO}\\/info\\/refs$`),
      template: "/{repo}/info/refs",
      handler: async ({ req, res, url, params }) => {
        const name = checkRepoName(params["name"] ?? "");
        const service = url.searchParams.get("service");
        if (service === "git-receive-pack") return refusePush(name, res);
        if (service !== "git-upload-pack") {
          requests.inc({ kind: "advertise", outcome: "refused" });
          return sendText(
            res,
            400,
            "nearhub serves git's smart HTTP protocol only (service=git-upload-pack); use git 1.6.6 or newer\n",
          );
        }
        const headers: Record<string, string> = {};
        const protocol = req.headers["git-protocol"];
        if (typeof protocol === "string") headers["git-protocol"] = protocol;
        return serveAdvertisement(name, res, headers);
      },
    },
    {
      method: "POST",
      pattern: new RegExp(`${REPO}\\/git-upload-pack$`),
      template: "/{repo}/git-upload-pack",
      handler: async ({ req, res, params }) => {
        const name = checkRepoName(params["name"] ?? "");
        const type = String(req.headers["content-type"] ?? "");
        if (type !== "application/x-git-upload-pack-request") {
          throw new HttpError(
            415,
            Code.InvalidArgument,
            "send git-upload-pack requests with content-type: application/x-git-upload-pack-request",
          );
        }
        const body = await readGitBody(req, MAX_REQUEST_BYTES);
        const problem = checkPktLines(body);
        if (problem) {
          requests.inc({ kind: "upload-pack", outcome: "malformed" });
          throw new HttpError(400, Code.InvalidArgument, `malformed git request: ${problem}`);
        }
        const headers: Record<string, string> = { "content-type": type };
        const protocol = req.headers["git-protocol"];
        if (typeof protocol === "string") headers["git-protocol"] = protocol;
        const outcome = await forward("POST", `/git/${name}/git-upload-pack`, headers, body, res);
        if (outcome === "not-mirrored") {
          requests.inc({ kind: "upload-pack", outcome: "not-mirrored" });
          throw new NearhubError(Code.NotFound, `${name} is not mirrored; fetch its refs first (git clone does)`);
        }
        requests.inc({ kind: "upload-pack", outcome: "ok" });
      },
    },
    {
      method: "POST",
      pattern: new RegExp(`${REPO}\\/git-receive-pack$`),
      template: "/{repo}/git-receive-pack",
      handler: ({ req, res, params }) => {
        req.resume();
        refusePush(checkRepoName(params["name"] ?? ""), res);
      },
    },
  ];

  async function serveAdvertisement(name: string, res: ServerResponse, headers: Record<string, string>): Promise<void> {
    const path = `/git/${name}/info/refs?service=git-upload-pack`;
    let outcome = await forward("GET", path, headers, undefined, res);
    if (outcome === "not-mirrored") {
      await pullThrough(name);
      outcome = await forward("GET", path, headers, undefined, res);
      if (outcome === "not-mirrored")
        throw new NearhubError(Code.Unavailable, `${name} synced but is not on disk yet; retry`);
    }
    requests.inc({ kind: "advertise", outcome: "ok" });
  }
}
