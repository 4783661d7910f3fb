import type { IncomingMessage, ServerResponse } from "node:http";
import { Counter } from "prom-client";
import { Code, NearhubError, type Logger, type ServiceMetrics } from "@nearhub/platform";
import type { Backends } from "./backends.js";
import type { EdgeConfig } from "./config.js";
import { checkPktLines, readGitBody } from "./git-pkt.js";
import type { PullThrough } from "./git-pull-through.js";
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

export { allowedByPatterns } from "./git-pull-through.js";

/** The pkt-line opening a v2 fetch answer's pack section. */
const PACKFILE_LINE = Buffer.from("000dpackfile\n");
const PROGRESS_EVERY_MS = 1000;

/** One sideband pkt-line on `band` (1 data, 2 progress, 3 fatal error). */
export function sideband(band: 1 | 2 | 3, text: string): Buffer {
  const data = Buffer.from(text, "utf8").subarray(0, 65515);
  const head = Buffer.from((data.length + 5).toString(16).padStart(4, "0"), "latin1");
  return Buffer.concat([head, Buffer.from([band]), data]);
}

/**
 * Whether a v2 fetch request's answer is certain to start with the `packfile` section (the
 * client said `done`, and asked for no shallow or wanted-refs sections), so progress can be
 * sent before the pack exists.
 */
