import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { createClient } from "@nearhub/platform";
import { RegistryService, RepoKind } from "@nearhub/proto/registry";
import { StorageService } from "@nearhub/proto/storage";
import { PIECE } from "@nearhub/storage";
import {
  adminAuth,
  adminToken,
  deleteNamespace,
  eventually,
  nats,
  serviceEnv,
  tempDir,
  uniqueNamespace,
} from "./harness.js";

// Resumable upload across a storage process killed with SIGKILL mid-chunk, resumed by the real CLI.
// Size: NEARHUB_KILL_TEST_MIB, 256 MiB in 16 MiB chunks (16 chunks) by default so CI on a small
// box stays bounded; NEARHUB_KILL_TEST_MIB=1024 runs the 1 GiB in 64 MiB chunks
// (NEARHUB_KILL_TEST_CHUNK_MIB overrides the chunk size). The mechanics are the same at any size.
const MiB = 1024 * 1024;
const SIZE_MIB = Number(process.env["NEARHUB_KILL_TEST_MIB"] ?? 256);
const CHUNK_MIB = Number(process.env["NEARHUB_KILL_TEST_CHUNK_MIB"] ?? (SIZE_MIB >= 1024 ? 64 : 16));
const SIZE = SIZE_MIB * MiB;
const CHUNK = CHUNK_MIB * MiB;
const CHUNKS = Math.ceil(SIZE / CHUNK);
if (!Number.isInteger(SIZE_MIB) || SIZE_MIB % 8 !== 0 || CHUNK_MIB < 5 || CHUNKS < 9) {
  throw new Error(
    `NEARHUB_KILL_TEST_MIB=${SIZE_MIB} / NEARHUB_KILL_TEST_CHUNK_MIB=${CHUNK_MIB}: need a multiple of 8 MiB, chunks of at least 5 MiB, and at least 9 chunks`,
  );
}
const repoRoot = fileURLToPath(new URL("..", import.meta.url));

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function fileSha(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once("exit", (code) => resolve(code)));
}

