import { existsSync } from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  ARCHIVE_PREFIX,
  adoptObjects,
  diskUsage,
  ensureParent,
  readHead,
  readRefs,
  writeHead,
  writeRefs,
  type RefMap,
  type RepoLayout,
} from "./git-repo.js";
import type { CredentialSource } from "./github-app.js";
import { GitError, runGit, type GitResult, type RunGitOptions } from "./git-runner.js";
import type { LfsMirror, LfsPointer } from "./lfs-mirror.js";
import { parseUpstreamRefs, type UpstreamRefs } from "./pending-refs.js";

/** How a fetcher reaches upstreams and how long it lets git run. */
export interface FetcherOptions {
  layout: RepoLayout;
  /** Upstream name → base URL. */
  upstreams: ReadonlyMap<string, string>;
  /** Upstream name → token, sent as an HTTP header through the environment (never argv, never logged). */
  tokens: ReadonlyMap<string, string>;
  /** When set, the credential of an upstream comes from here (tokens and GitHub Apps) instead of `tokens`. */
  credentials?: CredentialSource & { refused?(upstream: string): void };
  lsRemoteTimeoutMs: number;
  fetchTimeoutMs: number;
  cloneTimeoutMs: number;
  /** Abort a transfer slower than this many bytes/s for `lowSpeedTimeS`. */
  lowSpeedLimit: number;
  lowSpeedTimeS: number;
  /** LFS support for mirrors added with `--lfs`; without it their LFS pointers are served as they are. */
  lfs?: LfsMirror;
}

/** One changed ref. */
export interface RefChangeResult {
  ref: string;
  oldSha: string;
  newSha: string;
  forced: boolean;
}

/** What one sync did. */
export interface SyncOutcome {
  /** True when upstream equalled the served refs and nothing was fetched. */
  noop: boolean;
  changes: RefChangeResult[];
  bytesFetched: number;
  refCount: number;
  sizeBytes: number;
  firstClone: boolean;
}

/** What a mirror sync needs to know about the mirror. */
export interface MirrorSpec {
  name: string;
  upstream: string;
  owner: string;
  repo: string;
  /** `heads,tags`, `heads`, `tags` or `all`. */
  refs: string;
  /** Fetch the LFS objects the mirrored commits point to. */
  lfs?: boolean;
}

const SHA = /^[0-9a-f]{40}([0-9a-f]{24})?$/;

/** Whether a ref is in the mirror's selection (our own namespaces never are). */
export function selected(ref: string, refs: string): boolean {
  if (ref.startsWith(ARCHIVE_PREFIX) || ref.startsWith("refs/nearhub/") || ref.endsWith("^{}")) return false;
  if (refs === "all") return ref.startsWith("refs/");
  return refs.split(",").some((kind) => ref.startsWith(`refs/${kind}/`));
}

/** Parses `git ls-remote --symref` output: refs, and HEAD's target when shown. */
export function parseLsRemote(text: string, refs: string): { refs: RefMap; head: string | undefined } {
  const out: RefMap = new Map();
  let head: string | undefined;
  for (const line of text.split("\n")) {
    const symref = /^ref: (\S+)\tHEAD$/.exec(line);
    if (symref) {
      head = symref[1];
      continue;
    }
    const tab = line.indexOf("\t");
    if (tab < 0) continue;
    const sha = line.slice(0, tab);
    const ref = line.slice(tab + 1);
    if (SHA.test(sha) && selected(ref, refs)) out.set(ref, sha);
  }
  return { refs: out, head };
}

function sameRefs(a: RefMap, b: RefMap): boolean {
  if (a.size !== b.size) return false;
  for (const [ref, sha] of a) if (b.get(ref) !== sha) return false;
  return true;
}

/**
 * Syncs bare repositories from their upstream with the real `git`: a cheap `ls-remote` first
 * (nothing else happens when upstream equals what is served), else a fetch into a quarantine
 * repository that borrows the served objects through `alternates`, a connectivity check, the
 * new packs moved in, and every ref replaced in one atomic rename. Deleted and force-pushed
 * refs keep their old tip under `refs/archive/<unix-s>/…`.
 */
