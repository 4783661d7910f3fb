import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import type { KV } from "@nats-io/kv";
import { Code, NearhubError } from "@nearhub/platform";
import { MirrorState, MirrorStatusSchema, type MirrorStatus } from "@nearhub/proto/sync";
import { readAll } from "./kv-snapshot.js";

const keyOf = (name: string) => Buffer.from(name, "utf8").toString("base64url");
const nameOf = (key: string) => Buffer.from(key, "base64url").toString("utf8");

/**
 * The sync engine's runtime record per mirror (state, lease, last success and error, backoff)
 * in the `mirror-status` bucket, apart from the definitions so that a sync never races a
 * user's edit. Every write is compare-and-set.
 */
export class StatusStore {
  constructor(readonly kv: KV) {}

  /** The status, or a fresh PENDING one. */
  async get(name: string): Promise<{ status: MirrorStatus; revision: number }> {
    const entry = await this.kv.get(keyOf(name));
    if (!entry || entry.operation !== "PUT" || entry.length === 0) {
      return { status: create(MirrorStatusSchema, { name, state: MirrorState.PENDING }), revision: 0 };
    }
    return {
      status: fromJsonString(MirrorStatusSchema, entry.string(), { ignoreUnknownFields: true }),
      revision: entry.revision,
    };
  }

  /**
   * Applies `change` with compare-and-set, retrying on conflicts. `change` returns false to
   * leave the record as it is (and `update` then resolves undefined).
   */
  async update(name: string, change: (status: MirrorStatus) => boolean | void): Promise<MirrorStatus | undefined> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const { status, revision } = await this.get(name);
      if (change(status) === false) return undefined;
      const body = toJsonString(MirrorStatusSchema, status);
      try {
        if (revision === 0) await this.kv.create(keyOf(name), body);
        else await this.kv.update(keyOf(name), body, revision);
        return status;
      } catch (error) {
        if (!/wrong last sequence|key exists|already exists/i.test((error as Error).message)) throw error;
      }
    }
    throw new NearhubError(Code.Aborted, `status of ${name} kept changing concurrently; retry`);
  }

  /** Forgets a mirror's status. */
  async remove(name: string): Promise<void> {
    await this.kv.purge(keyOf(name));
  }

  /** Every status, keyed by mirror name (one watcher pass over the bucket). */
  async all(): Promise<Map<string, MirrorStatus>> {
    const out = new Map<string, MirrorStatus>();
    for (const [key, entry] of await readAll(this.kv)) {
      out.set(nameOf(key), fromJsonString(MirrorStatusSchema, entry.string(), { ignoreUnknownFields: true }));
    }
    return out;
  }
}
