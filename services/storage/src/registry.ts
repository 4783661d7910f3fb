import { createHash } from "node:crypto";
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import type { KV } from "@nats-io/kv";
import { Code, NearhubError, publishAudit, type Bus, type CallContext, type ServiceImpl } from "@nearhub/platform";
import { refUpdated, repoDeleted, revisionPublished } from "@nearhub/proto/events";
import {
  RefKind,
  RepoKind,
  RevisionSchema,
  type ManifestEntry,
  type RefSchema,
  type RegistryService,
  type RepoId,
  type RepoSchema,
  type Revision,
  type RevisionSummarySchema,
} from "@nearhub/proto/registry";
import { SHA256, type BlobStore } from "./blob-store.js";

/** A 40-hex commit id. */
export const COMMIT = /^[0-9a-f]{40}$/;
const PART = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$/;
const REF_NAME = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$/;
const MAX_ENTRIES = 1_000_000;
const MAX_PAGE = 1000;
const DEFAULT_BRANCH = "main";

/** The repo record under `repo.<kind>.<b64 id>`. */
interface RepoRecord {
  kind: RepoKind;
  id: string;
  createdAt: number;
  updatedAt: number;
  defaultBranch: string;
  /** `branch:main` / `tag:v1` → commit and time of the last change. */
  refs: Record<string, { commit: string; updatedAt: number }>;
  revisionCount: number;
}

/** The revision record under `rev.<kind>.<b64 id>.<commit>`: the summary; the manifest is a blob. */
interface RevisionRecord {
  commit: string;
  parent: string;
  message: string;
  author: string;
  createdAt: number;
  entryCount: number;
  totalSize: number;
  manifestSha256: string;
  /** sha256 of parent, message, author and entries: what makes a re-publish "the same". */
  contentSha256: string;
}

const KIND_KEY: Record<number, string> = {
  [RepoKind.MODEL]: "model",
  [RepoKind.DATASET]: "dataset",
  [RepoKind.SPACE]: "space",
};

function b64(s: string): string {
  return Buffer.from(s, "utf8").toString("base64url");
}

function invalid(message: string): NearhubError {
  return new NearhubError(Code.InvalidArgument, message);
}

/** Checks a RepoId and returns `model foo/bar`-style text for messages plus its key part. */
function checkRepo(repo: RepoId | undefined): { kind: RepoKind; id: string; key: string; label: string } {
  if (!repo) throw invalid("repo is required: {kind, id}");
  const kind = KIND_KEY[repo.kind];
  if (!kind) throw invalid("repo.kind must be REPO_KIND_MODEL, REPO_KIND_DATASET or REPO_KIND_SPACE");
  const parts = repo.id.split("/");
  if (
    repo.id.length === 0 ||
    parts.length > 2 ||
    parts.some((p) => !PART.test(p) || p.includes("..") || p.includes("--"))
  ) {
    throw invalid(
      `repo id ${JSON.stringify(repo.id.slice(0, 200))} must be owner/name or name: each part 1-96 letters, digits, '-', '_' or '.', starting with a letter or digit, without '..' or '--'`,
    );
  }
  return { kind: repo.kind, id: repo.id, key: `${kind}.${b64(repo.id)}`, label: `${kind} ${repo.id}` };
}

/** The RBAC resource of a repo: `models/acme/bert`, `datasets/squad`. */
function resourceOf(repo: { kind: RepoKind; id: string }): string {
  return `${KIND_KEY[repo.kind] ?? "model"}s/${repo.id}`;
}

function checkCommit(commit: string, what: string): string {
  if (!COMMIT.test(commit)) {
    throw invalid(`${what} ${JSON.stringify(commit.slice(0, 80))} must be a commit id: 40 lower-case hex characters`);
  }
  return commit;
}

function checkRefName(name: string): string {
  if (
    !REF_NAME.test(name) ||
    name.includes("..") ||
    name.includes("//") ||
    name.endsWith("/") ||
    name.endsWith(".lock") ||
    name.endsWith(".")
  ) {
    throw invalid(
      `ref name ${JSON.stringify(name.slice(0, 220))} must be 1-200 letters, digits, '-', '_', '.', '/', starting with a letter or digit, without '..' or '//' and not ending in '/', '.' or '.lock'`,
    );
  }
  return name;
}

