import { fromJsonString, toJsonString } from "@bufbuild/protobuf";
import type { KV } from "@nats-io/kv";
import { Code, NearhubError } from "@nearhub/platform";
import { MirrorSchema, type Mirror } from "@nearhub/proto/sync";
import { readAll } from "./kv-snapshot.js";

/** A stored mirror with its KV revision, for compare-and-set updates. */
export interface StoredMirror {
  mirror: Mirror;
  revision: number;
}

// KV keys may not hold every character a repository name can (a trailing '.', say), so keys
// are the base64url of the name.
const keyOf = (name: string) => Buffer.from(name, "utf8").toString("base64url");
const nameOf = (key: string) => Buffer.from(key, "base64url").toString("utf8");

/** Mirror definitions in the `mirrors` KV bucket, which only the sync service writes. */
export class MirrorStore {
  constructor(private readonly kv: KV) {}

  /** The mirror, or undefined. */
  async get(name: string): Promise<StoredMirror | undefined> {
    const entry = await this.kv.get(keyOf(name));
    if (!entry || entry.operation !== "PUT" || entry.length === 0) return undefined;
    return { mirror: fromJsonString(MirrorSchema, entry.string()), revision: entry.revision };
  }

  /** Creates the mirror; fails with ALREADY_EXISTS when another writer created it first. */
  async create(mirror: Mirror): Promise<number> {
    try {
      return await this.kv.create(keyOf(mirror.name), toJsonString(MirrorSchema, mirror));
    } catch (error) {
      throw new NearhubError(Code.AlreadyExists, `mirror ${mirror.name} was created concurrently; retry`, {
        cause: error,
      });
    }
  }

  /** Replaces the mirror if it is still at `revision`; ABORTED when it changed meanwhile. */
  async update(mirror: Mirror, revision: number): Promise<number> {
    try {
      return await this.kv.update(keyOf(mirror.name), toJsonString(MirrorSchema, mirror), revision);
    } catch (error) {
      throw new NearhubError(Code.Aborted, `mirror ${mirror.name} changed concurrently; retry`, { cause: error });
    }
  }

  /** Removes the mirror; false when there was none. */
  async remove(name: string): Promise<boolean> {
    const existing = await this.get(name);
    if (!existing) return false;
    await this.kv.delete(keyOf(name), { previousSeq: existing.revision });
    return true;
  }

  /** Every mirror whose name starts with `prefix`, sorted by name (one watcher pass over the bucket). */
  async list(prefix = ""): Promise<Mirror[]> {
    const out: Mirror[] = [];
    for (const [key, entry] of await readAll(this.kv)) {
      if (!nameOf(key).startsWith(prefix)) continue;
      out.push(fromJsonString(MirrorSchema, entry.string()));
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }
}