export function progressible(body: Buffer): boolean {
  const lines: string[] = [];
  let at = 0;
  while (at + 4 <= body.length) {
    const len = parseInt(body.toString("latin1", at, at + 4), 16);
    if (!(len >= 4)) {
      if (!(len >= 0)) return false;
      at += 4;
      continue;
    }
    lines.push(body.toString("latin1", at + 4, at + len).replace(/\n$/, ""));
    at += len;
  }
  return lines.includes("done") && !lines.some((l) => /^(deepen|shallow|want-ref)\b/.test(l));
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
  pullThrough: PullThrough;
}): Route[] {
  const { config, pullThrough } = deps;
  const requests = new Counter({
    name: "nearhub_edge_git_requests_total",
    help: "Git smart-HTTP requests at the edge by kind (advertise, upload-pack, push) and outcome",
    labelNames: ["kind", "outcome"],
    registers: [deps.metrics.registry],
  });

  /**
   * Forwards to the sync service; resolves "not-mirrored" without answering when it says so.
   * With `continued`, the response head and a `packfile` section header were already sent
   * (progress while waiting): the sync service's own `packfile` line is dropped and the rest
   * streamed on.
   */
  const forward = (
    method: string,
    path: string,
    headers: Record<string, string>,
    body: Buffer | undefined,
    res: ServerResponse,
    continued = false,
  ): Promise<"done" | "not-mirrored"> =>
    new Promise((resolve, reject) => {
      const upstreamReq = deps.backends.syncGit.request(
        {
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
          if (continued) {
            if (upstreamRes.statusCode !== 200) {
              upstreamRes.resume();
              res.end(sideband(3, `nearhub: the mirror answered ${upstreamRes.statusCode ?? "?"}; retry the clone\n`));
              resolve("done");
              return;
            }
            let head = Buffer.alloc(0);
            upstreamRes.on("data", (chunk: Buffer) => {
              if (head.length >= PACKFILE_LINE.length) {
                if (!res.write(chunk)) {
                  upstreamRes.pause();
                  res.once("drain", () => upstreamRes.resume());
                }
                return;
              }
              head = Buffer.concat([head, chunk]);
              if (head.length < PACKFILE_LINE.length) return;
              if (!head.subarray(0, PACKFILE_LINE.length).equals(PACKFILE_LINE)) {
                upstreamRes.destroy();
                res.end(sideband(3, "nearhub: the mirror's answer did not start with a pack; retry the clone\n"));
                return;
              }
              res.write(head.subarray(PACKFILE_LINE.length));
            });
            upstreamRes.on("end", () => {
              res.end();
              resolve("done");
            });
            upstreamRes.on("error", reject);
            res.on("close", () => upstreamRes.destroy());
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
      // Reading the mirror (a pull-through fill is part of reading); git prompts on the 401 challenge.
      access: ({ params, url }) =>
        url.searchParams.get("service") === "git-receive-pack"
          ? undefined
          : { permission: "read", resource: checkRepoName(params["name"] ?? "") },
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
      access: ({ params }) => ({ permission: "read", resource: checkRepoName(params["name"] ?? "") }),
      // Each clone or fetch (the upload-pack exchange) is an audited read.
      auditRead: "git.fetch",
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
        const path = `/git/${name}/git-upload-pack`;
        let outcome = await forward("POST", path, headers, body, res);
        if (outcome === "not-mirrored") {
          const v2 = typeof protocol === "string" && /(^|:)version=2(:|$)/.test(protocol);
          if (!v2 && !pullThrough.pending(name)) {
            requests.inc({ kind: "upload-pack", outcome: "not-mirrored" });
            throw new NearhubError(Code.NotFound, `${name} is not mirrored; fetch its refs first (git clone does)`);
          }
          // A v2 client that got the capabilities while the first sync runs (see serveAdvertisement).
          pullThrough.admit(name);
          const first = pullThrough.wait(name);
          const command = /^[0-9a-f]{4}command=([a-z-]+)/.exec(body.toString("latin1", 0, 200))?.[1];
          if (command === "ls-refs") {
            // Answered from the upstream's refs, so the client goes on to its fetch and sees progress there.
            outcome = await forward("POST", `${path}?pending=1`, headers, body, res);
          } else if (command === "fetch" && progressible(body)) {
            await waitWithProgress(name, first, res);
            if (res.writableEnded) return;
            outcome = await forward("POST", path, headers, body, res, true);
          } else {
            await first;
            outcome = await forward("POST", path, headers, body, res);
          }
          if (outcome === "not-mirrored")
            throw new NearhubError(Code.Unavailable, `${name} synced but is not on disk yet; retry`);
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

  /**
   * Waits for a pull-through's first sync while telling the client: the response starts as a v2
   * fetch answer (`packfile` section) whose sideband band 2 carries "waiting…" lines; on failure
   * band 3 carries the reason, which git prints as a remote error.
   */
  async function waitWithProgress(name: string, first: Promise<void>, res: ServerResponse): Promise<void> {
    res.writeHead(200, { "content-type": "application/x-git-upload-pack-result", "cache-control": "no-cache" });
    res.write(PACKFILE_LINE);
    const started = Date.now();
    const say = () =>
      res.write(
        sideband(
          2,
          `nearhub: waiting for the upstream fetch of ${name}… ${Math.round((Date.now() - started) / 1000)}s\r`,
        ),
      );
    say();
    const timer = setInterval(say, PROGRESS_EVERY_MS);
    try {
      await first;
      res.write(sideband(2, `nearhub: waiting for the upstream fetch of ${name}… done\n`));
    } catch (error) {
      const e = NearhubError.from(error);
      res.end(sideband(3, `nearhub: ${e.rawMessage}\n`));
    } finally {
      clearInterval(timer);
    }
  }

  async function serveAdvertisement(name: string, res: ServerResponse, headers: Record<string, string>): Promise<void> {
    const path = `/git/${name}/info/refs?service=git-upload-pack`;
    let outcome = await forward("GET", path, headers, undefined, res);
    if (outcome === "not-mirrored") {
      pullThrough.admit(name);
      const first = pullThrough.wait(name);
      if (/(^|:)version=2(:|$)/.test(headers["git-protocol"] ?? "")) {
        // v2: the capabilities do not depend on the repository, so the client is answered at once
        // and reaches its fetch, where it is shown the wait (the ref advertisement cannot carry progress).
        outcome = await forward("GET", `${path}&pending=1`, headers, undefined, res);
        if (outcome === "done") {
          requests.inc({ kind: "advertise", outcome: "ok" });
          return;
        }
      }
      await first;
      outcome = await forward("GET", path, headers, undefined, res);
      if (outcome === "not-mirrored")
        throw new NearhubError(Code.Unavailable, `${name} synced but is not on disk yet; retry`);
    }
    requests.inc({ kind: "advertise", outcome: "ok" });
  }
}