function checkPath(path: string): void {
  const segments = path.split("/");
  if (
    path.length === 0 ||
    Buffer.byteLength(path) > 1024 ||
    path.includes("\0") ||
    path.includes("\\") ||
    segments.some((s) => s === "" || s === "." || s === "..")
  ) {
    throw invalid(
      `manifest path ${JSON.stringify(path.slice(0, 200))} must be a relative path with '/' separators: no leading or doubled '/', no '.' or '..' segments, no '\\' or NUL, at most 1024 bytes`,
    );
  }
}

function refKey(kind: RefKind, name: string): string {
  if (kind === RefKind.BRANCH) return `branch:${name}`;
  if (kind === RefKind.TAG) return `tag:${name}`;
  throw invalid("ref kind must be REF_KIND_BRANCH or REF_KIND_TAG");
}

function isCasConflict(error: unknown): boolean {
  const e = error as { code?: unknown; message?: string };
  return e?.code === 10071 || /wrong last sequence|key exists/i.test(e?.message ?? "");
}

function pageSize(n: number): number {
  if (n > MAX_PAGE) throw invalid(`page_size ${n} is over the maximum ${MAX_PAGE}`);
  return n === 0 ? 100 : n;
}

function summary(r: RevisionRecord): MessageInitShape<typeof RevisionSummarySchema> {
  return {
    commit: r.commit,
    parent: r.parent,
    message: r.message,
    author: r.author,
    createdAt: timestampFromMs(r.createdAt),
    entryCount: BigInt(r.entryCount),
    totalSize: BigInt(r.totalSize),
    manifestSha256: r.manifestSha256,
  };
}

function repoMessage(r: RepoRecord): MessageInitShape<typeof RepoSchema> {
  const refs: Array<MessageInitShape<typeof RefSchema>> = Object.entries(r.refs)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([key, v]) => {
      const [kind, ...rest] = key.split(":");
      return {
        kind: kind === "tag" ? RefKind.TAG : RefKind.BRANCH,
        name: rest.join(":"),
        commit: v.commit,
        updatedAt: timestampFromMs(v.updatedAt),
      };
    });
  return {
    repo: { kind: r.kind, id: r.id },
    createdAt: timestampFromMs(r.createdAt),
    updatedAt: timestampFromMs(r.updatedAt),
    defaultBranch: r.defaultBranch,
    refs,
    revisionCount: BigInt(r.revisionCount),
  };
}

/**
 * Model, dataset and space repositories. State is in the `registry` KV bucket storage owns:
 * `repo.<kind>.<base64url id>` (JSON: refs, counts; refs change by compare-and-set on the
 * entry's KV revision) and `rev.<kind>.<base64url id>.<commit>` (JSON summary). Each
 * revision's manifest is a protobuf `Revision` stored as a content-addressed blob, so a
 * manifest of any size fits and garbage collection sees it as referenced.
 */
export class Registry {
  constructor(
    readonly kv: KV,
    private readonly store: BlobStore,
  ) {}

  private async readRepo(key: string): Promise<{ record: RepoRecord; revision: number } | undefined> {
    const entry = await this.kv.get(`repo.${key}`);
    if (!entry || entry.operation !== "PUT") return undefined;
    return { record: entry.json<RepoRecord>(), revision: entry.revision };
  }

  async readRevision(key: string, commit: string): Promise<RevisionRecord | undefined> {
    const entry = await this.kv.get(`rev.${key}.${commit}`);
    if (!entry || entry.operation !== "PUT") return undefined;
    return entry.json<RevisionRecord>();
  }

  /**
   * Applies `change` to the repo record by compare-and-set, retrying on concurrent writers.
   * `change` returns the new record (or throws); `missing` builds the first one.
   */
  private async mutateRepo(key: string, change: (current: RepoRecord | undefined) => RepoRecord): Promise<RepoRecord> {
    for (let attempt = 0; attempt < 50; attempt++) {
      const current = await this.readRepo(key);
      const next = change(current?.record);
      const data = JSON.stringify(next);
      try {
        if (current) await this.kv.update(`repo.${key}`, data, current.revision);
        else await this.kv.create(`repo.${key}`, data);
        return next;
      } catch (error) {
        if (!isCasConflict(error)) throw error;
      }
    }
    throw new NearhubError(Code.Aborted, "the repo is changing too fast to update; retry");
  }

