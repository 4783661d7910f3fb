import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, publishAudit, type Bus, type ServiceImpl } from "@nearhub/platform";
import { MirrorSchema, MirrorState, type SyncService } from "@nearhub/proto/sync";
import { mirrorAdded, mirrorRemoved } from "@nearhub/proto/events";
import { parseInterval, parseMirrorName, parseRefs } from "./mirror-name.js";
import type { MirrorStore } from "./mirror-store.js";

/** Dependencies of the SyncService implementation. */
export interface SyncApiDeps {
  store: MirrorStore;
  bus: Bus;
  upstreams: ReadonlyMap<string, string>;
}

/**
 * nearhub.sync.v1.SyncService: mirror definitions. Every change is written to KV (compare-
 * and-set), then published as an event and an audit record, both awaited: a caller that got
 * an answer can rely on downstream services hearing of it.
 */
export function syncApi({ store, bus, upstreams }: SyncApiDeps): ServiceImpl<typeof SyncService> {
  return {
    async addMirror(request, ctx) {
      const name = parseMirrorName(request.name, upstreams);
      const intervalSeconds = parseInterval(request.intervalSeconds);
      const refs = parseRefs(request.refs);
      const existing = await store.get(name.full);
      if (existing) {
        const m = existing.mirror;
        if (m.intervalSeconds === intervalSeconds && m.refs === refs && m.lfs === request.lfs) {
          return { mirror: m, created: false };
        }
        const updated = create(MirrorSchema, {
          ...m,
          intervalSeconds,
          refs,
          lfs: request.lfs,
          generation: m.generation + 1n,
        });
        await store.update(updated, existing.revision);
        await bus.publishEvent(
          mirrorAdded,
          { mirror: updated },
          { id: `mirror.added:${updated.name}:${updated.generation}` },
        );
        await publishAudit(bus, "sync", { action: "mirror.update", resource: updated.name }, ctx);
        return { mirror: updated, created: false };
      }
      const mirror = create(MirrorSchema, {
        name: name.full,
        upstream: name.upstream,
        owner: name.owner,
        repo: name.repo,
        intervalSeconds,
        refs,
        lfs: request.lfs,
        state: MirrorState.PENDING,
        createdAt: timestampNow(),
        generation: 1n,
      });
      await store.create(mirror);
      await bus.publishEvent(mirrorAdded, { mirror }, { id: `mirror.added:${mirror.name}:${mirror.generation}` });
      await publishAudit(bus, "sync", { action: "mirror.add", resource: mirror.name }, ctx);
      return { mirror, created: true };
    },

    async getMirror(request) {
      const name = parseMirrorName(request.name, upstreams);
      const stored = await store.get(name.full);
      if (!stored) {
        throw new NearhubError(
          Code.NotFound,
          `no mirror named ${name.full}; add it with: nearhub mirror add ${name.full}`,
        );
      }
      return { mirror: stored.mirror };
    },

    async listMirrors(request) {
      if (request.prefix.length > 300)
        throw new NearhubError(Code.InvalidArgument, "prefix is longer than 300 characters");
      return { mirrors: await store.list(request.prefix) };
    },

    async removeMirror(request, ctx) {
      const name = parseMirrorName(request.name, upstreams);
      const existing = await store.get(name.full);
      if (!existing) return { removed: false };
      await store.remove(name.full);
      const generation = existing.mirror.generation + 1n;
      await bus.publishEvent(
        mirrorRemoved,
        { name: name.full, generation },
        { id: `mirror.removed:${name.full}:${generation}` },
      );
      await publishAudit(bus, "sync", { action: "mirror.remove", resource: name.full }, ctx);
      return { removed: true };
    },
  };
}