export class GitFetcher {
  constructor(private readonly options: FetcherOptions) {}

  /** The URL git fetches from. */
  upstreamUrl(spec: MirrorSpec): string {
    const base = this.options.upstreams.get(spec.upstream);
    if (!base) throw new Error(`upstream ${spec.upstream} is not configured (NEARHUB_GIT_UPSTREAMS)`);
    return `${base}/${spec.owner}/${spec.repo}.git`;
  }

  private async gitEnv(upstream: string, signal?: AbortSignal): Promise<Record<string, string>> {
    const env: Record<string, string> = {};
    const credentials = this.options.credentials;
    const token = credentials ? await credentials.token(upstream, signal) : this.options.tokens.get(upstream);
    if (token) {
      // Through GIT_CONFIG_* so that the token never appears in a process list or a log line.
      env["GIT_CONFIG_COUNT"] = "1";
      env["GIT_CONFIG_KEY_0"] = "http.extraHeader";
      env["GIT_CONFIG_VALUE_0"] = `Authorization: Basic ${Buffer.from(`x-access-token:${token}`).toString("base64")}`;
    }
    return env;
  }

  private async git(spec: MirrorSpec, args: string[], opts: Omit<RunGitOptions, "env">): Promise<GitResult> {
    const env = await this.gitEnv(spec.upstream, opts.signal);
    return runGit(
      [
        "-c",
        `http.lowSpeedLimit=${this.options.lowSpeedLimit}`,
        "-c",
        `http.lowSpeedTime=${this.options.lowSpeedTimeS}`,
        "-c",
        "protocol.version=2",
        ...args,
      ],
      { ...opts, env },
    ).catch((error: unknown) => {
      // A refused app token is minted afresh next time.
      if (error instanceof GitError && error.kind === "auth") this.options.credentials?.refused?.(spec.upstream);
      throw error;
    });
  }

  /** Upstream's refs in the mirror's selection and its default branch. */
  async lsRemote(spec: MirrorSpec, signal?: AbortSignal): Promise<{ refs: RefMap; head: string | undefined }> {
    const url = this.upstreamUrl(spec);
    const filter = spec.refs === "all" ? [] : spec.refs.split(",").map((k) => `--${k}`);
    const { stdout } = await this.git(spec, ["ls-remote", ...filter, url], {
      timeoutMs: this.options.lsRemoteTimeoutMs,
      maxStdoutBytes: 512 * 1024 * 1024,
      ...(signal ? { signal } : {}),
    });
    return parseLsRemote(stdout, spec.refs);
  }

  /** The upstream's refs in the mirror's selection, HEAD and peeled tags included (v2 ls-refs before a first sync). */
  async upstreamRefs(spec: MirrorSpec, signal?: AbortSignal): Promise<UpstreamRefs> {
    const { stdout } = await this.git(spec, ["ls-remote", "--symref", this.upstreamUrl(spec)], {
      timeoutMs: this.options.lsRemoteTimeoutMs,
      maxStdoutBytes: 512 * 1024 * 1024,
      ...(signal ? { signal } : {}),
    });
    return parseUpstreamRefs(stdout, (ref) => selected(ref, spec.refs));
  }

  private async defaultBranch(spec: MirrorSpec, signal?: AbortSignal): Promise<string | undefined> {
    const { stdout } = await this.git(spec, ["ls-remote", "--symref", this.upstreamUrl(spec), "HEAD"], {
      timeoutMs: this.options.lsRemoteTimeoutMs,
      ...(signal ? { signal } : {}),
    });
    return parseLsRemote(stdout, spec.refs).head;
  }

