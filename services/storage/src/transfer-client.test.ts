import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Code, NearhubError, createClient } from "@nearhub/platform";
import { StorageService } from "@nearhub/proto/storage";
import { tempDir } from "@nearhub/testing";
import { uploadFile } from "./transfer-client.js";

test("an upload that gives up on an unreachable storage says what failed and that the same command continues it", async () => {
  const dir = await tempDir();
  // Port 1 on loopback: nothing listens, the connection is refused at once.
  const client = createClient(StorageService, "127.0.0.1:1", { timeoutMs: 2_000 });
  try {
    const path = join(dir.path, "weights.bin");
    await writeFile(path, Buffer.alloc(1024, 7));
    await assert.rejects(uploadFile(client, path, { attempts: 1 }), (error: unknown) => {
      assert.ok(error instanceof NearhubError);
      assert.equal(error.code, Code.Unavailable);
      assert.match(
        error.message,
        /^uploading .*weights\.bin: .*StorageService\/PutBlob at 127\.0\.0\.1:1 is unavailable/,
      );
      assert.match(error.message, /; run the same command again to continue where it stopped$/);
      assert.doesNotMatch(error.message, /Resolution note/);
      return true;
    });
  } finally {
    client.$close();
    await dir.cleanup();
  }
});
