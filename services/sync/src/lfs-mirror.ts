import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, rename, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Code, NearhubError, type Client } from "@nearhub/platform";
import type { StorageService } from "@nearhub/proto/storage";
import { GitError, runGit } from "./git-runner.js";
import type { CredentialSource } from "./github-app.js";

/** One LFS pointer found in a mirrored tree. */
export interface LfsPointer {
  oid: string;
  size: number;
  /** A path the pointer was seen at (for error messages). */
  path: string;
}

/** The file in a bare repository listing the LFS objects its history references (`oid size` lines). */
export const LFS_INDEX = "nearhub-lfs";

/** LFS pointer files are below 1024 bytes (git-lfs spec), so larger blobs are never read. */
const MAX_POINTER_BYTES = 1024;
const OID = /^[0-9a-f]{64}$/;
/** Objects asked of the upstream's batch API per request (servers cap it; GitHub at 100). */
const BATCH_SIZE = 100;
const LFS_JSON = "application/vnd.git-lfs+json";

/** Parses a git-lfs pointer file; undefined when the bytes are not one. */
export function parseLfsPointer(bytes: Buffer | string): { oid: string; size: number } | undefined {
  const text = typeof bytes === "string" ? bytes : bytes.toString("utf8");
  if (text.length >= MAX_POINTER_BYTES) return undefined;
  const lines = text.split("\n");
  if (!/^version https:\/\/(git-lfs\.github\.com|hawser\.github\.com)\/spec\/v1$/.test(lines[0] ?? ""))
    return undefined;
  let oid: string | undefined;
  let size: number | undefined;
  for (const line of lines.slice(1)) {
    const m = /^oid sha256:([0-9a-f]{64})$/.exec(line);
    if (m) oid = m[1];
    const s = /^size (\d{1,15})$/.exec(line);
    if (s) size = Number(s[1]);
  }
  return oid !== undefined && size !== undefined ? { oid, size } : undefined;
}

/** Reads objects with `git cat-file --batch`, binary-safe; calls `each` with the contents. */
function catFileBatch(
  repo: string,
  shas: string[],
  each: (sha: string, body: Buffer) => void,
  timeoutMs: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn("git", ["-C", repo, "cat-file", "--batch=%(objectname) %(objectsize)"], {
      env: { ...process.env, GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null", LC_ALL: "C" },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    let buf = Buffer.alloc(0);
    let err = "";
    child.stderr.on("data", (c: Buffer) => (err = (err + c.toString()).slice(-2000)));
    child.stdout.on("data", (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        const nl = buf.indexOf(10);
        if (nl < 0) return;
        const [sha = "", sizeText = ""] = buf.subarray(0, nl).toString("latin1").split(" ");
        const size = Number(sizeText);
        if (!Number.isFinite(size)) {
          // `<sha> missing`: skip the line.
          buf = buf.subarray(nl + 1);
          continue;
        }
        if (buf.length < nl + 1 + size + 1) return;
        each(sha, buf.subarray(nl + 1, nl + 1 + size));
        buf = buf.subarray(nl + 1 + size + 1);
      }
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(shas.join("\n") + (shas.length ? "\n" : ""));
    child.on("error", (e) => reject(new GitError("other", `cannot run git cat-file: ${e.message}`, null)));
    child.on("close", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new GitError("other", `git cat-file failed (exit ${String(code)}): ${err.trim()}`, code));
    });
  });
}

/**
 * LFS for git mirrors: finds the LFS pointers new commits bring, fetches their objects from the
 * upstream's batch API into storage (content-addressed by the oid, which is the sha256; storage
 * refuses bytes that do not hash to it), and keeps per repository the list of objects its
 * history references, which the edge consults before serving an object under that repository.
 */
export class LfsMirror {
  private readonly cache = new Map<string, { key: string; objects: Map<string, number> }>();

  constructor(
    private readonly deps: {
      storage: Client<typeof StorageService>;
      /** Per-upstream token, sent as git sends it (Basic x-access-token). */
      tokens: ReadonlyMap<string, string>;
      /** When set, the credential of an upstream comes from here (tokens and GitHub Apps) instead of `tokens`. */
      credentials?: CredentialSource;
      timeoutMs: number;
      /** Called with the bytes of every object downloaded. */
      onBytes?: (n: number) => void;
    },
  ) {}

