import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create, toJsonString, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { PermanentError, type ReceivedMessage } from "@nearhub/platform";
import { headers as natsHeaders } from "@nats-io/nats-core";
import {
  blobStored,
  mirrorAdded,
  mirrorFailed,
  mirrorPaused,
  mirrorRemoved,
  mirrorResumed,
  mirrorSynced,
  type EventDef,
} from "@nearhub/proto/events";
import { DocumentKind } from "@nearhub/proto/search";
import { MirrorState } from "@nearhub/proto/sync";
import { fromJsonString } from "@bufbuild/protobuf";
import { newQuery } from "./document.js";
import { projector } from "./projector.js";
import { SqliteSearchIndex } from "./sqlite-index.js";

let seq = 0;
/** A message as the bus hands it over: CloudEvents type and the proto3 JSON body. */
function message<S extends DescMessage>(event: EventDef<S>, body: MessageInitShape<S>, atMs?: number): ReceivedMessage {
  const data = new TextEncoder().encode(toJsonString(event.schema, create(event.schema, body)));
  return rawMessage(event.type, data, atMs);
}

function rawMessage(type: string | undefined, data: Uint8Array, atMs?: number): ReceivedMessage {
  seq++;
  const h = natsHeaders();
  if (atMs !== undefined) h.set("ce-time", new Date(atMs).toISOString());
  return {
    subject: `nearhub.events.${type ?? "x"}`,
    headers: h,
    data,
    type,
    id: `id-${seq}`,
    deliveryCount: 1,
    streamSequence: seq,
    decode: (event) => {
      try {
        return fromJsonString(event.schema, new TextDecoder().decode(data), { ignoreUnknownFields: true });
      } catch (error) {
        throw new PermanentError((error as Error).message);
      }
    },
  };
}

const added = (generation: bigint, state = MirrorState.PENDING, atMs = Number(generation) * 1000) =>
  message(
    mirrorAdded,
    {
      mirror: {
        name: "github.com/acme/rocket",
        upstream: "github.com",
        owner: "acme",
        repo: "rocket",
        state,
        generation,
        createdAt: timestampFromMs(Date.UTC(2026, 0, 1)),
        ...(state === MirrorState.IN_SYNC ? { lastSuccessAt: timestampFromMs(Date.UTC(2026, 0, 2)) } : {}),
        refCount: 12,
        sizeBytes: 4096n,
      },
    },
    atMs,
  );
const removed = (generation: bigint) => message(mirrorRemoved, { name: "github.com/acme/rocket", generation });
const NAME = "github.com/acme/rocket";

