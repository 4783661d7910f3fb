import { createHash } from "node:crypto";

/** The three kinds of hub repo and their URL prefixes. */
export type HfType = "model" | "dataset" | "space";

/** `models` / `datasets` / `spaces`, as in `/api/{plural}/…`. */
export const PLURAL: Record<HfType, string> = { model: "models", dataset: "datasets", space: "spaces" };

/** The URL prefix of a kind's file URLs: none for models. */
export const PREFIX: Record<HfType, string> = { model: "", dataset: "datasets/", space: "spaces/" };

export const COMMIT = /^[0-9a-f]{40}$/;
const PART = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$/;
const REF = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$/;

/** Error codes huggingface_hub and @huggingface/hub read from `X-Error-Code`. */
export type HfErrorCode = "RepoNotFound" | "RevisionNotFound" | "EntryNotFound" | "GatedRepo";

/** An answer in the hub's error format: `{"error"}`, `X-Error-Code`, `X-Error-Message`. */
export class HfError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly errorCode?: HfErrorCode,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** Reasons the upstream could not answer (network, timeout, 5xx): the caller may serve what it has. */
export class UpstreamUnavailable extends Error {}

const bad = (message: string) => new HfError(400, message);

/** Percent-decodes one URL segment; malformed escapes are a 400. */
export function decodeSegment(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw bad(`${JSON.stringify(raw.slice(0, 100))} has invalid percent-encoding`);
  }
}

/** Checks a repo id: `owner/name` or `name` (letters, digits, '-', '_', '.'; no '..' or '--'). */
export function checkRepoId(id: string): string {
  const parts = id.split("/");
  if (id.length === 0 || parts.length > 2 || parts.some((p) => !PART.test(p) || p.includes("..") || p.includes("--"))) {
    throw bad(
      `repo id ${JSON.stringify(id.slice(0, 200))} is not valid: use owner/name or name, each part 1-96 letters, digits, '-', '_' or '.', starting with a letter or digit, without '..' or '--'`,
    );
  }
  return id;
}

/** Checks a revision: `HEAD`, a 40-hex commit, or a branch/tag name such as `main` or `refs/pr/1`. */
export function checkRevision(revision: string): string {
  if (revision === "HEAD" || COMMIT.test(revision)) return revision;
  if (
    !REF.test(revision) ||
    revision.includes("..") ||
    revision.includes("//") ||
    revision.endsWith("/") ||
    revision.endsWith(".lock") ||
    revision.endsWith(".")
  ) {
    throw bad(
      `revision ${JSON.stringify(revision.slice(0, 200))} is not valid: use HEAD, a 40-hex commit, or a branch or tag name (letters, digits, '-', '_', '.', '/'; no '..')`,
    );
  }
  return revision;
}

/** Checks a file path inside a repo: relative, '/'-separated, no '.', '..' or empty segments. */
export function checkFilePath(path: string): string {
  if (
    path.length === 0 ||
    Buffer.byteLength(path) > 1024 ||
    path.includes("\0") ||
    path.includes("\\") ||
    path.split("/").some((s) => s === "" || s === "." || s === "..")
  ) {
    throw bad(
      `file path ${JSON.stringify(path.slice(0, 200))} is not valid: use a relative path with '/' separators, without '.', '..' or empty segments, '\\' or NUL, at most 1024 bytes`,
    );
  }
  return path;
}

/** A parsed file URL: `/{prefix}{repo}/resolve|raw/{revision}/{path}`. */
export interface FileTarget {
  type: HfType;
  id: string;
  revision: string;
  path: string;
}

/** Splits a type prefix off raw path segments. */
function typeOf(segments: string[]): { type: HfType; rest: string[] } {
  if (segments[0] === "datasets" && segments.length > 3) return { type: "dataset", rest: segments.slice(1) };
  if (segments[0] === "spaces" && segments.length > 3) return { type: "space", rest: segments.slice(1) };
  return { type: "model", rest: segments };
}

/**
 * Takes the revision off the front of raw segments: one percent-decoded segment
 * (`refs%2Fpr%2F1`), or the unencoded forms `refs/pr/N` and `refs/convert/X`.
 */
function takeRevision(rest: string[]): { revision: string; after: string[] } {
  const first = decodeSegment(rest[0] ?? "");
  if (first === "refs" && rest.length >= 3 && ["pr", "convert"].includes(rest[1] ?? "")) {
    return { revision: `refs/${decodeSegment(rest[1]!)}/${decodeSegment(rest[2]!)}`, after: rest.slice(3) };
  }
  return { revision: first, after: rest.slice(1) };
}

/** Parses a file URL's raw (still percent-encoded) path; undefined when it is not one. */
export function parseFileUrl(rawPath: string): FileTarget | undefined {
  const segments = rawPath.split("/").slice(1);
  const { type, rest } = typeOf(segments);
  const at = rest[1] === "resolve" || rest[1] === "raw" ? 1 : rest[2] === "resolve" || rest[2] === "raw" ? 2 : -1;
  if (at < 0) return undefined;
  const id = checkRepoId(rest.slice(0, at).map(decodeSegment).join("/"));
  const { revision, after } = takeRevision(rest.slice(at + 1));
  checkRevision(revision);
  const path = checkFilePath(after.map(decodeSegment).join("/"));
  return { type, id, revision, path };
}

