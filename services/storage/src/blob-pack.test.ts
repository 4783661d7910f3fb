import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { appendFile, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, test } from "node:test";
import { Code, NearhubError } from "@nearhub/platform";
import { BlobPack } from "./blob-pack.js";
import { FsBlobStore } from "./fs-blob-store.js";

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");
/** A record's header (see blob-pack.ts). */
const HEADER = 64;

const roots: string[] = [];
after(async () => {
  await Promise.all(roots.map((root) => rm(root, { recursive: true, force: true })));
});

async function folder(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), "nearhub-pack-"));
  roots.push(root);
  return root;
}

async function* once(bytes: Uint8Array): AsyncIterable<Uint8Array> {
  yield bytes;
}

async function put(store: FsBlobStore, bytes: Uint8Array): Promise<{ created: boolean }> {
  return store.put({ sha256: sha256(bytes), size: bytes.byteLength }, once(bytes));
}

async function read(store: FsBlobStore, sha: string, offset = 0, length?: number): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const part of store.get(sha, offset, length)) parts.push(part);
  return Buffer.concat(parts);
}

async function packFiles(root: string, ext = ".pack"): Promise<string[]> {
  return (await readdir(join(root, "packs")))
    .filter((name) => name.endsWith(ext))
    .map((name) => join(root, "packs", name));
}

async function listed(store: FsBlobStore): Promise<Map<string, { size: number; modifiedAt: number }>> {
  const all = new Map<string, { size: number; modifiedAt: number }>();
  for await (const blob of store.list()) {
    assert.ok(!all.has(blob.sha256), `${blob.sha256} listed once`);
    all.set(blob.sha256, { size: blob.size, modifiedAt: blob.modifiedAt });
  }
  return all;
}

test("small blobs are packed: put, get, ranges, stat, list, remove; no file per blob", async () => {
  const root = await folder();
  const store = new FsBlobStore(root);
  await store.check();
  const blobs = [Buffer.alloc(0), randomBytes(1), randomBytes(4096), randomBytes(64 * 1024)];
  const before = Date.now();
  for (const b of blobs) assert.deepEqual(await put(store, b), { created: true });
  for (const b of blobs) {
    assert.deepEqual(await read(store, sha256(b)), b);
    assert.deepEqual(await store.stat(sha256(b)), { sha256: sha256(b), size: b.length });
  }
  const big = blobs[3]!;
  assert.deepEqual(await read(store, sha256(big), 100, 50), big.subarray(100, 150));
  assert.deepEqual(await read(store, sha256(big), big.length - 1, 10), big.subarray(big.length - 1));
  assert.deepEqual(await read(store, sha256(big), big.length, undefined), Buffer.alloc(0));
  await assert.rejects(readdir(join(root, "sha256")), /ENOENT/);
  const all = await listed(store);
  assert.equal(all.size, 4);
  for (const b of blobs) {
    assert.equal(all.get(sha256(b))?.size, b.length);
    assert.ok(all.get(sha256(b))!.modifiedAt >= before);
  }
  // A blob just over the threshold is a file of its own, as before.
  const large = randomBytes(64 * 1024 + 1);
  assert.deepEqual(await put(store, large), { created: true });
  assert.equal(
    (await stat(join(root, "sha256", sha256(large).slice(0, 2), sha256(large).slice(2, 4), sha256(large)))).size,
    large.length,
  );
  assert.equal((await listed(store)).size, 5);
  assert.deepEqual(await put(store, blobs[2]!), { created: false });
  assert.equal(await store.remove(sha256(blobs[2]!)), true);
  assert.equal(await store.remove(sha256(blobs[2]!)), false);
  assert.equal(await store.stat(sha256(blobs[2]!)), undefined);
  assert.equal((await listed(store)).size, 4);
  await store.close();
});

test("concurrent puts of one blob write one record; one of them is created", async () => {
  const root = await folder();
  const store = new FsBlobStore(root);
  await store.check();
  const bytes = randomBytes(4096);
  const answers = await Promise.all(Array.from({ length: 16 }, () => put(store, bytes)));
  assert.equal(answers.filter((a) => a.created).length, 1);
  const [pack] = await packFiles(root);
  assert.equal((await stat(pack!)).size, HEADER + bytes.length);
  await store.close();
});