describe("projector: events in, documents out", () => {
  test("mirror.added makes a git document with owner, upstream, state and times", async () => {
    const index = new SqliteSearchIndex(":memory:");
    const outcomes: string[] = [];
    const project = projector(index, (type, outcome) => outcomes.push(`${type}:${outcome}`));
    await project(added(1n, MirrorState.IN_SYNC), new AbortController().signal);
    const doc = await index.get("github.com/acme/rocket");
    assert.equal(doc?.kind, DocumentKind.GIT_REPO);
    assert.equal(doc?.author, "acme");
    assert.equal(doc?.upstream, "github.com");
    assert.equal(doc?.state, "in_sync");
    assert.equal(doc?.createdAtMs, Date.UTC(2026, 0, 1));
    assert.equal(doc?.updatedAtMs, Date.UTC(2026, 0, 2));
    assert.equal(doc?.version, 1n);
    assert.equal(doc?.refsCount, 12);
    assert.equal(doc?.sizeBytes, 4096);
    assert.deepEqual(outcomes, [`${mirrorAdded.type}:applied`]);
    const found = await index.search(
      newQuery({ text: "rocket", filters: { upstream: "github.com", state: "in_sync" } }),
    );
    assert.deepEqual(
      found.hits.map((h) => h.id),
      ["github.com/acme/rocket"],
    );
    await index.close();
  });

  test("mirror.removed removes; a late, older added does not bring it back", async () => {
    const index = new SqliteSearchIndex(":memory:");
    const outcomes: string[] = [];
    const project = projector(index, (type, outcome) => outcomes.push(`${type}:${outcome}`));
    const signal = new AbortController().signal;
    await project(added(1n), signal);
    await project(removed(2n), signal);
    assert.equal(await index.get("github.com/acme/rocket"), undefined);
    await project(added(1n), signal);
    assert.equal(await index.get("github.com/acme/rocket"), undefined);
    await project(added(3n), signal);
    assert.equal((await index.get("github.com/acme/rocket"))?.version, 3n);
    assert.deepEqual(outcomes, [
      `${mirrorAdded.type}:applied`,
      `${mirrorRemoved.type}:applied`,
      `${mirrorAdded.type}:stale`,
      `${mirrorAdded.type}:applied`,
    ]);
    await index.close();
  });

  test("every order of the same events converges", async () => {
    const events = () => [added(1n), added(2n, MirrorState.SYNCING), added(4n, MirrorState.IN_SYNC), removed(3n)];
    const permutations = [
      [0, 1, 2, 3],
      [3, 2, 1, 0],
      [2, 0, 3, 1],
      [1, 3, 0, 2, 2, 1, 0, 3],
    ];
    const states: unknown[] = [];
    for (const order of permutations) {
      const index = new SqliteSearchIndex(":memory:");
      const project = projector(index);
      const all = events();
      for (const i of order) await project(all[i] as ReceivedMessage, new AbortController().signal);
      const doc = await index.get("github.com/acme/rocket");
      states.push({ state: doc?.state, version: doc?.version });
      await index.close();
    }
    for (const s of states) assert.deepEqual(s, { state: "in_sync", version: 4n });
  });

  test("synced, failed, paused and resumed change the state; an older status never wins", async () => {
    const index = new SqliteSearchIndex(":memory:");
    const project = projector(index);
    const signal = new AbortController().signal;
    const state = async () => (await index.get(NAME))?.state;
    // Status events for a mirror the index does not know are skipped.
    await project(message(mirrorSynced, { name: NAME }, 500), signal);
    assert.equal(await index.get(NAME), undefined);
    await project(added(1n, MirrorState.PENDING, 1000), signal);
    await project(
      message(mirrorSynced, { name: NAME, changes: [{ ref: "refs/heads/main", newSha: "a".repeat(40) }] }, 2000),
      signal,
    );
    assert.equal(await state(), "in_sync");
    // updatedAt is the later of the last success and creation (these event times are older).
    assert.equal((await index.get(NAME))?.updatedAtMs, Date.UTC(2026, 0, 1));
    await project(message(mirrorFailed, { name: NAME, error: "timeout", consecutiveFailures: 1 }, 3000), signal);
    assert.equal(await state(), "failed");
    await project(message(mirrorSynced, { name: NAME }, 2500), signal);
    assert.equal(await state(), "failed", "an older synced (a redelivery) does not win");
    await project(message(mirrorFailed, { name: NAME, error: "404", paused: true }, 4000), signal);
    assert.equal(await state(), "paused");
    await project(message(mirrorResumed, { name: NAME, by: "user" }, 5000), signal);
    assert.equal(await state(), "pending");
    await project(message(mirrorPaused, { name: NAME, reason: "maintenance", by: "user" }, 6000), signal);
    assert.equal(await state(), "paused");
    const found = await index.search(newQuery({ filters: { state: "paused" } }));
    assert.deepEqual(
      found.hits.map((h) => h.id),
      [NAME],
    );
    // A removal ends it: later status events do not bring the document back.
    await project(removed(2n), signal);
    await project(message(mirrorSynced, { name: NAME }, 7000), signal);
    assert.equal(await index.get(NAME), undefined);
    await index.close();
  });

  test("events the index does not use are skipped; malformed bodies are permanent errors", async () => {
    const index = new SqliteSearchIndex(":memory:");
    const outcomes: string[] = [];
    const project = projector(index, (type, outcome) => outcomes.push(`${type}:${outcome}`));
    const signal = new AbortController().signal;
    await project(message(blobStored, { blob: { sha256: "a".repeat(64), size: 1n } }), signal);
    await project(rawMessage(undefined, new Uint8Array()), signal);
    await project(message(mirrorAdded, {}), signal);
    assert.deepEqual(outcomes, [`${blobStored.type}:skipped`, "none:skipped", `${mirrorAdded.type}:skipped`]);
    await assert.rejects(
      project(rawMessage(mirrorAdded.type, new TextEncoder().encode("{not json")), signal),
      PermanentError,
    );
    assert.equal(await index.count(), 0);
    await index.close();
  });
});