/** A parsed `/api/{plural}/{repo}[/{action}/{revision}[/{path}]]`. */
export interface ApiTarget {
  type: HfType;
  id: string;
  action: "info" | "revision" | "tree" | "paths-info";
  revision: string;
  path: string;
}

const ACTIONS = new Set(["revision", "tree", "paths-info"]);

/** Parses an API URL's raw path; undefined when it is not one of the repo endpoints. */
export function parseApiUrl(rawPath: string): ApiTarget | undefined {
  const m = /^\/api\/(models|datasets|spaces)\/(.+)$/.exec(rawPath);
  if (!m) return undefined;
  const type: HfType = m[1] === "datasets" ? "dataset" : m[1] === "spaces" ? "space" : "model";
  const segments = m[2]!.split("/");
  if (segments.at(-1) === "") segments.pop();
  const idLength =
    segments.length >= 2 && ACTIONS.has(segments[1]!) && segments.length >= 3 ? 1 : Math.min(2, segments.length);
  const id = checkRepoId(segments.slice(0, idLength).map(decodeSegment).join("/"));
  const rest = segments.slice(idLength);
  if (rest.length === 0) return { type, id, action: "info", revision: "HEAD", path: "" };
  const action = rest[0]!;
  if (!ACTIONS.has(action) || rest.length < 2) return undefined;
  const { revision, after } = takeRevision(rest.slice(1));
  checkRevision(revision);
  const path = after.length === 0 ? "" : checkFilePath(after.map(decodeSegment).join("/"));
  if (action !== "tree" && path !== "") return undefined;
  return { type, id, action: action as ApiTarget["action"], revision, path };
}

/** The git blob id (sha1) of some content. */
export function gitBlobSha1(content: Uint8Array): string {
  return createHash("sha1").update(`blob ${content.byteLength}\0`).update(content).digest("hex");
}

/** The git LFS pointer file of a blob, as the hub stores it in git. */
export function lfsPointer(sha256: string, size: number): Buffer {
  return Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha256}\nsize ${size}\n`);
}

/** One file of a pinned revision, with what the HF API reports about it. */
export interface FileEntry {
  path: string;
  sha256: string;
  size: number;
  lfs: boolean;
  /** The git blob id: of the content, or of the LFS pointer for LFS files. */
  oid: string;
  /** Size of the LFS pointer (LFS files only). */
  pointerSize: number;
}

/** Completes an entry with its git oid (from the pointer for LFS files). */
export function fileEntry(path: string, sha256: string, size: number, lfs: boolean, gitSha1: string): FileEntry {
  if (!lfs) return { path, sha256, size, lfs, oid: gitSha1, pointerSize: 0 };
  const pointer = lfsPointer(sha256, size);
  return { path, sha256, size, lfs, oid: gitBlobSha1(pointer), pointerSize: pointer.byteLength };
}

/**
 * Git tree ids of every directory of a set of files ("" is the root): entries sorted as git
 * sorts them (a directory compares as `name/`), files mode 100644, directories 40000.
 */
export function treeOids(files: Iterable<FileEntry>): Map<string, string> {
  const children = new Map<string, Map<string, { dir: boolean; oid?: string }>>();
  const dirOf = (p: string) => (p.includes("/") ? p.slice(0, p.lastIndexOf("/")) : "");
  const ensure = (dir: string) => {
    let c = children.get(dir);
    if (!c) {
      c = new Map();
      children.set(dir, c);
      if (dir !== "") {
        const parent = ensure(dirOf(dir));
        parent.set(dir.slice(dir.lastIndexOf("/") + 1), { dir: true });
      }
    }
    return c;
  };
  ensure("");
  for (const f of files)
    ensure(dirOf(f.path)).set(f.path.slice(f.path.lastIndexOf("/") + 1), { dir: false, oid: f.oid });
  const oids = new Map<string, string>();
  const hashDir = (dir: string): string => {
    const c = children.get(dir)!;
    const items = [...c.entries()].map(([name, v]) => ({
      name,
      key: v.dir ? `${name}/` : name,
      mode: v.dir ? "40000" : "100644",
      oid: v.dir ? hashDir(dir === "" ? name : `${dir}/${name}`) : v.oid!,
    }));
    items.sort((a, b) => Buffer.compare(Buffer.from(a.key), Buffer.from(b.key)));
    const body = Buffer.concat(items.flatMap((i) => [Buffer.from(`${i.mode} ${i.name}\0`), Buffer.from(i.oid, "hex")]));
    const oid = createHash("sha1").update(`tree ${body.byteLength}\0`).update(body).digest("hex");
    oids.set(dir, oid);
    return oid;
  };
  hashDir("");
  return oids;
}