test("refused puts store nothing: wrong sha256, too short, too long", async () => {
  const root = await folder();
  const store = new FsBlobStore(root);
  await store.check();
  const bytes = randomBytes(4096);
  const refused = async (promise: Promise<unknown>, pattern: RegExp) =>
    assert.rejects(promise, (error: unknown) => {
      assert.ok(error instanceof NearhubError);
      assert.equal(error.code, Code.InvalidArgument);
      assert.match(error.message, pattern);
      return true;
    });
  await refused(store.put({ sha256: sha256(Buffer.from("x")), size: 4096 }, once(bytes)), /sha256 mismatch/);
  await refused(store.put({ sha256: sha256(bytes), size: 4097 }, once(bytes)), /4096 bytes but declared 4097/);
  await refused(store.put({ sha256: sha256(bytes), size: 4095 }, once(bytes)), /larger than the declared 4095/);
  assert.equal(await store.stat(sha256(bytes)), undefined);
  assert.equal((await listed(store)).size, 0);
  for (const pack of await packFiles(root)) assert.equal((await stat(pack)).size, 0);
  await store.close();
});

test("two instances on one folder see each other's puts and removals", async () => {
  const root = await folder();
  const a = new FsBlobStore(root);
  const b = new FsBlobStore(root);
  await a.check();
  await b.check();
  const bytes = randomBytes(5000);
  const sha = sha256(bytes);
  assert.equal(await b.stat(sha), undefined);
  await put(a, bytes);
  // b missed it before: a miss rescans, so b reads a's write.
  assert.deepEqual(await b.stat(sha), { sha256: sha, size: bytes.length });
  assert.deepEqual(await read(b, sha), bytes);
  assert.ok((await listed(b)).has(sha));
  assert.equal(await b.remove(sha), true);
  // a's index had it: the removal is seen anyway, and a put stores it again.
  assert.equal(await a.stat(sha), undefined);
  assert.deepEqual(await put(a, bytes), { created: true });
  assert.deepEqual(await read(b, sha), bytes);
  await a.close();
  await b.close();
  const c = new FsBlobStore(root);
  assert.deepEqual(await read(c, sha), bytes);
  await c.close();
});

test("reopening rebuilds the index: from the records, from hint files, and past a corrupt hint", async () => {
  const root = await folder();
  const dir = join(root, "packs");
  const pack = new BlobPack(dir, { sealAt: 64 * 1024 });
  await pack.open();
  const blobs = Array.from({ length: 40 }, () => randomBytes(3000 + Math.floor(Math.random() * 2000)));
  for (const b of blobs) await pack.put(sha256(b), b);
  await pack.remove(sha256(blobs[0]!));
  const check = async (label: string) => {
    const again = new BlobPack(dir);
    await again.open();
    assert.equal(await again.find(sha256(blobs[0]!)), undefined, label);
    for (const b of blobs.slice(1)) {
      const entry = await again.find(sha256(b));
      assert.ok(entry, label);
      assert.deepEqual(await again.read(entry, 0, entry.size), b, label);
    }
    assert.equal((await again.entries()).length, blobs.length - 1, label);
    await again.close();
  };
  // Not closed: the last pack has no hint, the sealed ones have.
  const hints = await packFiles(root, ".hint");
  assert.ok(hints.length >= 2, `${hints.length} hints`);
  await check("with hints");
  for (const hint of await packFiles(root, ".hint")) {
    const bytes = await readFile(hint);
    bytes[40] = bytes[40]! ^ 0xff;
    await writeFile(hint, bytes);
  }
  await check("corrupt hints");
  for (const hint of await packFiles(root, ".hint")) await rm(hint);
  await check("no hints");
  await pack.close();
});

