import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { join } from "node:path";
import { createGunzip } from "node:zlib";
import { NearhubError, httpStatusOf, sendJson, type Logger } from "@nearhub/platform";
import type { RepoLayout } from "./git-repo.js";
import { parseMirrorName } from "./mirror-name.js";
import type { SyncMetrics } from "./sync-metrics.js";

// Served with every upload-pack: partial clone, fetch by any sha (old tips in the archive),
// and the archive namespace kept out of advertisements.
const UPLOAD_PACK_CONFIG = [
  "-c",
  "uploadpack.allowFilter=true",
  "-c",
  "uploadpack.allowAnySHA1InWant=true",
  "-c",
  "uploadpack.hideRefs=refs/archive/",
  "-c",
  "uploadpack.hideRefs=refs/nearhub/",
  "-c",
  "core.bigFileThreshold=64m",
];

const GIT_ENV = {
  GIT_CONFIG_NOSYSTEM: "1",
  GIT_CONFIG_GLOBAL: "/dev/null",
  GIT_TERMINAL_PROMPT: "0",
  LC_ALL: "C",
};

const ROUTE = /^\/git\/(?<name>[^/]+\/[^/]+\/[^/]+?)(?:\.git)?\/(?<op>info\/refs|git-upload-pack)$/;

/** A pkt-line `# service=git-upload-pack` then a flush, as protocol v0 over HTTP begins. */
const SERVICE_PREAMBLE = Buffer.from("001e# service=git-upload-pack\n0000");

/**
 * The sync service's internal git smart-HTTP endpoint, which the edge proxies: `info/refs` and
 * `git-upload-pack` for the bare repositories on this service's disk, through the real
 * `git upload-pack --stateless-rpc`, protocol v2 (from the `Git-Protocol` header) and v0.
 * Nothing here writes: receive-pack does not exist on this server.
 */
export function createGitServer(deps: {
  layout: RepoLayout;
  upstreams: ReadonlyMap<string, string>;
  metrics: SyncMetrics;
  logger: Logger;
}): Server {
  const log = deps.logger.child({ component: "git-server" });
  return createServer({ requestTimeout: 0, headersTimeout: 15_000 }, (req, res) => {
    const url = new URL(req.url ?? "/", "http://sync.invalid");
    const m = ROUTE.exec(url.pathname);
    const kind = m?.groups?.["op"] === "info/refs" ? "advertise" : "upload-pack";
    const fail = (status: number, message: string) => {
      deps.metrics.served.inc({ kind, status: String(status) });
      sendJson(res, status, { error: message });
    };
    if (!m?.groups)
      return fail(
        404,
        "unknown path; this endpoint serves /git/<upstream>/<owner>/<repo>/info/refs and /git-upload-pack",
      );
    let repo: string;
    try {
      const name = parseMirrorName(decodeURIComponent(m.groups["name"] ?? ""), deps.upstreams);
      repo = deps.layout.pathOf(name.full);
    } catch (error) {
      const e = NearhubError.from(error);
      return fail(httpStatusOf(e.code), e.rawMessage);
    }
    if (!existsSync(join(repo, "objects"))) {
      res.setHeader("x-nearhub-not-mirrored", "1");
      return fail(404, "this repository is not mirrored (yet)");
    }
    const protocol = String(req.headers["git-protocol"] ?? "");
    if (!/^[A-Za-z0-9=:.,_-]{0,200}$/.test(protocol)) return fail(400, "the Git-Protocol header is malformed");
    const env = { ...process.env, ...GIT_ENV, ...(protocol ? { GIT_PROTOCOL: protocol } : {}) };
    const v2 = /(^|:)version=2(:|$)/.test(protocol);

    if (kind === "advertise") {
      if (req.method !== "GET" && req.method !== "HEAD") return fail(405, "use GET for info/refs");
      if (url.searchParams.get("service") !== "git-upload-pack") {
        return fail(403, "only git-upload-pack is served: this is a read-only mirror");
      }
      run(
        ["upload-pack", "--stateless-rpc", "--advertise-refs", repo],
        "application/x-git-upload-pack-advertisement",
        v2 ? undefined : SERVICE_PREAMBLE,
      );
      return;
    }
    if (req.method !== "POST") return fail(405, "use POST for git-upload-pack");
    run(["upload-pack", "--stateless-rpc", repo], "application/x-git-upload-pack-result", undefined, req);

    function run(args: string[], type: string, preamble: Buffer | undefined, input?: IncomingMessage): void {
      const child = spawn("git", [...UPLOAD_PACK_CONFIG, ...args], { env, stdio: ["pipe", "pipe", "pipe"] });
      let stderr = "";
      let started = false;
      child.stderr.on("data", (c: Buffer) => (stderr = (stderr + c.toString("utf8")).slice(-4000)));
      child.stdout.on("data", (chunk: Buffer) => {
        if (!started) {
          started = true;
          res.writeHead(200, { "content-type": type, "cache-control": "no-cache" });
          if (preamble) res.write(preamble);
        }
        deps.metrics.servedBytes.inc(chunk.length);
        if (!res.write(chunk)) {
          child.stdout.pause();
          res.once("drain", () => child.stdout.resume());
        }
      });
      child.on("error", (error) => log.error("cannot run git upload-pack", { error }));
      child.on("close", (code) => {
        deps.metrics.served.inc({ kind, status: code === 0 ? "200" : "500" });
        if (!started) {
          if (code === 0) {
            res.writeHead(200, { "content-type": type, "cache-control": "no-cache" });
            if (preamble) res.write(preamble);
            res.end();
          } else {
            sendJson(res, 400, {
              error: `git upload-pack refused the request: ${stderr.trim().split("\n").pop() ?? ""}`,
            });
          }
        } else if (code === 0) res.end();
        else {
          log.warn("upload-pack ended with an error", { code, stderr: stderr.slice(-500) });
          res.destroy();
        }
      });
      // A client that goes away takes its upload-pack with it.
      res.on("close", () => {
        if (child.exitCode === null) child.kill("SIGKILL");
      });
      if (!input) {
        child.stdin.end();
        return;
      }
      child.stdin.on("error", () => undefined);
      const body = /gzip/i.test(String(input.headers["content-encoding"] ?? "")) ? input.pipe(createGunzip()) : input;
      body.on("error", () => child.kill("SIGKILL"));
      body.pipe(child.stdin);
    }
  });
}