  /**
   * LFS pointers in the trees of commits reachable from `tips` and not from `exclude`, read in
   * `repo` (a staging repository borrowing the served objects works).
   */
  async scan(repo: string, tips: string[], exclude: string[], timeoutMs: number): Promise<LfsPointer[]> {
    if (tips.length === 0) return [];
    const input = [...tips, ...exclude.map((s) => `^${s}`)].join("\n") + "\n";
    const { stdout } = await runGit(
      ["-C", repo, "rev-list", "--objects", `--filter=blob:limit=${MAX_POINTER_BYTES}`, "--stdin"],
      { timeoutMs, input, maxStdoutBytes: 2 * 1024 * 1024 * 1024 },
    );
    const pathOf = new Map<string, string>();
    for (const line of stdout.split("\n")) {
      if (line.length < 41) continue;
      const space = line.indexOf(" ");
      if (space > 0) pathOf.set(line.slice(0, space), line.slice(space + 1));
    }
    if (pathOf.size === 0) return [];
    const { stdout: types } = await runGit(
      ["-C", repo, "cat-file", "--batch-check=%(objecttype) %(objectname) %(objectsize)"],
      { timeoutMs, input: [...pathOf.keys()].join("\n") + "\n", maxStdoutBytes: 2 * 1024 * 1024 * 1024 },
    );
    const candidates: string[] = [];
    for (const line of types.split("\n")) {
      const [type, sha = "", size] = line.split(" ");
      if (type === "blob" && Number(size) < MAX_POINTER_BYTES && Number(size) > 40) candidates.push(sha);
    }
    const found = new Map<string, LfsPointer>();
    await catFileBatch(
      repo,
      candidates,
      (sha, body) => {
        const p = parseLfsPointer(body);
        if (p && !found.has(p.oid)) found.set(p.oid, { ...p, path: pathOf.get(sha) ?? "" });
      },
      timeoutMs,
    );
    return [...found.values()];
  }

  /**
   * Makes sure storage holds every pointer's object: the ones it lacks are asked of the
   * upstream's batch API and streamed in. Throws a GitError naming the object and the
   * upstream's answer when one cannot be had; what was stored before stays (content-addressed,
   * complete and verified), nothing partial is ever visible.
   */
  async fetch(
    upstream: string,
    repoUrl: string,
    pointers: LfsPointer[],
    signal?: AbortSignal,
  ): Promise<{ fetched: number; bytes: number }> {
    if (pointers.length === 0) return { fetched: 0, bytes: 0 };
    if (!/^https?:\/\//.test(repoUrl)) {
      throw new GitError(
        "other",
        `LFS objects can only be fetched from an http(s) upstream; ${upstream} is ${repoUrl.split(":")[0] ?? "?"}:`,
        null,
      );
    }
    const present = new Set<string>();
    for (let i = 0; i < pointers.length; i += 1000) {
      const batch = pointers.slice(i, i + 1000).map((p) => p.oid);
      for (const sha of (await this.deps.storage.hasBlobs({ sha256: batch })).present) present.add(sha);
    }
    const missing = pointers.filter((p) => !present.has(p.oid));
    let bytes = 0;
    const token = this.deps.credentials
      ? await this.deps.credentials.token(upstream, signal)
      : this.deps.tokens.get(upstream);
    const auth = token ? `Basic ${Buffer.from(`x-access-token:${token}`).toString("base64")}` : undefined;
    const origin = new URL(repoUrl).origin;
    for (let i = 0; i < missing.length; i += BATCH_SIZE) {
      const group = missing.slice(i, i + BATCH_SIZE);
      const answer = await this.batch(repoUrl, group, auth, signal);
      for (const p of group) {
        const obj = answer.get(p.oid);
        const where = `LFS object ${p.oid} (${p.path || "?"}, ${p.size} bytes)`;
        if (!obj) throw new GitError("other", `the upstream's LFS batch answer left out ${where}`, null);
        if (obj.error) {
          throw new GitError(
            obj.error.code === 401 || obj.error.code === 403 ? "auth" : "other",
            `the upstream's LFS server has no ${where}: ${obj.error.code ?? "?"} ${String(obj.error.message ?? "").slice(0, 200)}`,
            null,
          );
        }
        const action = obj.actions?.download;
        if (!action?.href || !/^https?:\/\//.test(action.href)) {
          throw new GitError("other", `the upstream's LFS batch answer has no download link for ${where}`, null);
        }
        const headers: Record<string, string> = { ...(action.header ?? {}) };
        if (auth && !headers["Authorization"] && new URL(action.href).origin === origin)
          headers["Authorization"] = auth;
        bytes += await this.download(p, action.href, headers, where, signal);
      }
    }
    return { fetched: missing.length, bytes };
  }

