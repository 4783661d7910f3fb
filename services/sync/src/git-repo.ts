import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, open, readFile, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join, resolve, sep } from "node:path";
import { Code, NearhubError } from "@nearhub/platform";

/** Ref name → sha. */
export type RefMap = Map<string, string>;

/** The archive namespace: old tips of deleted and force-pushed refs, `refs/archive/<unix-s>/<ref>`. */
export const ARCHIVE_PREFIX = "refs/archive/";

/**
 * Where bare repositories live: `<data>/git/repos/<upstream>/<owner>/<repo>.git`, and staging
 * folders for quarantined fetches and first clones in `<data>/git/tmp`.
 */
export class RepoLayout {
  readonly repos: string;
  readonly tmp: string;

  constructor(dataDir: string) {
    const root = resolve(dataDir, "git");
    this.repos = join(root, "repos");
    this.tmp = join(root, "tmp");
  }

  /** The bare repository of a mirror; refuses any name that would leave the repos folder. */
  pathOf(name: string): string {
    const path = resolve(this.repos, `${name}.git`);
    if (!path.startsWith(this.repos + sep) || name.includes("\0") || /[\r\n]/.test(name)) {
      throw new NearhubError(
        Code.InvalidArgument,
        `mirror name ${JSON.stringify(name.slice(0, 200))} is not a valid path`,
      );
    }
    return path;
  }

  /** A fresh staging folder path (not created). */
  stagingPath(): string {
    return join(this.tmp, `${randomUUID()}.git`);
  }

  /** Removes staging folders a crashed or killed sync left behind; returns how many. */
  async recoverLeftovers(): Promise<number> {
    await mkdir(this.tmp, { recursive: true });
    await mkdir(this.repos, { recursive: true });
    const entries = await readdir(this.tmp);
    await Promise.all(entries.map((e) => rm(join(this.tmp, e), { recursive: true, force: true })));
    return entries.length;
  }
}

/** Parses a packed-refs file (peeled `^` lines and the header are skipped). */
export function parsePackedRefs(text: string): RefMap {
  const refs: RefMap = new Map();
  for (const line of text.split("\n")) {
    if (line.length < 42 || line.startsWith("#") || line.startsWith("^")) continue;
    const space = line.indexOf(" ");
    refs.set(line.slice(space + 1), line.slice(0, space));
  }
  return refs;
}

/** Every ref of a served repository (they are kept only in packed-refs), or empty when none. */
export async function readRefs(repo: string): Promise<RefMap> {
  try {
    return parsePackedRefs(await readFile(join(repo, "packed-refs"), "utf8"));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return new Map();
    throw error;
  }
}

/**
 * Replaces every ref of the repository at once: a new packed-refs file is written beside the
 * old one, flushed, and renamed over it, so a reader (upload-pack) sees either the old set or
 * the new set, never a mix. Served repositories keep no loose refs, so packed-refs is the truth.
 */
export async function writeRefs(repo: string, refs: RefMap): Promise<void> {
  const names = [...refs.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const body = "# pack-refs with: sorted \n" + names.map((n) => `${refs.get(n) ?? ""} ${n}\n`).join("");
  const tmp = join(repo, `packed-refs.${randomUUID()}.new`);
  const handle = await open(tmp, "w");
  try {
    await handle.writeFile(body);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(tmp, join(repo, "packed-refs"));
}

/** Points HEAD at a branch, atomically (write then rename). */
export async function writeHead(repo: string, ref: string): Promise<void> {
  const tmp = join(repo, `HEAD.${randomUUID()}.new`);
  await writeFile(tmp, `ref: ${ref}\n`);
  await rename(tmp, join(repo, "HEAD"));
}

/** The branch HEAD points at, or undefined. */
export async function readHead(repo: string): Promise<string | undefined> {
  const text = await readFile(join(repo, "HEAD"), "utf8").catch(() => "");
  return /^ref: (\S+)/.exec(text)?.[1];
}

/**
 * Moves the packs (and any loose objects) a quarantined fetch wrote into the served
 * repository. Each `.pack` goes before its `.idx`, because git finds packs by their index:
 * a reader never sees an index without its pack. Returns the bytes moved.
 */
export async function adoptObjects(staging: string, repo: string): Promise<number> {
  let bytes = 0;
  const fromPack = join(staging, "objects", "pack");
  const toPack = join(repo, "objects", "pack");
  await mkdir(toPack, { recursive: true });
  const files = existsSync(fromPack) ? await readdir(fromPack) : [];
  const order = (f: string) => (f.endsWith(".pack") ? 0 : f.endsWith(".rev") ? 1 : f.endsWith(".idx") ? 2 : 3);
  for (const f of files.filter((f) => !f.endsWith(".keep")).sort((a, b) => order(a) - order(b))) {
    bytes += (await stat(join(fromPack, f))).size;
    await rename(join(fromPack, f), join(toPack, f));
  }
  const objects = join(staging, "objects");
  for (const dir of await readdir(objects)) {
    if (!/^[0-9a-f]{2}$/.test(dir)) continue;
    await mkdir(join(repo, "objects", dir), { recursive: true });
    for (const f of await readdir(join(objects, dir))) {
      bytes += (await stat(join(objects, dir, f))).size;
      await rename(join(objects, dir, f), join(repo, "objects", dir, f));
    }
  }
  return bytes;
}

/** Bytes on disk under a folder. */
export async function diskUsage(path: string): Promise<number> {
  let total = 0;
  let entries;
  try {
    entries = await readdir(path, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const full = join(path, e.name);
    if (e.isDirectory()) total += await diskUsage(full);
    else if (e.isFile()) total += (await stat(full).catch(() => ({ size: 0 }))).size;
  }
  return total;
}

/** Creates the parent folders of a path. */
export async function ensureParent(path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
}