/** Runs the nearhub CLI to completion; resolves with exit code and output. */
function cli(
  args: string[],
  env: Record<string, string>,
): { child: ChildProcess; done: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const child = spawn(
    process.execPath,
    ["--conditions=development", "--import", "tsx", "packages/cli/src/bin.ts", ...args],
    {
      cwd: repoRoot,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  return { child, done: exited(child).then((code) => ({ code, stdout, stderr })) };
}

describe("storage: resumable upload survives kill -9 of the storage process (CLI end to end)", () => {
  let natsUrl: string;
  const ns = uniqueNamespace();
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let port: number;
  let env: Record<string, string>;
  let server: ChildProcess | undefined;

  async function startServer(): Promise<void> {
    server = spawn(process.execPath, ["--conditions=development", "--import", "tsx", "services/storage/src/main.ts"], {
      cwd: repoRoot,
      env: { ...process.env, ...env },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    server.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    const client = createClient(StorageService, `127.0.0.1:${port}`, { timeoutMs: 2_000 });
    try {
      await eventually(
        async () => {
          if (server?.exitCode !== null) throw new Error(`storage exited: ${stderr}`);
          await client.hasBlobs({ sha256: [] });
          return true;
        },
        60_000,
        "storage to answer",
      );
    } finally {
      client.$close();
    }
  }

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    port = await freePort();
    env = serviceEnv(natsUrl, ns, join(dir.path, "data"), {
      NEARHUB_GRPC_PORT: String(port),
      NEARHUB_BLOB_BACKEND: "fs",
    });
  });

  after(async () => {
    if (server && server.exitCode === null) {
      server.kill("SIGTERM");
      await exited(server);
    }
    await deleteNamespace(natsUrl, ns);
    await dir?.cleanup();
  });

  test("kill -9 mid-upload, restart, rerun: only missing chunks are sent and the stored sha matches", async (t) => {
    const file = join(dir.path, "model.bin");
    const handle = await open(file, "w");
    for (let i = 0; i < SIZE / (8 * MiB); i++) await handle.write(randomBytes(8 * MiB));
    await handle.close();
    const sha = await fileSha(file);
    await startServer();
    const cliEnv = { NEARHUB_STORAGE_ADDR: `127.0.0.1:${port}`, NEARHUB_TOKEN: adminToken(ns) };
    const args = [
      "upload",
      "acme/big",
      file,
      "--chunk-size",
      String(CHUNK_MIB),
      "--parallel",
      "2",
      "--json",
      "-m",
      "big model",
    ];

    // A first client gets 7 chunks in and is in the middle of the 8th when storage is killed.
    const storage = createClient(StorageService, `127.0.0.1:${port}`, { timeoutMs: 60_000, maxMessageBytes: 16 * MiB });
    const receivedBeforeKill = 7;
    try {
      const session = (await storage.startUpload({ sha256: sha, size: BigInt(SIZE), chunkSize: BigInt(CHUNK) }))
        .session!;
      const bytes = await open(file, "r");
      const chunkAt = async (i: number) => {
        const buffer = Buffer.alloc(CHUNK);
        await bytes.read(buffer, 0, CHUNK, i * CHUNK);
        return buffer;
      };
      const pieces = (sessionId: string, index: number, buffer: Buffer, stall?: Promise<void>) =>
        (async function* () {
          const digest = createHash("sha256").update(buffer).digest("hex");
          yield { part: { case: "header" as const, value: { sessionId, index, sha256: digest } } };
          for (let p = 0; p < buffer.length; p += PIECE) {
            if (stall && p >= 2 * PIECE) await stall;
            yield { part: { case: "data" as const, value: buffer.subarray(p, p + PIECE) } };
          }
        })();
      for (let i = 0; i < receivedBeforeKill; i++)
        await storage.uploadChunk(pieces(session.sessionId, i, await chunkAt(i)));
      let release!: () => void;
      const stall = new Promise<void>((resolve) => (release = resolve));
      const inFlight = storage.uploadChunk(pieces(session.sessionId, 7, await chunkAt(7), stall)).then(
        () => "stored",
        (e: unknown) => (e as Error).message,
      );
      await bytes.close();
      await eventually(async () =>
        (await storage.getUploadStatus({ sessionId: session.sessionId })).session ? true : undefined,
      );
      server!.kill("SIGKILL");
      await exited(server!);
      release();
      assert.notEqual(await inFlight, "stored", "the chunk in flight was cut off by the kill");
    } finally {
      storage.$close();
    }

    await startServer();
    const after = createClient(StorageService, `127.0.0.1:${port}`, { timeoutMs: 5_000 });
    let stored: number;
    try {
      const status = (await after.startUpload({ sha256: sha, size: BigInt(SIZE) })).session;
      assert.ok(status, "the session survived the restart");
      assert.equal(status.chunkSize, BigInt(CHUNK));
      stored = status.received.length;
      assert.ok(stored >= receivedBeforeKill, `${stored} chunks after the restart, ${receivedBeforeKill} seen before`);
    } finally {
      after.$close();
    }

    const rerun = await cli(args, cliEnv).done;
    assert.equal(rerun.code, 0, rerun.stderr);
    const result = JSON.parse(rerun.stdout) as {
      commit: string;
      chunksSent: number;
      chunksResumed: number;
      skippedFiles: number;
      uploadedBytes: number;
      resumedBytes: number;
    };
    assert.equal(stored, receivedBeforeKill, "exactly the chunks acknowledged before the kill survived it");
    assert.equal(result.chunksResumed, stored, "every chunk stored before the kill was reused");
    assert.equal(result.chunksSent, CHUNKS - stored, "only the missing chunks were sent");
    assert.equal(
      result.resumedBytes,
      stored * CHUNK_MIB * 1024 * 1024,
      "the resumed chunks' bytes were not sent again",
    );
    assert.equal(
      result.uploadedBytes + result.resumedBytes,
      SIZE_MIB * 1024 * 1024,
      "uploaded counts only what this run sent",
    );
    assert.match(result.commit, /^[0-9a-f]{40}$/);
    t.diagnostic(
      `${SIZE_MIB} MiB in ${CHUNKS} chunks of ${CHUNK_MIB} MiB: ${stored} stored before the kill survived it; the rerun resumed ${result.chunksResumed} and sent ${result.chunksSent}; sha256 ${sha}`,
    );

    // A third run finds the blob stored and sends nothing.
    const third = await cli(args, cliEnv).done;
    assert.equal(third.code, 0, third.stderr);
    assert.equal((JSON.parse(third.stdout) as { skippedFiles: number }).skippedFiles, 1);

    const registry = createClient(RegistryService, `127.0.0.1:${port}`, { metadata: adminAuth(ns) });
    try {
      const rev = await registry.getRevision({ repo: { kind: RepoKind.MODEL, id: "acme/big" }, revision: "main" });
      assert.deepEqual(
        rev.revision?.entries.map((e) => [e.path, e.sha256, e.size, e.lfs]),
        [["model.bin", sha, BigInt(SIZE), true]],
      );
    } finally {
      registry.$close();
    }

    const out = join(dir.path, "out");
    const download = await cli(["download", "acme/big@main", "--to", out, "--json"], cliEnv).done;
    assert.equal(download.code, 0, download.stderr);
    assert.equal(await fileSha(join(out, "model.bin")), sha);
    const again = await cli(["download", "acme/big", "model.bin", "--to", out, "--json"], cliEnv).done;
    assert.equal((JSON.parse(again.stdout) as { skipped: number }).skipped, 1);
  });

  test("the CLI uploads a folder, skips what is stored, and refuses bad input clearly", async () => {
    const folder = join(dir.path, "tiny");
    await (await import("node:fs/promises")).mkdir(join(folder, "sub"), { recursive: true });
    await writeFile(join(folder, "config.json"), '{"a":1}');
    await writeFile(join(folder, "sub", "weights.bin"), randomBytes(6 * MiB));
    if (!server || server.exitCode !== null) await startServer();
    const cliEnv = { NEARHUB_STORAGE_ADDR: `127.0.0.1:${port}`, NEARHUB_TOKEN: adminToken(ns) };
    const up = await cli(["upload", "datasets/acme/tiny", folder, "--json"], cliEnv).done;
    assert.equal(up.code, 0, up.stderr);
    const first = JSON.parse(up.stdout) as { files: number; skippedFiles: number; commit: string };
    assert.deepEqual([first.files, first.skippedFiles], [2, 0]);
    const again = await cli(["upload", "datasets/acme/tiny", folder, "--json"], cliEnv).done;
    const second = JSON.parse(again.stdout) as { skippedFiles: number; commit: string; committed: boolean };
    assert.equal(second.skippedFiles, 2);
    // Nothing changed: no empty commit, the branch stays at the first one.
    assert.equal(second.committed, false);
    assert.equal(second.commit, first.commit);

    const registry = createClient(RegistryService, `127.0.0.1:${port}`, { metadata: adminAuth(ns) });
    try {
      const rev = await registry.getRevision({ repo: { kind: RepoKind.DATASET, id: "acme/tiny" } });
      const config = rev.revision?.entries.find((e) => e.path === "config.json");
      // git's blob id of the 7 bytes {"a":1}, so the HF API can answer for non-LFS files.
      assert.equal(config?.gitBlobSha1, createHash("sha1").update('blob 7\0{"a":1}').digest("hex"));
      assert.equal(config?.lfs, false);
    } finally {
      registry.$close();
    }
    const out = join(dir.path, "tiny-out");
    const down = await cli(["download", "datasets/acme/tiny", "sub", "--to", out, "--json"], cliEnv).done;
    assert.equal(down.code, 0, down.stderr);
    assert.equal((JSON.parse(down.stdout) as { downloaded: number }).downloaded, 1);

    const missing = await cli(["download", "datasets/acme/tiny", "nope.txt", "--to", out], cliEnv).done;
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /has no "nope.txt"/);
    const badRepo = await cli(["upload", "a/b/c", folder], cliEnv).done;
    assert.equal(badRepo.code, 2);
    assert.match(badRepo.stderr, /must be owner\/name or name/);
    const noRev = await cli(["download", "acme/absent", "--to", out], cliEnv).done;
    assert.equal(noRev.code, 1);
    assert.match(noRev.stderr, /model acme\/absent does not exist/);
    const noTo = await cli(["download", "acme/absent"], cliEnv).done;
    assert.equal(noTo.code, 2);
    assert.match(noTo.stderr, /--to DIR is required/);
  });
});