test("an opener hints another writer's unsealed pack; later appends to it are still read", async () => {
  const root = await folder();
  const dir = join(root, "packs");
  const writer = new BlobPack(dir);
  await writer.open();
  const blobs = Array.from({ length: 30 }, () => randomBytes(2000));
  for (const b of blobs.slice(0, 20)) await writer.put(sha256(b), b);
  await writer.remove(sha256(blobs[0]!));
  assert.deepEqual(await packFiles(root, ".hint"), []);
  const opener = new BlobPack(dir, { hintAfter: 1 });
  await opener.open();
  await opener.close();
  assert.equal((await packFiles(root, ".hint")).length, 1);
  // The writer goes on appending to the pack the hint covers part of.
  for (const b of blobs.slice(20)) await writer.put(sha256(b), b);
  const later = new BlobPack(dir);
  await later.open();
  assert.equal(await later.find(sha256(blobs[0]!)), undefined);
  for (const b of blobs.slice(1)) {
    const entry = await later.find(sha256(b));
    assert.ok(entry);
    assert.deepEqual(await later.read(entry, 0, entry.size), b);
  }
  await later.close();
  await writer.close();
});

test("compaction rewrites mostly removed sealed packs; nothing live is lost, here or in a second instance", async () => {
  const root = await folder();
  const dir = join(root, "packs");
  const a = new BlobPack(dir, { sealAt: 32 * 1024 });
  const b = new BlobPack(dir);
  await a.open();
  await b.open();
  const blobs = Array.from({ length: 60 }, (_, i) => randomBytes(3000 + i));
  for (const blob of blobs) await a.put(sha256(blob), blob);
  const sealed = (await packFiles(root, ".hint")).map((hint) => hint.replace(/\.hint$/, ".pack"));
  assert.ok(sealed.length >= 3, `${sealed.length} sealed packs`);
  // b reads some blobs first, so it holds the packs open.
  for (const blob of blobs.slice(0, 5)) assert.ok(await b.find(sha256(blob)));
  const gone = new Set(blobs.filter((_, i) => i % 4 !== 0).map(sha256));
  for (const sha of gone) assert.equal(await a.remove(sha), true);
  const before = (await packFiles(root)).length;
  const removed = await a.compact();
  assert.ok(removed >= sealed.length - 1, `${removed} packs compacted of ${sealed.length}`);
  assert.ok((await packFiles(root)).length < before);
  for (const path of sealed.slice(0, removed)) await assert.rejects(stat(path), /ENOENT/);
  assert.equal(await a.compact(), 0);
  const check = async (pack: BlobPack, label: string) => {
    for (const blob of blobs) {
      const entry = await pack.find(sha256(blob));
      if (gone.has(sha256(blob))) {
        assert.equal(entry, undefined, label);
        continue;
      }
      assert.ok(entry, label);
      assert.deepEqual(await pack.read(entry, 0, entry.size), blob, label);
    }
    assert.equal((await pack.entries()).length, blobs.length - gone.size, label);
  };
  await check(a, "compacting instance");
  await check(b, "second instance");
  await a.close();
  await b.close();
  const reopened = new BlobPack(dir);
  await reopened.open();
  await check(reopened, "reopened");
  await reopened.close();
});

test("a torn or corrupt tail is cut off; the records before it survive", async () => {
  const root = await folder();
  const dir = join(root, "packs");
  const pack = new BlobPack(dir);
  await pack.open();
  const blobs = Array.from({ length: 5 }, () => randomBytes(4096));
  for (const b of blobs) await pack.put(sha256(b), b);
  await pack.close();
  // As a crash leaves it: no hint.
  for (const hint of await packFiles(root, ".hint")) await rm(hint);
  const [path] = await packFiles(root);
  const whole = (await stat(path!)).size;
  // The last record corrupt, then half of a header.
  const bytes = await readFile(path!);
  bytes[whole - 10] = bytes[whole - 10]! ^ 0xff;
  await writeFile(path!, bytes);
  await appendFile(path!, bytes.subarray(0, 30));
  const fresh = new BlobPack(dir);
  await fresh.open();
  for (const b of blobs.slice(0, 4)) assert.ok(await fresh.find(sha256(b)));
  assert.equal(await fresh.find(sha256(blobs[4]!)), undefined);
  // A young tail may be a write in progress: left on disk until it is old.
  assert.equal((await stat(path!)).size, whole + 30);
  await fresh.close();
  const settled = new BlobPack(dir, { settleMs: 0 });
  await settled.open();
  assert.equal((await stat(path!)).size, whole - HEADER - 4096);
  // The last blob can be stored again; everything reads back after another reopen.
  await settled.put(sha256(blobs[4]!), blobs[4]!);
  await settled.close();
  const last = new BlobPack(dir);
  await last.open();
  for (const b of blobs) {
    const entry = await last.find(sha256(b));
    assert.ok(entry);
    assert.deepEqual(await last.read(entry, 0, entry.size), b);
  }
  await last.close();
});

