import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { MessageHandler, ReceivedMessage } from "@nearhub/platform";
import {
  mirrorAdded,
  mirrorFailed,
  mirrorPaused,
  mirrorRemoved,
  mirrorResumed,
  mirrorSynced,
} from "@nearhub/proto/events";
import { DocumentKind } from "@nearhub/proto/search";
import { MirrorState, type Mirror } from "@nearhub/proto/sync";
import { newDocument, type IndexOp, type SearchDocument, type SearchIndex } from "./document.js";

/** Turns one event into index operations (none when the event carries nothing to index). */
export type EventHandler = (message: ReceivedMessage, index: SearchIndex) => Promise<IndexOp[]>;

const ms = (t: Timestamp | undefined): number => (t ? timestampMs(t) : 0);

/** The event's CloudEvents time (`ce-time`); the time of handling when it has none. */
export function eventTime(message: ReceivedMessage): number {
  const raw = message.headers?.has("ce-time") ? message.headers.get("ce-time") : "";
  const at = raw ? Date.parse(raw) : NaN;
  return Number.isFinite(at) ? at : Date.now();
}

/** `MIRROR_STATE_IN_SYNC` → `in_sync`: the form filters and the Hub-style API use. */
export function mirrorStateName(state: MirrorState): string {
  return (MirrorState[state] ?? "UNSPECIFIED").toLowerCase();
}

/** The document of a git mirror, from its definition and state. */
export function mirrorDocument(mirror: Mirror, statusAtMs = 0): SearchDocument {
  return newDocument({
    id: mirror.name,
    kind: DocumentKind.GIT_REPO,
    title: mirror.name,
    description: `${mirror.owner}/${mirror.repo} mirrored from ${mirror.upstream}`,
    body: [mirror.upstream, mirror.owner, mirror.repo].join(" "),
    author: mirror.owner,
    upstream: mirror.upstream,
    state: mirror.state === MirrorState.UNSPECIFIED ? "" : mirrorStateName(mirror.state),
    refsCount: mirror.refCount,
    sizeBytes: Number(mirror.sizeBytes),
    createdAtMs: ms(mirror.createdAt),
    updatedAtMs: Math.max(ms(mirror.lastSuccessAt), ms(mirror.createdAt)),
    statusAtMs,
    version: mirror.generation,
  });
}

/**
 * A status change of an indexed git mirror. Status events carry no generation, so the
 * document keeps its version and the event's time orders statuses: an older status (a replay,
 * a redelivery) never overwrites a newer one, and a removed mirror stays removed.
 */
async function patchStatus(
  index: SearchIndex,
  name: string,
  at: number,
  patch: (doc: SearchDocument) => Partial<SearchDocument>,
): Promise<IndexOp[]> {
  if (!name) return [];
  const doc = await index.get(name);
  if (!doc || at < doc.statusAtMs) return [];
  return [{ upsert: { ...doc, ...patch(doc), statusAtMs: at } }];
}

/**
 * One small handler per event type. Definitions build whole documents; status events patch
 * the stored one. Applying an event twice, or an older one after a newer, leaves the index as
 * the newest event made it.
 */
export const handlers: Record<string, EventHandler> = {
  [mirrorAdded.type]: async (message) => {
    const { mirror } = message.decode(mirrorAdded);
    if (!mirror?.name) return [];
    return [{ upsert: mirrorDocument(mirror, eventTime(message)) }];
  },
  [mirrorRemoved.type]: async (message) => {
    const removed = message.decode(mirrorRemoved);
    if (!removed.name) return [];
    return [{ remove: { id: removed.name, version: removed.generation } }];
  },
  [mirrorSynced.type]: async (message, index) => {
    const synced = message.decode(mirrorSynced);
    const at = eventTime(message);
    return patchStatus(index, synced.name, at, (doc) => ({
      state: mirrorStateName(MirrorState.IN_SYNC),
      updatedAtMs: Math.max(doc.updatedAtMs, at),
    }));
  },
  [mirrorFailed.type]: async (message, index) => {
    const failed = message.decode(mirrorFailed);
    return patchStatus(index, failed.name, eventTime(message), () => ({
      state: mirrorStateName(failed.paused ? MirrorState.PAUSED : MirrorState.FAILED),
    }));
  },
  [mirrorPaused.type]: async (message, index) => {
    const paused = message.decode(mirrorPaused);
    return patchStatus(index, paused.name, eventTime(message), () => ({ state: mirrorStateName(MirrorState.PAUSED) }));
  },
  [mirrorResumed.type]: async (message, index) => {
    const resumed = message.decode(mirrorResumed);
    return patchStatus(index, resumed.name, eventTime(message), () => ({
      state: mirrorStateName(MirrorState.PENDING),
    }));
  },
};

/** Counts what the projector did, for the service's metrics. */
export type ProjectorObserver = (eventType: string, outcome: "applied" | "stale" | "skipped") => void;

/**
 * Turns events into index operations on `index`. Idempotent and order-safe: every document
 * carries the generation of the event that produced it, and an older generation never wins.
 * Event types the index does not use are acknowledged and skipped.
 */
export function projector(
  index: SearchIndex,
  observe: ProjectorObserver = () => undefined,
  extra: Record<string, EventHandler> = {},
): MessageHandler {
  const all = { ...handlers, ...extra };
  return async (message) => {
    const type = message.type ?? "";
    const handler = all[type];
    if (!handler) {
      observe(type || "none", "skipped");
      return;
    }
    const ops = await handler(message, index);
    if (ops.length === 0) {
      observe(type, "skipped");
      return;
    }
    const applied = await index.apply(ops);
    for (const a of applied) observe(type, a ? "applied" : "stale");
  };
}
