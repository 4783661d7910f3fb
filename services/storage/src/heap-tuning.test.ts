import { test } from "node:test";
import assert from "node:assert/strict";
import { STREAMING_MALLOC_TUNABLES, streamingMallocEnv } from "./heap-tuning.js";

test("streamingMallocEnv sets the malloc tunables, keeping those already set and the operator's own values", () => {
  assert.equal(streamingMallocEnv(undefined), STREAMING_MALLOC_TUNABLES);
  assert.equal(streamingMallocEnv(""), STREAMING_MALLOC_TUNABLES);
  assert.equal(streamingMallocEnv("glibc.malloc.arena_max=2"), `glibc.malloc.arena_max=2:${STREAMING_MALLOC_TUNABLES}`);
  // An operator's own threshold wins; only the missing one is added.
  assert.equal(
    streamingMallocEnv("glibc.malloc.mmap_threshold=1048576"),
    "glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold=268435456",
  );
  assert.equal(streamingMallocEnv(STREAMING_MALLOC_TUNABLES), STREAMING_MALLOC_TUNABLES);
});
