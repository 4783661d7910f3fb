import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import { createClient } from "@nearhub/platform";
import { StorageService } from "@nearhub/proto/storage";
import { LfsMirror, parseLfsPointer } from "./lfs-mirror.js";
import { TEST_GIT_ENV as ENV } from "./test-git.js";

const run = promisify(execFile);
const pointer = (oid: string, size: number) =>
  `version https://git-lfs.github.com/spec/v1\noid sha256:${oid}\nsize ${size}\n`;

describe("LFS pointers", () => {
  const oid = "ab".repeat(32);

  test("parses the spec's pointer files and nothing else", () => {
    assert.deepEqual(parseLfsPointer(pointer(oid, 12345)), { oid, size: 12345 });
    assert.deepEqual(
      parseLfsPointer(
        `version https://git-lfs.github.com/spec/v1\next-0-foo sha256:${"1".repeat(64)}\noid sha256:${oid}\nsize 1\n`,
      ),
      { oid, size: 1 },
    );
    for (const bad of [
      "hello world\n",
      pointer("AB".repeat(32), 1),
      pointer("ab".repeat(31), 1),
      pointer(oid, -1),
      `version https://example.com/spec/v1\noid sha256:${oid}\nsize 1\n`,
      `version https://git-lfs.github.com/spec/v1\noid sha256:${oid}\n`,
      pointer(oid, 1) + "x".repeat(1100),
    ]) {
      assert.equal(parseLfsPointer(bad), undefined, bad.slice(0, 60));
    }
  });

  describe("scan of a real repository", () => {
    let dir: string;
    let repo: string;
    let first: string;
    let second: string;
    const oids = [randomBytes(32).toString("hex"), randomBytes(32).toString("hex")];
    before(async () => {
      dir = await mkdtemp(join(tmpdir(), "nearhub-lfs-scan-"));
      repo = join(dir, "wt");
      await run("git", ["init", "-q", "-b", "main", repo], { env: ENV });
      await writeFile(join(repo, "a.bin"), pointer(oids[0] ?? "", 10));
      await writeFile(join(repo, "big.txt"), randomBytes(5000));
      await writeFile(join(repo, "small.txt"), "not a pointer\n");
      await run("git", ["add", "."], { cwd: repo, env: ENV });
      await run("git", ["commit", "-q", "-m", "one"], { cwd: repo, env: ENV });
      first = (await run("git", ["rev-parse", "HEAD"], { cwd: repo, env: ENV })).stdout.trim();
      await writeFile(join(repo, "dir-b.bin"), pointer(oids[1] ?? "", 20));
      await run("git", ["add", "."], { cwd: repo, env: ENV });
      await run("git", ["commit", "-q", "-m", "two"], { cwd: repo, env: ENV });
      second = (await run("git", ["rev-parse", "HEAD"], { cwd: repo, env: ENV })).stdout.trim();
    });
    after(() => rm(dir, { recursive: true, force: true }));

    // Storage is not called by scan or the index; a client to a closed port proves it.
    const lfs = new LfsMirror({
      storage: createClient(StorageService, "127.0.0.1:1"),
      tokens: new Map(),
      timeoutMs: 1000,
    });

    test("finds the pointers of new commits only", async () => {
      const all = await lfs.scan(repo, [second], [], 30_000);
      assert.deepEqual(all.map((p) => p.oid).sort(), [...oids].sort());
      const fresh = await lfs.scan(repo, [second], [first], 30_000);
      assert.deepEqual(fresh, [{ oid: oids[1], size: 20, path: "dir-b.bin" }]);
      assert.deepEqual(await lfs.scan(repo, [], [], 30_000), []);
    });

    test("keeps a per-repository index, merged and read back", async () => {
      assert.equal(lfs.hasIndex(repo), false);
      await lfs.record(repo, [{ oid: oids[0] ?? "", size: 10, path: "a.bin" }]);
      await lfs.record(repo, [{ oid: oids[1] ?? "", size: 20, path: "dir-b.bin" }]);
      const index = await lfs.read(repo);
      assert.equal(index.get(oids[0] ?? ""), 10);
      assert.equal(index.get(oids[1] ?? ""), 20);
      assert.equal(index.size, 2);
    });

    test("refuses file:// upstreams for LFS with a message", async () => {
      await assert.rejects(
        lfs.fetch("local", "file:///srv/x.git", [
          { oid: createHash("sha256").update("x").digest("hex"), size: 1, path: "x" },
        ]),
        /http\(s\) upstream/,
      );
    });
  });
});