  private async batch(
    repoUrl: string,
    group: LfsPointer[],
    auth: string | undefined,
    signal?: AbortSignal,
  ): Promise<Map<string, BatchObject>> {
    const url = `${repoUrl}/info/lfs/objects/batch`;
    let res: Response;
    try {
      res = await fetch(url, {
        method: "POST",
        headers: { accept: LFS_JSON, "content-type": LFS_JSON, ...(auth ? { authorization: auth } : {}) },
        body: JSON.stringify({
          operation: "download",
          transfers: ["basic"],
          objects: group.map((p) => ({ oid: p.oid, size: p.size })),
          hash_algo: "sha256",
        }),
        signal: AbortSignal.any([AbortSignal.timeout(this.deps.timeoutMs), ...(signal ? [signal] : [])]),
      });
    } catch (error) {
      throw new GitError(
        signal?.aborted ? "aborted" : "other",
        `the upstream's LFS batch API is unreachable: ${(error as Error).message}`,
        null,
      );
    }
    const text = await res.text();
    if (!res.ok) {
      const kind =
        res.status === 401 || res.status === 403
          ? "auth"
          : res.status === 404
            ? "not-found"
            : res.status === 429
              ? "rate-limited"
              : "other";
      throw new GitError(
        kind,
        `the upstream's LFS batch API answered ${res.status}: ${text.slice(0, 300).replace(/\s+/g, " ")}`,
        null,
      );
    }
    let body: { objects?: unknown };
    try {
      body = JSON.parse(text) as { objects?: unknown };
    } catch {
      throw new GitError("other", "the upstream's LFS batch API answered something that is not JSON", null);
    }
    const out = new Map<string, BatchObject>();
    if (Array.isArray(body.objects)) {
      for (const o of body.objects as BatchObject[]) if (o && typeof o.oid === "string") out.set(o.oid, o);
    }
    return out;
  }

  private async download(
    p: LfsPointer,
    href: string,
    headers: Record<string, string>,
    where: string,
    signal?: AbortSignal,
  ): Promise<number> {
    let res: Response;
    try {
      res = await fetch(href, {
        headers,
        signal: AbortSignal.any([AbortSignal.timeout(this.deps.timeoutMs), ...(signal ? [signal] : [])]),
      });
    } catch (error) {
      throw new GitError("other", `cannot download ${where}: ${(error as Error).message}`, null);
    }
    if (!res.ok || !res.body) {
      throw new GitError("other", `downloading ${where} failed: the upstream answered ${res.status}`, null);
    }
    const body = res.body as unknown as AsyncIterable<Uint8Array>;
    const onBytes = this.deps.onBytes;
    let received = 0;
    const hash = createHash("sha256");
    try {
      await this.deps.storage.putBlob(
        (async function* () {
          yield { part: { case: "header" as const, value: { sha256: p.oid, size: BigInt(p.size) } } };
          for await (const chunk of body) {
            received += chunk.byteLength;
            if (received > p.size) throw new Error(`the upstream sent more than the pointer's ${p.size} bytes`);
            hash.update(chunk);
            onBytes?.(chunk.byteLength);
            for (let i = 0; i < chunk.byteLength; i += 1024 * 1024) {
              yield { part: { case: "chunk" as const, value: chunk.subarray(i, i + 1024 * 1024) } };
            }
          }
          // Refuse before storage commits: the bytes must be the object the pointer names.
          if (received !== p.size) throw new Error(`the upstream sent ${received} bytes, not ${p.size}`);
          const actual = hash.digest("hex");
          if (actual !== p.oid) throw new Error(`the bytes hash to sha256 ${actual}`);
        })(),
        { timeoutMs: 6 * 3600_000 },
      );
    } catch (error) {
      const message = error instanceof NearhubError ? error.rawMessage : (error as Error).message;
      throw new GitError("other", `${where} was not stored: ${message}`, null);
    }
    return received;
  }

  /** Adds pointers to the repository's LFS index (written whole, then renamed: atomic). */
  async record(repo: string, pointers: LfsPointer[]): Promise<void> {
    const objects = existsSync(join(repo, LFS_INDEX)) ? await this.read(repo) : new Map<string, number>();
    for (const p of pointers) objects.set(p.oid, p.size);
    const text = [...objects]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([oid, size]) => `${oid} ${size}\n`)
      .join("");
    const tmp = join(repo, `${LFS_INDEX}.tmp-${process.pid}`);
    await writeFile(tmp, text);
    await rename(tmp, join(repo, LFS_INDEX));
  }

  /** Whether the repository has an LFS index (a mirror synced with LFS on). */
  hasIndex(repo: string): boolean {
    return existsSync(join(repo, LFS_INDEX));
  }

  /** The repository's LFS objects (oid → size), cached until the index file changes. */
  async read(repo: string): Promise<Map<string, number>> {
    const file = join(repo, LFS_INDEX);
    let key: string;
    try {
      const s = await stat(file);
      key = `${s.mtimeMs}:${s.size}:${s.ino}`;
    } catch {
      return new Map();
    }
    const cached = this.cache.get(repo);
    if (cached?.key === key) return cached.objects;
    const objects = new Map<string, number>();
    for (const line of (await readFile(file, "utf8")).split("\n")) {
      const [oid = "", size = ""] = line.split(" ");
      if (OID.test(oid)) objects.set(oid, Number(size));
    }
    if (this.cache.size > 1000) this.cache.clear();
    this.cache.set(repo, { key, objects });
    return objects;
  }
}

interface BatchObject {
  oid: string;
  size?: number;
  error?: { code?: number; message?: string };
  actions?: { download?: { href?: string; header?: Record<string, string> } };
}

/** Thrown when an LFS request to the sync service names something malformed. */
export function badLfsRequest(message: string): NearhubError {
  return new NearhubError(Code.InvalidArgument, message);
}
