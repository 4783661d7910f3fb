import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { MessageHandler } from "@nearhub/platform";
import { DocumentKind } from "@nearhub/proto/search";
import { mirrorAdded, mirrorRemoved } from "@nearhub/proto/events";
import type { SqliteSearchIndex } from "./sqlite-index.js";

/**
 * Turns events into index operations. Idempotent and order-safe: every document carries the
 * generation of the event that produced it, and an older generation never wins. Event types
 * the index does not use are acknowledged and skipped.
 */
export function projector(index: SqliteSearchIndex): MessageHandler {
  return async (message) => {
    switch (message.type) {
      case mirrorAdded.type: {
        const { mirror } = message.decode(mirrorAdded);
        if (!mirror?.name) return;
        index.upsert({
          id: mirror.name,
          kind: DocumentKind.GIT_REPO,
          title: mirror.name,
          description: `${mirror.owner}/${mirror.repo} mirrored from ${mirror.upstream}`,
          body: [mirror.upstream, mirror.owner, mirror.repo].join(" "),
          updatedAtMs: mirror.createdAt ? timestampMs(mirror.createdAt) : Date.now(),
          version: mirror.generation,
        });
        return;
      }
      case mirrorRemoved.type: {
        const removed = message.decode(mirrorRemoved);
        if (!removed.name) return;
        index.remove(removed.name, removed.generation);
        return;
      }
      default:
        return;
    }
  };
}
