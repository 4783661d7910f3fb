/**
 * A local stand-in for huggingface.co speaking the Hub protocol real clients and mirrors use:
 * repo info (`?blobs=true`, with Xet fields a mirror must strip), tree, paths-info, and
 * resolve (non-LFS files answered directly with git-sha1 ETags; LFS files redirected to a
 * "CDN" with X-Linked-* and Xet headers), HF error codes, gated repos and byte ranges.
 */
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

type Kind = "model" | "dataset" | "space";
const PLURALS: Record<string, Kind> = { models: "model", datasets: "dataset", spaces: "space" };

/** A file of a commit: LFS files are reported with their sha256 and served through the CDN. */
export interface HubFile {
  content: Buffer;
  lfs: boolean;
}

interface Commit {
  sha: string;
  files: Map<string, HubFile>;
  date: string;
}

interface HubRepo {
  kind: Kind;
  id: string;
  commits: Map<string, Commit>;
  refs: Map<string, string>;
  gatedToken?: string;
  card: Record<string, unknown>;
}

const digests = new WeakMap<Uint8Array, string>();

/** Lower-case hex sha256 (remembered per buffer: the double hashes large files once). */
export function sha256Hex(b: Uint8Array): string {
  let digest = digests.get(b);
  if (!digest) {
    digest = createHash("sha256").update(b).digest("hex");
    digests.set(b, digest);
  }
  return digest;
}

function gitSha1(b: Uint8Array): string {
  return createHash("sha1").update(`blob ${b.byteLength}\0`).update(b).digest("hex");
}

function pointer(f: HubFile): Buffer {
  return Buffer.from(
    `version https://git-lfs.github.com/spec/v1\noid sha256:${sha256Hex(f.content)}\nsize ${f.content.byteLength}\n`,
  );
}

function blobId(f: HubFile): string {
  return gitSha1(f.lfs ? pointer(f) : f.content);
}

