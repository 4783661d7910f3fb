import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import type { IncomingMessage, Server } from "node:http";
import type { Duplex } from "node:stream";
import { dirname, join } from "node:path";
import { createGunzip } from "node:zlib";
import { NearhubError, TransportSecurity, httpStatusOf, sendJson, type Logger } from "@nearhub/platform";
import type { RepoLayout } from "./git-repo.js";
import { runGit } from "./git-runner.js";
import type { LfsMirror } from "./lfs-mirror.js";
import { parseMirrorName } from "./mirror-name.js";
import { lsRefsResponse, parseV2Request, type UpstreamRefs } from "./pending-refs.js";
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

const ROUTE =
  /^\/git\/(?<name>[^/]+\/[^/]+\/[^/]+?)(?:\.git)?\/(?<op>info\/refs|git-upload-pack|lfs-objects|upload-pack-stream)$/;
const OID = /^[0-9a-f]{64}$/;
/** Oids one LFS lookup may ask about. */
const MAX_LFS_LOOKUP = 1000;

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
  /** Answers `lfs-objects` lookups (which LFS objects a mirror's history references). */
  lfs?: LfsMirror;
  /** The upstream's refs of a mirror not synced yet, for answering v2 `ls-refs` while its first sync runs. */
  lsRemote?: (name: string) => Promise<UpstreamRefs>;
  /** TLS of the endpoint (the service's certificate); plain text when absent. */
  tls?: TransportSecurity;
  /**
   * Who may read through this internal endpoint: answers a refusal (status and message) or
   * undefined. Only other nearhub services hold the key of the identity assertion it checks.
   */
  authorize?: (req: IncomingMessage, mirror: string) => { status: number; message: string } | undefined;
}): Server {
  const log = deps.logger.child({ component: "git-server" });
  // An empty repository whose v2 capability advertisement stands in for a mirror not synced yet.
  const emptyRepo = join(dirname(deps.layout.repos), "empty.git");
  let emptyReady: Promise<unknown> | undefined;
  const server = (deps.tls ?? TransportSecurity.plain()).createHttpServer(
    { requestTimeout: 0, headersTimeout: 15_000 },
    (req, res) => {
      const url = new URL(req.url ?? "/", "http://sync.invalid");
      const m = ROUTE.exec(url.pathname);
      const op = m?.groups?.["op"];
      const kind = op === "info/refs" ? "advertise" : op === "lfs-objects" ? "lfs" : "upload-pack";
      const fail = (status: number, message: string) => {
        deps.metrics.served.inc({ kind, status: String(status) });
        sendJson(res, status, { error: message });
      };
      if (!m?.groups || op === "upload-pack-stream")
        return fail(
          404,
          "unknown path; this endpoint serves /git/<upstream>/<owner>/<repo>/info/refs, /git-upload-pack and /lfs-objects",
        );
      let repo: string;
      let fullName: string;
      try {
        const name = parseMirrorName(decodeURIComponent(m.groups["name"] ?? ""), deps.upstreams);
        fullName = name.full;
        repo = deps.layout.pathOf(name.full);
      } catch (error) {
        const e = NearhubError.from(error);
        return fail(httpStatusOf(e.code), e.rawMessage);
      }
      const refused = deps.authorize?.(req, fullName);
      if (refused) return fail(refused.status, refused.message);
      const protocol = String(req.headers["git-protocol"] ?? "");
      if (!/^[A-Za-z0-9=:.,_-]{0,200}$/.test(protocol)) return fail(400, "the Git-Protocol header is malformed");
      const env = { ...process.env, ...GIT_ENV, ...(protocol ? { GIT_PROTOCOL: protocol } : {}) };
      const v2 = /(^|:)version=2(:|$)/.test(protocol);
      const pending = url.searchParams.get("pending") === "1";
      if (!existsSync(join(repo, "objects"))) {
        // While a pull-through's first sync runs, the edge may ask for the v2 capabilities and the
        // upstream's refs, so that the client reaches its fetch, where progress can be shown.
        if (pending && v2 && kind === "advertise") return void advertiseEmpty();
        if (pending && v2 && kind === "upload-pack" && req.method === "POST") return void lsRefsFromUpstream();
        res.setHeader("x-nearhub-not-mirrored", "1");
        return fail(404, "this repository is not mirrored (yet)");
      }
      if (kind === "lfs") return void lfsLookup();

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

      async function advertiseEmpty(): Promise<void> {
        try {
          emptyReady ??= existsSync(join(emptyRepo, "objects"))
            ? Promise.resolve()
            : runGit(["init", "--bare", "-q", emptyRepo], { timeoutMs: 30_000 });
          await emptyReady;
        } catch (error) {
          emptyReady = undefined;
          return fail(500, `cannot prepare the capability advertisement: ${(error as Error).message}`);
        }
        run(
          ["upload-pack", "--stateless-rpc", "--advertise-refs", emptyRepo],
          "application/x-git-upload-pack-advertisement",
          undefined,
        );
      }

      async function lsRefsFromUpstream(): Promise<void> {
        const chunks: Buffer[] = [];
        let size = 0;
        for await (const c of req) {
          size += (c as Buffer).length;
          if (size > 1024 * 1024) return fail(413, "an ls-refs request is far smaller than 1 MiB");
          chunks.push(c as Buffer);
        }
        const request = parseV2Request(Buffer.concat(chunks));
        if (!request || request.command !== "ls-refs") {
          res.setHeader("x-nearhub-not-mirrored", "1");
          return fail(404, "this repository is not mirrored (yet); only ls-refs is answered before its first sync");
        }
        if (!deps.lsRemote) return fail(404, "this repository is not mirrored (yet)");
        try {
          const refs = await deps.lsRemote(fullName);
          const body = lsRefsResponse(refs, request.args);
          res.writeHead(200, { "content-type": "application/x-git-upload-pack-result", "cache-control": "no-cache" });
          res.end(body);
          deps.metrics.served.inc({ kind: "upload-pack", status: "200" });
        } catch (error) {
          // An ERR line is what git prints ("remote error: …") where an HTTP status is just a number to it.
          const message =
            `nearhub: cannot list the refs of ${fullName} upstream: ${NearhubError.from(error).rawMessage}`.slice(
              0,
              2000,
            );
          deps.metrics.served.inc({ kind: "upload-pack", status: "502" });
          res.writeHead(200, { "content-type": "application/x-git-upload-pack-result", "cache-control": "no-cache" });
          res.end(`${(Buffer.byteLength(message) + 9).toString(16).padStart(4, "0")}ERR ${message}\n`);
        }
      }

      async function lfsLookup(): Promise<void> {
        if (req.method !== "POST") return fail(405, "use POST for lfs-objects");
        const chunks: Buffer[] = [];
        let size = 0;
        for await (const c of req) {
          size += (c as Buffer).length;
          if (size > 256 * 1024) return fail(413, `ask about at most ${MAX_LFS_LOOKUP} oids per request`);
          chunks.push(c as Buffer);
        }
        let oids: unknown;
        try {
          oids = (JSON.parse(Buffer.concat(chunks).toString("utf8")) as { oids?: unknown }).oids;
        } catch {
          return fail(400, 'send {"oids": ["<64 hex>", …]}');
        }
        if (
          !Array.isArray(oids) ||
          oids.length > MAX_LFS_LOOKUP ||
          !oids.every((o) => typeof o === "string" && OID.test(o))
        )
          return fail(400, `oids must be a list of at most ${MAX_LFS_LOOKUP} sha256 digests (64 lowercase hex)`);
        const known = deps.lfs ? await deps.lfs.read(repo) : new Map<string, number>();
        const objects: Record<string, number> = {};
        for (const oid of oids as string[]) {
          const size = known.get(oid);
          if (size !== undefined) objects[oid] = size;
        }
        deps.metrics.served.inc({ kind, status: "200" });
        sendJson(res, 200, { lfs: deps.lfs?.hasIndex(repo) ?? false, objects });
      }

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
    },
  );

  // `GET /git/<name>/upload-pack-stream` with `Upgrade: git-upload-pack`: the connection becomes
  // the stdin/stdout of a stateful `git upload-pack`, as over SSH (protocol v0 and v2), which
  // the edge's SSH server bridges its channels to.
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const refuse = (status: number, message: string, notMirrored = false) => {
      const body = JSON.stringify({ error: message });
      socket.end(
        `HTTP/1.1 ${status} ${status === 404 ? "Not Found" : status === 401 ? "Unauthorized" : status === 403 ? "Forbidden" : "Bad Request"}\r\ncontent-type: application/json\r\n` +
          `${notMirrored ? "x-nearhub-not-mirrored: 1\r\n" : ""}content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
      );
    };
    socket.on("error", () => undefined);
    const url = new URL(req.url ?? "/", "http://sync.invalid");
    const m = ROUTE.exec(url.pathname);
    if (!m?.groups || m.groups["op"] !== "upload-pack-stream" || String(req.headers["upgrade"]) !== "git-upload-pack")
      return refuse(400, "only GET /git/<upstream>/<owner>/<repo>/upload-pack-stream with Upgrade: git-upload-pack");
    let repo: string;
    try {
      const name = parseMirrorName(decodeURIComponent(m.groups["name"] ?? ""), deps.upstreams).full;
      const refused = deps.authorize?.(req, name);
      if (refused) return refuse(refused.status, refused.message);
      repo = deps.layout.pathOf(name);
    } catch (error) {
      return refuse(400, NearhubError.from(error).rawMessage);
    }
    if (!existsSync(join(repo, "objects"))) return refuse(404, "this repository is not mirrored (yet)", true);
    const protocol = String(req.headers["git-protocol"] ?? "");
    if (!/^[A-Za-z0-9=:.,_-]{0,200}$/.test(protocol)) return refuse(400, "the Git-Protocol header is malformed");
    socket.write("HTTP/1.1 101 Switching Protocols\r\nupgrade: git-upload-pack\r\nconnection: upgrade\r\n\r\n");
    const child = spawn("git", [...UPLOAD_PACK_CONFIG, "upload-pack", "--strict", repo], {
      env: { ...process.env, ...GIT_ENV, ...(protocol ? { GIT_PROTOCOL: protocol } : {}) },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (c: Buffer) => (stderr = (stderr + c.toString("utf8")).slice(-2000)));
    child.stdin.on("error", () => undefined);
    if (head.length > 0) child.stdin.write(head);
    socket.pipe(child.stdin);
    child.stdout.on("data", (c: Buffer) => deps.metrics.servedBytes.inc(c.length));
    child.stdout.pipe(socket);
    child.on("close", (code) => {
      deps.metrics.served.inc({ kind: "upload-pack-stream", status: code === 0 ? "200" : "500" });
      if (code !== 0 && code !== null) log.warn("upload-pack (stream) ended with an error", { code, stderr });
      socket.end();
    });
    socket.on("close", () => {
      if (child.exitCode === null) child.kill("SIGKILL");
    });
  });
  return server;
}
