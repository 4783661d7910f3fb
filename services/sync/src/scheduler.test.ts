import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { MirrorSchema, MirrorState, MirrorStatusSchema } from "@nearhub/proto/sync";
import { nextDueMs } from "./sync-engine.js";
import { mirrorView } from "./sync-api.js";

const def = create(MirrorSchema, {
  name: "github.com/a/b",
  intervalSeconds: 300,
  createdAt: timestampFromMs(1_000_000),
});

describe("scheduling", () => {
  test("a new mirror is due at once; then every interval plus a stable jitter under 10%", () => {
    assert.equal(nextDueMs(def, undefined), 1_000_000);
    const s = create(MirrorStatusSchema, { lastRunFinishedAt: timestampFromMs(2_000_000) });
    const due = nextDueMs(def, s);
    assert.ok(due >= 2_000_000 + 300_000 && due < 2_000_000 + 330_000, String(due));
    assert.equal(nextDueMs(def, s), due, "every replica computes the same due time (and msgID)");
    const other = nextDueMs(create(MirrorSchema, { ...def, name: "github.com/a/c" }), s);
    assert.notEqual(other, due, "mirrors are spread out");
  });

  test("after failures the backoff decides; otherwise it only postpones", () => {
    const failed = create(MirrorStatusSchema, {
      lastRunFinishedAt: timestampFromMs(2_000_000),
      consecutiveFailures: 1,
      notBefore: timestampFromMs(2_030_000),
    });
    assert.equal(nextDueMs(def, failed), 2_030_000);
    const limited = create(MirrorStatusSchema, {
      lastRunFinishedAt: timestampFromMs(2_000_000),
      notBefore: timestampFromMs(9_000_000),
    });
    assert.equal(nextDueMs(def, limited), 9_000_000);
  });

  test("the view folds status into the definition: lag from the last success, next sync unless paused", () => {
    const s = create(MirrorStatusSchema, {
      state: MirrorState.IN_SYNC,
      lastSuccessAt: timestampFromMs(10_000),
      lastRunFinishedAt: timestampFromMs(10_000),
      sizeBytes: 4096n,
      refCount: 3,
    });
    const view = mirrorView(def, s, 70_000);
    assert.equal(view.state, MirrorState.IN_SYNC);
    assert.equal(view.lagSeconds, 60n);
    assert.equal(view.sizeBytes, 4096n);
    assert.ok(view.nextSyncAt);
    const paused = mirrorView(
      def,
      create(MirrorStatusSchema, { state: MirrorState.PAUSED, pausedReason: "x" }),
      70_000,
    );
    assert.equal(paused.pausedReason, "x");
    assert.equal(paused.nextSyncAt, undefined);
    assert.equal(mirrorView(def, undefined).state, MirrorState.PENDING);
  });
});