  /** A commit id, branch or tag of the repo → commit (NOT_FOUND naming what was tried). */
  async resolve(repo: { key: string; label: string }, revision: string): Promise<string> {
    const r = await this.readRepo(repo.key);
    if (!r) throw new NearhubError(Code.NotFound, `${repo.label} does not exist`);
    const name = revision === "" ? r.record.defaultBranch : revision;
    if (COMMIT.test(name) && (await this.readRevision(repo.key, name))) return name;
    const ref = r.record.refs[`branch:${name}`] ?? r.record.refs[`tag:${name}`];
    if (ref) return ref.commit;
    throw new NearhubError(
      Code.NotFound,
      `${repo.label} has no revision, branch or tag ${JSON.stringify(name.slice(0, 200))}`,
    );
  }

  async manifest(record: RevisionRecord): Promise<Revision> {
    const parts: Uint8Array[] = [];
    for await (const chunk of this.store.get(record.manifestSha256, 0, undefined)) parts.push(chunk);
    return fromBinary(RevisionSchema, Buffer.concat(parts));
  }

  /** Every revision record of every repo (for garbage collection). */
  async *allRevisions(): AsyncIterable<RevisionRecord> {
    const keys: string[] = [];
    for await (const k of await this.kv.keys("rev.>")) keys.push(k);
    for (const k of keys) {
      const entry = await this.kv.get(k);
      if (entry && entry.operation === "PUT") yield entry.json<RevisionRecord>();
    }
  }