export interface HubDouble {
  url: string;
  port: number;
  /** Creates or updates a repo: the files become a new commit on `branch` (default main); returns its sha. */
  commit(
    kind: Kind,
    id: string,
    files: Record<string, string | Buffer | HubFile>,
    options?: { branch?: string; gatedToken?: string; card?: Record<string, unknown> },
  ): string;
  /** How many GETs of the blob's bytes the CDN has served (ranges included). */
  transfers(sha256: string): number;
  /** How many requests of any kind the double has answered. */
  requests(): number;
  /** From now on, the CDN flips one byte in the middle of this blob. */
  corrupt(sha256: string): void;
  /** From now on, the CDN sends the first half of this blob and waits for the returned release. */
  hold(sha256: string): () => void;
  /** Stops listening and cuts open connections (the upstream goes away). */
  stop(): Promise<void>;
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function hfError(
  res: ServerResponse,
  status: number,
  code: string | undefined,
  message: string,
  headers: Record<string, string> = {},
): void {
  sendJson(
    res,
    status,
    { error: message },
    { ...(code ? { "x-error-code": code } : {}), "x-error-message": message, ...headers },
  );
}

/** Starts the double on 127.0.0.1 (port 0 = any free port). */
export async function startHubDouble(port = 0): Promise<HubDouble> {
  const repos = new Map<string, HubRepo>();
  const transfers = new Map<string, number>();
  const blobs = new Map<string, HubFile>();
  const corrupted = new Set<string>();
  const holds = new Map<string, Promise<void>>();
  let requestCount = 0;
  let counter = 0;

  const find = (req: IncomingMessage, res: ServerResponse, kind: Kind, id: string): HubRepo | undefined => {
    const repo = repos.get(`${kind}/${id}`);
    if (!repo) {
      hfError(res, 401, "RepoNotFound", `Repository Not Found for url: ${req.url ?? ""}.`);
      return undefined;
    }
    if (repo.gatedToken && req.headers.authorization !== `Bearer ${repo.gatedToken}`) {
      hfError(
        res,
        401,
        "GatedRepo",
        `Access to model ${id} is restricted. You must have access to it and be authenticated to access it.`,
      );
      return undefined;
    }
    return repo;
  };

  const revisionOf = (res: ServerResponse, repo: HubRepo, revision: string): Commit | undefined => {
    const sha =
      revision === "HEAD" ? repo.refs.get("main") : repo.commits.has(revision) ? revision : repo.refs.get(revision);
    const commit = sha ? repo.commits.get(sha) : undefined;
    if (!commit) hfError(res, 404, "RevisionNotFound", `Invalid rev id: ${revision}`);
    return commit;
  };

  const entry = (path: string, f: HubFile) => ({
    type: "file",
    oid: blobId(f),
    size: f.content.byteLength,
    path,
    ...(f.lfs
      ? { lfs: { oid: sha256Hex(f.content), size: f.content.byteLength, pointerSize: pointer(f).byteLength } }
      : {}),
    ...(f.lfs ? { xetHash: "x".repeat(64) } : {}),
  });

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    requestCount++;
    const url = new URL(req.url ?? "/", "http://double");
    const raw = url.pathname;

    const cdn = /^\/cdn\/([0-9a-f]{64})$/.exec(raw);
    if (cdn) {
      const sha = cdn[1]!;
      const file = blobs.get(sha);
      if (!file) return hfError(res, 404, undefined, "no such object");
      transfers.set(sha, (transfers.get(sha) ?? 0) + 1);
      let bytes = file.content;
      if (corrupted.has(sha)) {
        bytes = Buffer.from(bytes);
        bytes[bytes.length >> 1] = bytes[bytes.length >> 1]! ^ 0xff;
      }
      const m = /^bytes=(\d+)-(\d*)$/.exec(String(req.headers.range ?? ""));
      let status = 200;
      const headers: Record<string, string> = {
        "content-type": "application/octet-stream",
        "accept-ranges": "bytes",
        etag: `"${sha}"`,
      };
      if (m) {
        const start = Number(m[1]);
        const end = m[2] ? Math.min(Number(m[2]), bytes.length - 1) : bytes.length - 1;
        if (start >= bytes.length)
          return hfError(res, 416, undefined, "range not satisfiable", { "content-range": `bytes */${bytes.length}` });
        headers["content-range"] = `bytes ${start}-${end}/${bytes.length}`;
        bytes = bytes.subarray(start, end + 1);
        status = 206;
      }
      res.writeHead(status, { ...headers, "content-length": String(bytes.length) });
      if (req.method === "HEAD") return void res.end();
      const hold = holds.get(sha);
      if (hold) {
        const half = bytes.length >> 1;
        res.write(bytes.subarray(0, half));
        await hold;
        res.end(bytes.subarray(half));
        return;
      }
      for (let i = 0; i < bytes.length; i += 1 << 20) {
        if (!res.write(bytes.subarray(i, i + (1 << 20)))) await new Promise((r) => res.once("drain", r));
        if (res.destroyed) return;
      }
      res.end();
      return;
    }

    const api = /^\/api\/(models|datasets|spaces)\/(.+)$/.exec(raw);
    if (api) {
      const kind = PLURALS[api[1]!]!;
      const segs = api[2]!.split("/").map(decodeURIComponent);
      const actions = ["revision", "tree", "paths-info"];
      const idLen = segs.length >= 3 && actions.includes(segs[1]!) ? 1 : Math.min(2, segs.length);
      const id = segs.slice(0, idLen).join("/");
      const [action = "info", revision = "HEAD", ...rest] = segs.slice(idLen);
      const repo = find(req, res, kind, id);
      if (!repo) return;
      const commit = revisionOf(res, repo, action === "info" ? "HEAD" : revision);
      if (!commit) return;
      if (action === "info" || action === "revision") {
        const blobs = url.searchParams.get("blobs") === "true";
        return sendJson(res, 200, {
          _id: createHash("sha1").update(id).digest("hex").slice(0, 24),
          id,
          ...(kind === "model" ? { modelId: id } : {}),
          sha: commit.sha,
          lastModified: commit.date,
          private: false,
          gated: repo.gatedToken ? "manual" : false,
          disabled: false,
          downloads: 1234,
          likes: 7,
          ...repo.card,
          xetEnabled: true,
          siblings: [...commit.files].map(([path, f]) =>
            blobs
              ? {
                  rfilename: path,
                  size: f.content.byteLength,
                  blobId: blobId(f),
                  ...(f.lfs
                    ? {
                        lfs: {
                          size: f.content.byteLength,
                          sha256: sha256Hex(f.content),
                          pointerSize: pointer(f).byteLength,
                        },
                      }
                    : {}),
                  ...(f.lfs ? { xetHash: "x".repeat(64) } : {}),
                }
              : { rfilename: path },
          ),
        });
      }
      if (action === "tree") {
        const base = rest.join("/");
        const prefix = base ? `${base}/` : "";
        return sendJson(
          res,
          200,
          [...commit.files].filter(([p]) => p.startsWith(prefix)).map(([p, f]) => entry(p, f)),
        );
      }
      if (action === "paths-info" && req.method === "POST") {
        const chunks: Buffer[] = [];
        for await (const c of req) chunks.push(c as Buffer);
        const paths = new URLSearchParams(Buffer.concat(chunks).toString()).getAll("paths");
        return sendJson(
          res,
          200,
          paths.filter((p) => commit.files.has(p)).map((p) => entry(p, commit.files.get(p)!)),
        );
      }
      return hfError(res, 404, undefined, "not found");
    }

    // /{prefix}{id}/resolve/{revision}/{path}
    const segs = raw.split("/").slice(1);
    let kind: Kind = "model";
    if ((segs[0] === "datasets" || segs[0] === "spaces") && segs.length > 3) kind = PLURALS[segs.shift()!]!;
    const at = segs[1] === "resolve" ? 1 : segs[2] === "resolve" ? 2 : -1;
    if (at < 0) return hfError(res, 404, undefined, "not found");
    const id = segs.slice(0, at).join("/");
    const revision = decodeURIComponent(segs[at + 1] ?? "");
    const path = segs
      .slice(at + 2)
      .map(decodeURIComponent)
      .join("/");
    const repo = find(req, res, kind, id);
    if (!repo) return;
    const commit = revisionOf(res, repo, revision);
    if (!commit) return;
    const file = commit.files.get(path);
    if (!file)
      return hfError(res, 404, "EntryNotFound", `${path} does not exist on "${revision}"`, {
        "x-repo-commit": commit.sha,
      });
    if (file.lfs) {
      const sha = sha256Hex(file.content);
      if (String(req.headers.accept ?? "").includes("application/vnd.xet-fileinfo+json")) {
        return sendJson(
          res,
          200,
          { hash: "x".repeat(64), refreshUrl: "", reconstructionUrl: "" },
          {
            "content-type": "application/vnd.xet-fileinfo+json",
            "x-repo-commit": commit.sha,
            "x-linked-size": String(file.content.byteLength),
            "x-xet-hash": "x".repeat(64),
          },
        );
      }
      res.writeHead(302, {
        location: `/cdn/${sha}`,
        "x-repo-commit": commit.sha,
        "x-linked-etag": `"${sha}"`,
        "x-linked-size": String(file.content.byteLength),
        etag: `"${blobId(file)}"`,
        "x-xet-hash": "x".repeat(64),
        link: `<http://127.0.0.1:1/xet-auth>; rel="xet-auth", <http://127.0.0.1:1/xet-rec>; rel="xet-reconstruction-info"`,
        "content-length": "0",
      });
      return void res.end();
    }
    res.writeHead(200, {
      "content-type": "text/plain; charset=utf-8",
      "content-length": String(file.content.byteLength),
      etag: `"${blobId(file)}"`,
      "x-repo-commit": commit.sha,
      "accept-ranges": "bytes",
    });
    res.end(req.method === "HEAD" ? undefined : file.content);
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) hfError(res, 500, undefined, String(error));
      else res.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  const actual = (server.address() as AddressInfo).port;