test("remove then put again: live, also after a reopen; a removal survives a reopen", async () => {
  const root = await folder();
  const dir = join(root, "packs");
  const pack = new BlobPack(dir);
  await pack.open();
  const kept = randomBytes(100);
  const gone = randomBytes(200);
  for (const b of [kept, gone]) await pack.put(sha256(b), b);
  // Several times within one millisecond: the order in the pack decides.
  for (let i = 0; i < 3; i++) {
    assert.equal(await pack.remove(sha256(kept)), true);
    assert.deepEqual(await pack.put(sha256(kept), kept), { created: true });
  }
  assert.equal(await pack.remove(sha256(gone)), true);
  assert.equal(await pack.remove(sha256(gone)), false);
  const again = new BlobPack(dir);
  await again.open();
  assert.ok(await again.find(sha256(kept)));
  assert.equal(await again.find(sha256(gone)), undefined);
  await again.close();
  await pack.close();
});

test("blobs stored as files by an earlier version stay readable, listed once, removable", async () => {
  const root = await folder();
  const bytes = randomBytes(4096);
  const sha = sha256(bytes);
  const path = join(root, "sha256", sha.slice(0, 2), sha.slice(2, 4), sha);
  await mkdir(join(path, ".."), { recursive: true });
  await writeFile(path, bytes);
  const store = new FsBlobStore(root);
  await store.check();
  assert.deepEqual(await store.stat(sha), { sha256: sha, size: 4096 });
  assert.deepEqual(await read(store, sha, 10, 20), bytes.subarray(10, 30));
  await put(store, bytes);
  assert.equal((await listed(store)).size, 1);
  assert.equal(await store.remove(sha), true);
  assert.equal(await store.stat(sha), undefined);
  await assert.rejects(stat(path), /ENOENT/);
  await store.close();
});

const storeModule = fileURLToPath(new URL("./fs-blob-store.ts", import.meta.url));

/** A child process that puts random small blobs at concurrency 16 and prints each answered sha. */
const crashChild = `
const { createHash, randomBytes } = await import("node:crypto");
const { FsBlobStore } = await import(${JSON.stringify(storeModule)});
const store = new FsBlobStore(process.argv[1]);
await store.check();
async function* once(b) { yield b; }
async function worker() {
  for (;;) {
    const bytes = randomBytes(1 + Math.floor(Math.random() * 16000));
    const sha = createHash("sha256").update(bytes).digest("hex");
    await store.put({ sha256: sha, size: bytes.length }, once(bytes));
    process.stdout.write(sha + " " + bytes.length + "\\n");
  }
}
await Promise.all(Array.from({ length: 16 }, worker));
`;

test("a process killed with SIGKILL mid-stream loses none of the puts it answered", async () => {
  const root = await folder();
  const acked = new Map<string, number>();
  await new Promise<void>((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ["--conditions=development", "--import", "tsx", "--input-type=module", "-e", crashChild, root],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let pending = "";
    let stderr = "";
    child.stderr.on("data", (data: Buffer) => (stderr += data.toString()));
    child.stdout.on("data", (data: Buffer) => {
      pending += data.toString();
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) {
        const [sha, size] = line.split(" ");
        acked.set(sha!, Number(size));
      }
      if (acked.size >= 400) child.kill("SIGKILL");
    });
    child.on("exit", (_code, signal) =>
      signal === "SIGKILL" ? resolve() : reject(new Error(`child exited by itself: ${stderr}`)),
    );
  });
  assert.ok(acked.size >= 400);
  const store = new FsBlobStore(root);
  await store.check();
  for (const [sha, size] of acked) {
    const bytes = await read(store, sha);
    assert.equal(bytes.length, size);
    assert.equal(sha256(bytes), sha);
  }
  await store.close();
});