  /** Syncs one mirror; throws a GitError when upstream or git fails, leaving what is served intact. */
  async sync(
    spec: MirrorSpec,
    opts: { signal?: AbortSignal; onProgress?: (line: string) => void; now?: Date } = {},
  ): Promise<SyncOutcome> {
    const { layout } = this.options;
    const repo = layout.pathOf(spec.name);
    const exists = existsSync(join(repo, "objects"));
    const served = exists ? await readRefs(repo) : new Map<string, string>();
    const servedHeads = new Map([...served].filter(([ref]) => !ref.startsWith(ARCHIVE_PREFIX)));
    const remote = await this.lsRemote(spec, opts.signal);
    if (exists && sameRefs(remote.refs, servedHeads)) {
      let bytesFetched = 0;
      const lfs = this.options.lfs;
      if (spec.lfs && lfs && !lfs.hasIndex(repo)) {
        // LFS was switched on for a mirror synced without it: its whole history is scanned once.
        const pointers = await lfs.scan(repo, [...new Set(servedHeads.values())], [], this.options.fetchTimeoutMs);
        bytesFetched = (await lfs.fetch(spec.upstream, this.upstreamUrl(spec), pointers, opts.signal)).bytes;
        await lfs.record(repo, pointers);
      }
      return { noop: true, changes: [], bytesFetched, refCount: servedHeads.size, sizeBytes: -1, firstClone: false };
    }

    const staging = layout.stagingPath();
    try {
      await mkdir(layout.tmp, { recursive: true });
      await runGit(["init", "--bare", "-q", staging], { timeoutMs: 30_000 });
      if (exists) {
        // Borrow the served objects, and seed the served refs so negotiation sends them as haves.
        await writeFile(join(staging, "objects", "info", "alternates"), `${join(repo, "objects")}\n`);
        await writeRefs(staging, servedHeads);
      }
      const refspecs =
        spec.refs === "all" ? ["+refs/*:refs/*"] : spec.refs.split(",").map((k) => `+refs/${k}/*:refs/${k}/*`);
      const progress = opts.onProgress;
      await this.git(
        spec,
        [
          "-C",
          staging,
          "-c",
          "fetch.unpackLimit=1",
          "-c",
          "transfer.unpackLimit=1",
          "-c",
          "gc.auto=0",
          "fetch",
          "--prune",
          "--no-tags",
          "--no-write-fetch-head",
          "--no-recurse-submodules",
          ...(progress ? ["--progress"] : ["--quiet"]),
          this.upstreamUrl(spec),
          ...refspecs,
        ],
        {
          timeoutMs: exists ? this.options.fetchTimeoutMs : this.options.cloneTimeoutMs,
          ...(opts.signal ? { signal: opts.signal } : {}),
          ...(progress ? { onStderr: (chunk: Buffer) => progress(chunk.toString("utf8")) } : {}),
        },
      );
      // The fetch wrote loose refs in the staging repo; read them through git.
      const { stdout } = await runGit(["-C", staging, "for-each-ref", "--format=%(objectname) %(refname)"], {
        timeoutMs: 60_000,
        maxStdoutBytes: 512 * 1024 * 1024,
      });
      const fetched: RefMap = new Map();
      for (const line of stdout.split("\n")) {
        const space = line.indexOf(" ");
        if (space > 0 && selected(line.slice(space + 1), spec.refs))
          fetched.set(line.slice(space + 1), line.slice(0, space));
      }
      const head =
        (await this.defaultBranch(spec, opts.signal).catch(() => undefined)) ??
        [...fetched.keys()].find((r) => r.startsWith("refs/heads/"));

      // LFS objects are fetched and verified before any ref moves: a failure leaves the served refs as they were.
      let lfsPointers: LfsPointer[] | undefined;
      let lfsBytes = 0;
      const lfs = this.options.lfs;
      if (spec.lfs && lfs) {
        const exclude = exists && lfs.hasIndex(repo) ? [...new Set(servedHeads.values())] : [];
        lfsPointers = await lfs.scan(staging, [...new Set(fetched.values())], exclude, this.options.fetchTimeoutMs);
        lfsBytes = (await lfs.fetch(spec.upstream, this.upstreamUrl(spec), lfsPointers, opts.signal)).bytes;
      }

      if (!exists) {
        const bytes = (await diskUsage(join(staging, "objects"))) + lfsBytes;
        if (lfs && lfsPointers) await lfs.record(staging, lfsPointers);
        await writeRefs(staging, fetched);
        await rm(join(staging, "refs"), { recursive: true, force: true });
        await mkdir(join(staging, "refs", "heads"), { recursive: true });
        await mkdir(join(staging, "refs", "tags"), { recursive: true });
        if (head && fetched.has(head)) await writeHead(staging, head);
        await ensureParent(repo);
        await rename(staging, repo);
        return {
          noop: false,
          changes: [...fetched].map(([ref, sha]) => ({ ref, oldSha: "", newSha: sha, forced: false })),
          bytesFetched: bytes,
          refCount: fetched.size,
          sizeBytes: await diskUsage(repo),
          firstClone: true,
        };
      }

      const bytesFetched = (await adoptObjects(staging, repo)) + lfsBytes;
      if (lfs && lfsPointers) await lfs.record(repo, lfsPointers);
      const changes: RefChangeResult[] = [];
      for (const [ref, newSha] of fetched) {
        const oldSha = servedHeads.get(ref);
        if (oldSha === newSha) continue;
        const forced = oldSha ? ref.startsWith("refs/tags/") || !(await this.isAncestor(repo, oldSha, newSha)) : false;
        changes.push({ ref, oldSha: oldSha ?? "", newSha, forced });
      }
      for (const [ref, oldSha] of servedHeads) {
        if (!fetched.has(ref)) changes.push({ ref, oldSha, newSha: "", forced: true });
      }
      if (changes.length > 0) {
        await this.verifyConnected(repo, [...new Set(changes.map((c) => c.newSha).filter(Boolean))]);
        const next: RefMap = new Map([...served].filter(([ref]) => ref.startsWith(ARCHIVE_PREFIX)));
        const stamp = Math.floor((opts.now ?? new Date()).getTime() / 1000);
        for (const c of changes) if (c.forced) next.set(`${ARCHIVE_PREFIX}${stamp}/${c.ref.slice(5)}`, c.oldSha);
        for (const [ref, sha] of fetched) next.set(ref, sha);
        await writeRefs(repo, next);
      }
      if (head && fetched.has(head) && head !== (await readHead(repo))) await writeHead(repo, head);
      return {
        noop: false,
        changes,
        bytesFetched,
        refCount: fetched.size,
        sizeBytes: await diskUsage(repo),
        firstClone: false,
      };
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  private async isAncestor(repo: string, oldSha: string, newSha: string): Promise<boolean> {
    try {
      await runGit(["-C", repo, "merge-base", "--is-ancestor", oldSha, newSha], { timeoutMs: 60_000 });
      return true;
    } catch {
      return false;
    }
  }

  /** Fails unless every object reachable from `tips` and not from the served refs is present. */
  private async verifyConnected(repo: string, tips: string[]): Promise<void> {
    if (tips.length === 0) return;
    await runGit(["-C", repo, "rev-list", "--objects", "--quiet", "--stdin", "--not", "--all"], {
      timeoutMs: this.options.fetchTimeoutMs,
      input: tips.join("\n") + "\n",
    });
  }

  /**
   * Keeps serving fast: drops archive refs older than the retention, repacks into one pack
   * with a bitmap, and writes the commit-graph.
   */
  async maintain(spec: MirrorSpec, retentionS: number, now = new Date()): Promise<{ archivedPruned: number }> {
    const repo = this.options.layout.pathOf(spec.name);
    const refs = await readRefs(repo);
    const cutoff = Math.floor(now.getTime() / 1000) - retentionS;
    let pruned = 0;
    for (const ref of [...refs.keys()]) {
      if (!ref.startsWith(ARCHIVE_PREFIX)) continue;
      const stamp = Number(ref.slice(ARCHIVE_PREFIX.length).split("/")[0]);
      if (Number.isFinite(stamp) && stamp < cutoff) {
        refs.delete(ref);
        pruned++;
      }
    }
    if (pruned > 0) await writeRefs(repo, refs);
    await runGit(
      ["-C", repo, "-c", "pack.writeBitmapHashCache=true", "repack", "-a", "-d", "-q", "--write-bitmap-index"],
      {
        timeoutMs: this.options.cloneTimeoutMs,
      },
    );
    await runGit(["-C", repo, "commit-graph", "write", "--reachable", "--no-progress"], {
      timeoutMs: this.options.cloneTimeoutMs,
    });
    return { archivedPruned: pruned };
  }
}