  return {
    url: `http://127.0.0.1:${actual}`,
    port: actual,
    commit(kind, id, files, options = {}) {
      const key = `${kind}/${id}`;
      let repo = repos.get(key);
      if (!repo) {
        repo = { kind, id, commits: new Map(), refs: new Map(), card: {} };
        repos.set(key, repo);
      }
      if (options.gatedToken) repo.gatedToken = options.gatedToken;
      if (options.card) repo.card = options.card;
      const map = new Map<string, HubFile>();
      for (const [path, value] of Object.entries(files)) {
        const file =
          typeof value === "string" || Buffer.isBuffer(value) ? { content: Buffer.from(value), lfs: false } : value;
        map.set(path, file);
        if (file.lfs) blobs.set(sha256Hex(file.content), file);
      }
      const branch = options.branch ?? "main";
      const sha = createHash("sha1")
        .update(`${key}:${branch}:${counter++}:${repo.refs.get(branch) ?? ""}`)
        .digest("hex");
      repo.commits.set(sha, { sha, files: map, date: new Date(Date.UTC(2026, 0, 1, 0, 0, counter)).toISOString() });
      repo.refs.set(branch, sha);
      return sha;
    },
    transfers: (sha) => transfers.get(sha) ?? 0,
    requests: () => requestCount,
    corrupt: (sha) => void corrupted.add(sha),
    hold(sha) {
      let release!: () => void;
      holds.set(sha, new Promise<void>((r) => (release = r)));
      return () => {
        holds.delete(sha);
        release();
      };
    },
    async stop() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