  api(bus: Bus): ServiceImpl<typeof RegistryService> {
    const audit = (ctx: CallContext, action: string, resource: string, details: Record<string, string>) =>
      publishAudit(bus, "storage", { action, resource, details }, ctx);

    return {
      putRevision: async (request, ctx) => {
        const repo = checkRepo(request.repo);
        await ctx.authorize("write", resourceOf(repo));
        const input = request.revision;
        if (!input) throw invalid("revision is required");
        if (input.commit !== "") checkCommit(input.commit, "revision.commit");
        if (input.parent !== "") checkCommit(input.parent, "revision.parent");
        if (request.branch !== "") checkRefName(request.branch);
        if (request.expectedCommit !== undefined && request.expectedCommit !== "")
          checkCommit(request.expectedCommit, "expected_commit");
        if (request.expectedCommit !== undefined && request.branch === "")
          throw invalid("expected_commit needs branch: it is the compare-and-set value of that branch");
        if (input.entries.length > MAX_ENTRIES)
          throw invalid(`a revision has at most ${MAX_ENTRIES} entries; got ${input.entries.length}`);
        if (input.message.length > 64 * 1024) throw invalid("revision.message is over 64 KiB");
        if (input.author.length > 1024) throw invalid("revision.author is over 1024 characters");
        const seen = new Set<string>();
        let totalSize = 0;
        for (const e of input.entries) {
          checkPath(e.path);
          if (seen.has(e.path)) throw invalid(`manifest path ${JSON.stringify(e.path)} appears twice`);
          seen.add(e.path);
          if (!SHA256.test(e.sha256))
            throw invalid(`entry ${JSON.stringify(e.path)}: sha256 must be 64 lower-case hex characters`);
          if (e.gitBlobSha1 !== "" && !COMMIT.test(e.gitBlobSha1))
            throw invalid(
              `entry ${JSON.stringify(e.path)}: git_blob_sha1 must be empty or 40 lower-case hex characters`,
            );
          totalSize += Number(e.size);
        }
        const entries: ManifestEntry[] = [...input.entries].sort((a, b) => (a.path < b.path ? -1 : 1));
        if (!request.allowMissingBlobs) {
          const missing: string[] = [];
          const shas = [...new Set(entries.map((e) => e.sha256))];
          for (let i = 0; i < shas.length; i += 32) {
            const batch = shas.slice(i, i + 32);
            const stats = await Promise.all(batch.map((sha) => this.store.stat(sha)));
            stats.forEach((s, j) => {
              if (!s) missing.push(batch[j]!);
            });
          }
          const sizeOf = new Map<string, number>();
          for (const e of entries) sizeOf.set(e.sha256, Number(e.size));
          if (missing.length > 0) {
            const paths = entries.filter((e) => missing.includes(e.sha256)).map((e) => e.path);
            throw new NearhubError(
              Code.FailedPrecondition,
              `${missing.length} blob(s) are not stored; upload them first (or set allow_missing_blobs): ${paths.slice(0, 10).join(", ")}${paths.length > 10 ? ", …" : ""}`,
            );
          }
        }
        const content = create(RevisionSchema, {
          parent: input.parent,
          message: input.message,
          author: input.author,
          entries,
        });
        const contentSha256 = createHash("sha256").update(toBinary(RevisionSchema, content)).digest("hex");
        const commit =
          input.commit !== ""
            ? input.commit
            : createHash("sha1").update(`nearhub-revision\n${contentSha256}`).digest("hex");
        const createdAt = input.createdAt ? timestampMs(input.createdAt) : Date.now();
        const full = create(RevisionSchema, { ...content, commit, createdAt: timestampFromMs(createdAt) });
        const manifestBytes = toBinary(RevisionSchema, full);
        const manifestSha256 = createHash("sha256").update(manifestBytes).digest("hex");

        // The repo exists before its first revision does, so a revision is never orphaned.
        const before = await this.mutateRepo(repo.key, (current) => current ?? newRepo(repo));
        // Fail a compare-and-set that cannot hold before publishing anything.
        if (request.branch !== "")
          checkExpected(
            request.expectedCommit,
            before.refs[`branch:${request.branch}`]?.commit ?? "",
            `branch ${request.branch} of ${repo.label}`,
          );
        let record: RevisionRecord = {
          commit,
          parent: input.parent,
          message: input.message,
          author: input.author,
          createdAt,
          entryCount: entries.length,
          totalSize,
          manifestSha256,
          contentSha256,
        };
        let created = true;
        const existing = await this.readRevision(repo.key, commit);
        if (existing) {
          if (existing.contentSha256 !== contentSha256) {
            throw new NearhubError(
              Code.AlreadyExists,
              `${repo.label} already has commit ${commit} with different content; a commit id names one revision`,
            );
          }
          record = existing;
          created = false;
        } else {
          await this.store.put(
            { sha256: manifestSha256, size: manifestBytes.byteLength },
            (async function* () {
              yield manifestBytes;
            })(),
          );
          try {
            await this.kv.create(`rev.${repo.key}.${commit}`, JSON.stringify(record));
          } catch (error) {
            if (!isCasConflict(error)) throw error;
            const raced = await this.readRevision(repo.key, commit);
            if (raced?.contentSha256 !== contentSha256)
              throw new NearhubError(
                Code.AlreadyExists,
                `${repo.label} already has commit ${commit} with different content`,
              );
            record = raced;
            created = false;
          }
        }
        const now = Date.now();
        if (created) {
          await this.mutateRepo(repo.key, (current) => {
            const next = structuredClone(current ?? newRepo(repo));
            next.updatedAt = now;
            next.revisionCount += 1;
            return next;
          });
          await bus.publishEvent(
            revisionPublished,
            { repo: { kind: repo.kind, id: repo.id }, revision: summary(record) },
            { id: `registry.revision.published:${repo.key}:${commit}` },
          );
          await audit(ctx, "registry.revision.put", `${repo.label}@${commit}`, {
            entries: String(record.entryCount),
            size: String(record.totalSize),
          });
        }
        let ref: MessageInitShape<typeof RefSchema> | undefined;
        if (request.branch !== "") {
          // The revision is published; a concurrent move of the branch makes only this step fail.
          let oldCommit = "";
          const after = await this.mutateRepo(repo.key, (current) => {
            const next = structuredClone(current ?? newRepo(repo));
            const held = next.refs[`branch:${request.branch}`]?.commit ?? "";
            checkExpected(request.expectedCommit, held, `branch ${request.branch} of ${repo.label}`);
            oldCommit = held;
            next.refs[`branch:${request.branch}`] = { commit, updatedAt: now };
            next.updatedAt = now;
            return next;
          });
          if (oldCommit !== commit)
            await this.refEvent(bus, ctx, repo, RefKind.BRANCH, request.branch, oldCommit, commit, now);
          ref = {
            kind: RefKind.BRANCH,
            name: request.branch,
            commit,
            updatedAt: timestampFromMs(after.refs[`branch:${request.branch}`]!.updatedAt),
          };
        }
        return { revision: summary(record), created, ...(ref ? { ref } : {}) };
      },

      getRevision: async (request, ctx) => {
        const repo = checkRepo(request.repo);
        await ctx.authorize("read", resourceOf(repo));
        if (request.revision.length > 256) throw invalid("revision is longer than 256 characters");
        const commit = await this.resolve(repo, request.revision);
        const record = await this.readRevision(repo.key, commit);
        if (!record) throw new NearhubError(Code.NotFound, `${repo.label} has no revision ${commit}`);
        return { revision: await this.manifest(record), manifestSha256: record.manifestSha256 };
      },

      getRepo: async (request, ctx) => {
        const repo = checkRepo(request.repo);
        await ctx.authorize("read", resourceOf(repo));
        const r = await this.readRepo(repo.key);
        if (!r) throw new NearhubError(Code.NotFound, `${repo.label} does not exist`);
        return { repo: repoMessage(r.record) };
      },

      listRepos: async (request, ctx) => {
        const size = pageSize(request.pageSize);
        const kind = request.kind === RepoKind.UNSPECIFIED ? undefined : KIND_KEY[request.kind];
        if (request.kind !== RepoKind.UNSPECIFIED && !kind) throw invalid("kind must be a RepoKind value");
        let after = "";
        if (request.pageToken !== "") {
          after = Buffer.from(request.pageToken, "base64url").toString("utf8");
          if (!/^(model|dataset|space)\//.test(after)) throw invalid("page_token is not one this service issued");
        }
        const found: Array<{ sortKey: string; key: string }> = [];
        for await (const k of await this.kv.keys(kind ? `repo.${kind}.*` : "repo.>")) {
          const [, k1, k2] = k.split(".");
          if (!k1 || !k2) continue;
          const id = Buffer.from(k2, "base64url").toString("utf8");
          if (!id.startsWith(request.prefix)) continue;
          // Only what the caller may read (`model/…` keys are `models/…` resources).
          if (!ctx.can("read", `${k1}s/${id}`)) continue;
          const sortKey = `${k1}/${id}`;
          if (sortKey > after) found.push({ sortKey, key: `${k1}.${k2}` });
        }
        found.sort((a, b) => (a.sortKey < b.sortKey ? -1 : 1));
        const page = found.slice(0, size);
        const repos = [];
        for (const p of page) {
          const r = await this.readRepo(p.key);
          if (r) repos.push(repoMessage(r.record));
        }
        const last = page.at(-1);
        return {
          repos,
          nextPageToken: found.length > size && last ? Buffer.from(last.sortKey).toString("base64url") : "",
        };
      },

      listRevisions: async (request, ctx) => {
        const repo = checkRepo(request.repo);
        await ctx.authorize("read", resourceOf(repo));
        const size = pageSize(request.pageSize);
        let commit =
          request.pageToken !== ""
            ? checkCommit(request.pageToken, "page_token")
            : await this.resolve(repo, request.revision);
        const revisions = [];
        while (commit !== "" && revisions.length < size) {
          const record = await this.readRevision(repo.key, commit);
          if (!record) break;
          revisions.push(summary(record));
          commit = record.parent;
        }
        const more = commit !== "" && (await this.readRevision(repo.key, commit)) !== undefined;
        return { revisions, nextPageToken: more ? commit : "" };
      },

      updateRef: async (request, ctx) => {
        const repo = checkRepo(request.repo);
        await ctx.authorize("write", resourceOf(repo));
        const key = refKey(request.kind, checkRefName(request.name));
        if (request.newCommit !== "") {
          checkCommit(request.newCommit, "new_commit");
          if (!(await this.readRevision(repo.key, request.newCommit)))
            throw new NearhubError(
              Code.FailedPrecondition,
              `${repo.label} has no revision ${request.newCommit}; publish it with PutRevision first`,
            );
        }
        if (request.expectedCommit !== undefined && request.expectedCommit !== "")
          checkCommit(request.expectedCommit, "expected_commit");
        if (!(await this.readRepo(repo.key))) throw new NearhubError(Code.NotFound, `${repo.label} does not exist`);
        const what = `${request.kind === RefKind.TAG ? "tag" : "branch"} ${request.name} of ${repo.label}`;
        let oldCommit = "";
        const now = Date.now();
        await this.mutateRepo(repo.key, (current) => {
          if (!current) throw new NearhubError(Code.NotFound, `${repo.label} does not exist`);
          const next = structuredClone(current);
          const held = next.refs[key]?.commit ?? "";
          checkExpected(request.expectedCommit, held, what);
          if (request.newCommit === "" && held === "")
            throw new NearhubError(Code.NotFound, `${what} does not exist; nothing to delete`);
          oldCommit = held;
          if (request.newCommit === "") delete next.refs[key];
          else next.refs[key] = { commit: request.newCommit, updatedAt: now };
          next.updatedAt = now;
          return next;
        });
        if (oldCommit !== request.newCommit)
          await this.refEvent(bus, ctx, repo, request.kind, request.name, oldCommit, request.newCommit, now);
        return {
          oldCommit,
          ...(request.newCommit !== ""
            ? {
                ref: {
                  kind: request.kind,
                  name: request.name,
                  commit: request.newCommit,
                  updatedAt: timestampFromMs(now),
                },
              }
            : {}),
        };
      },

      deleteRepo: async (request, ctx) => {
        const repo = checkRepo(request.repo);
        await ctx.authorize("delete", resourceOf(repo));
        const r = await this.readRepo(repo.key);
        const revKeys: string[] = [];
        for await (const k of await this.kv.keys(`rev.${repo.key}.*`)) revKeys.push(k);
        if (!r && revKeys.length === 0) return { deleted: false, revisionsDeleted: 0n };
        // The repo record goes first: from then on the repo is invisible and PutRevision starts afresh.
        if (r) await this.kv.purge(`repo.${repo.key}`);
        for (const k of revKeys) await this.kv.purge(k);
        await bus.publishEvent(
          repoDeleted,
          { repo: { kind: repo.kind, id: repo.id } },
          { id: `registry.repo.deleted:${repo.key}:${r?.revision ?? 0}` },
        );
        await audit(ctx, "registry.repo.delete", repo.label, { revisions: String(revKeys.length) });
        return { deleted: true, revisionsDeleted: BigInt(revKeys.length) };
      },
    };
  }

  private async refEvent(
    bus: Bus,
    ctx: CallContext,
    repo: { kind: RepoKind; id: string; key: string; label: string },
    kind: RefKind,
    name: string,
    oldCommit: string,
    newCommit: string,
    at: number,
  ): Promise<void> {
    await bus.publishEvent(
      refUpdated,
      { repo: { kind: repo.kind, id: repo.id }, kind, name, oldCommit, newCommit },
      { id: `registry.ref.updated:${repo.key}:${kind}:${name}:${oldCommit}:${newCommit}:${at}` },
    );
    await publishAudit(
      bus,
      "storage",
      {
        action: "registry.ref.update",
        resource: `${repo.label}@${name}`,
        details: { kind: kind === RefKind.TAG ? "tag" : "branch", old: oldCommit, new: newCommit },
      },
      ctx,
    );
  }
}

function newRepo(repo: { kind: RepoKind; id: string }): RepoRecord {
  const now = Date.now();
  return {
    kind: repo.kind,
    id: repo.id,
    createdAt: now,
    updatedAt: now,
    defaultBranch: DEFAULT_BRANCH,
    refs: {},
    revisionCount: 0,
  };
}

/** Throws ABORTED when a compare-and-set expectation does not hold. */
function checkExpected(expected: string | undefined, held: string, what: string): void {
  if (expected === undefined || expected === held) return;
  throw new NearhubError(
    Code.Aborted,
    `${what} ${held === "" ? "does not exist" : `points at ${held}`}, not ${expected === "" ? "nothing" : expected} as expected; re-read it and retry`,
  );
}
