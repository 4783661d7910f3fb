import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { promisify } from "node:util";
import { tempDir } from "@nearhub/testing";
import { HfError, fileEntry, gitBlobSha1, lfsPointer, parseApiUrl, parseFileUrl, treeOids } from "./hf-names.js";
import { parseRange } from "./hf-routes.js";
import { stripXet } from "./hf-upstream.js";

const run = promisify(execFile);

describe("HF URL parsing", () => {
  test("file URLs: models, datasets, spaces, ownerless ids, encoded and raw revisions, nested paths", () => {
    assert.deepEqual(parseFileUrl("/gpt2/resolve/main/config.json"), {
      type: "model",
      id: "gpt2",
      revision: "main",
      path: "config.json",
    });
    assert.deepEqual(parseFileUrl("/acme/bert/resolve/refs%2Fpr%2F1/a/b%20c.bin"), {
      type: "model",
      id: "acme/bert",
      revision: "refs/pr/1",
      path: "a/b c.bin",
    });
    assert.deepEqual(parseFileUrl("/acme/bert/resolve/refs/pr/7/x.json"), {
      type: "model",
      id: "acme/bert",
      revision: "refs/pr/7",
      path: "x.json",
    });
    assert.equal(parseFileUrl("/datasets/acme/squad/resolve/main/data/train.csv")?.type, "dataset");
    assert.equal(parseFileUrl("/spaces/acme/demo/raw/HEAD/app.py")?.type, "space");
    assert.equal(parseFileUrl("/acme/bert/tree/main"), undefined);
  });

  test("hostile file URLs are 400s that say what to fix", () => {
    for (const bad of [
      "/acme/bert/resolve/main/..%2Fsecret",
      "/acme/bert/resolve/main/a%2F..%2F..%2Fb",
      "/acme/bert/resolve/main/%2Fetc%2Fpasswd",
      "/acme/bert/resolve/main/a%5Cb",
      "/acme/bert/resolve/main/a%00b",
      "/acme/bert/resolve/..%2Fmain/x",
      "/acme/bert/resolve/ma%ZZin/x",
      "/..%2F..%2Fx/bert/resolve/main/x",
      "/acme/be--rt/resolve/main/x",
      `/acme/bert/resolve/main/${"a".repeat(1100)}`,
    ]) {
      assert.throws(
        () => parseFileUrl(bad),
        (e: unknown) => e instanceof HfError && e.status === 400,
        bad,
      );
    }
  });

  test("API URLs: info, revision, tree with a path, paths-info", () => {
    assert.deepEqual(parseApiUrl("/api/models/gpt2"), {
      type: "model",
      id: "gpt2",
      action: "info",
      revision: "HEAD",
      path: "",
    });
    assert.deepEqual(parseApiUrl("/api/models/gpt2/revision/main"), {
      type: "model",
      id: "gpt2",
      action: "revision",
      revision: "main",
      path: "",
    });
    assert.deepEqual(parseApiUrl("/api/datasets/acme/squad/tree/main/data"), {
      type: "dataset",
      id: "acme/squad",
      action: "tree",
      revision: "main",
      path: "data",
    });
    assert.equal(parseApiUrl("/api/models/acme/bert/paths-info/refs%2Fpr%2F2")?.revision, "refs/pr/2");
    assert.equal(parseApiUrl("/api/models/acme/bert/unknown/main"), undefined);
  });
});

describe("byte ranges", () => {
  test("single ranges, suffixes, open ends, and what cannot be satisfied", () => {
    assert.deepEqual(parseRange("bytes=0-0", 10), { start: 0, end: 0 });
    assert.deepEqual(parseRange("bytes=4-", 10), { start: 4, end: 9 });
    assert.deepEqual(parseRange("bytes=-3", 10), { start: 7, end: 9 });
    assert.deepEqual(parseRange("bytes=2-100", 10), { start: 2, end: 9 });
    for (const bad of [
      "bytes=10-",
      "bytes=5-4",
      "bytes=-0",
      "bytes=-",
      "bytes=0-1,3-4",
      "lines=0-1",
      "bytes=x-1",
      `bytes=${"9".repeat(30)}-`,
    ]) {
      assert.equal(parseRange(bad, 10), "unsatisfiable", bad);
    }
  });
});

describe("git object ids", () => {
  test("blob, LFS pointer and tree ids equal what git computes", async () => {
    const dir = await tempDir("nearhub-hf-git-");
    try {
      const env = { ...process.env, GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null" };
      const files: Record<string, Buffer> = {
        "config.json": Buffer.from('{"a":1}'),
        "empty.txt": Buffer.alloc(0),
        "a-b.txt": Buffer.from("dash sorts before slash"),
        "a/b.txt": Buffer.from("nested"),
        "a/c/d.bin": lfsPointer("ab".repeat(32), 1234),
        "a.txt": Buffer.from("dot sorts before slash"),
      };
      await run("git", ["init", "-q", dir.path], { env });
      for (const [path, content] of Object.entries(files)) {
        await mkdir(join(dir.path, path, ".."), { recursive: true });
        await writeFile(join(dir.path, path), content);
      }
      await run("git", ["-C", dir.path, "add", "-A"], { env });
      const { stdout: root } = await run("git", ["-C", dir.path, "write-tree"], { env });
      const entries = Object.entries(files).map(([path, content]) =>
        path === "a/c/d.bin"
          ? fileEntry(path, "ab".repeat(32), 1234, true, "")
          : fileEntry(path, "", content.length, false, gitBlobSha1(content)),
      );
      const oids = treeOids(entries);
      assert.equal(oids.get(""), root.trim());
      const { stdout: sub } = await run("git", ["-C", dir.path, "rev-parse", `${root.trim()}:a`], { env });
      assert.equal(oids.get("a"), sub.trim());
      const { stdout: blob } = await run("git", ["-C", dir.path, "rev-parse", `${root.trim()}:a/c/d.bin`], { env });
      assert.equal(entries.find((e) => e.path === "a/c/d.bin")?.oid, blob.trim());
    } finally {
      await dir.cleanup();
    }
  });
});

test("stripXet removes every Xet field, nested included", () => {
  assert.deepEqual(
    stripXet({ a: 1, xetHash: "x", siblings: [{ rfilename: "f", xetHash: "y", lfs: { xet_info: 1, sha256: "s" } }] }),
    {
      a: 1,
      siblings: [{ rfilename: "f", lfs: { sha256: "s" } }],
    },
  );
});
