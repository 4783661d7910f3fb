/**
 * Hugging Face downloads through the edge, on loopback with the local hub double:
 * 1. a generated LFS file (BENCH_HF_MB, default 1,024 MiB) downloaded cold (pulled through
 *    from the upstream while it is stored): MB/s and first-byte latency;
 * 2. the same file downloaded warm from the edge's hot cache, beside reading the same bytes
 *    straight from the local disk in this process: MB/s of both and their ratio;
 * 3. cache-hit first-byte latency over BENCH_HF_SMALL (default 1,000) small-file requests: p50, p99.
 */
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { Agent, createServer, request } from "node:http";
import type { AddressInfo } from "node:net";
import { pipeline } from "node:stream/promises";
import { join } from "node:path";
import { createClient, parseEnv } from "@nearhub/platform";
import { StorageService } from "@nearhub/proto/storage";
import { edgeEnv, startEdge } from "@nearhub/edge";
import { startStorage, storageEnv } from "@nearhub/storage";
import {
  deleteNamespace,
  nats,
  serviceEnv,
  sha256Hex,
  startHubDouble,
  tempDir,
  uniqueNamespace,
} from "@nearhub/testing";

const MB = Number(process.env["BENCH_HF_MB"] ?? 1024);
const SMALL = Number(process.env["BENCH_HF_SMALL"] ?? 1000);
const ROUNDS = Number(process.env["BENCH_HF_ROUNDS"] ?? 3);
const agent = new Agent({ keepAlive: true, maxSockets: 4 });

/** GETs a URL, discarding the body: first-byte and total milliseconds, bytes received. */
function get(url: string): Promise<{ firstByteMs: number; totalMs: number; bytes: number; status: number }> {
  const started = process.hrtime.bigint();
  const ms = () => Number(process.hrtime.bigint() - started) / 1e6;
  return new Promise((resolve, reject) => {
    const req = request(url, { agent }, (res) => {
      let firstByteMs = -1;
      let bytes = 0;
      res.on("data", (chunk: Buffer) => {
        if (firstByteMs < 0) firstByteMs = ms();
        bytes += chunk.length;
      });
      res.on("end", () => resolve({ firstByteMs, totalMs: ms(), bytes, status: res.statusCode ?? 0 }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

async function readDisk(path: string): Promise<number> {
  const started = process.hrtime.bigint();
  let bytes = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) bytes += (chunk as Buffer).length;
  if (bytes === 0) throw new Error("nothing read");
  return Number(process.hrtime.bigint() - started) / 1e6;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))]!;
const mbps = (bytes: number, ms: number) => bytes / (1024 * 1024) / (ms / 1000);

export async function main(): Promise<void> {
  const natsUrl = (await nats()).url;
  const ns = uniqueNamespace("bhf");
  const dir = await tempDir("nearhub-bench-hf-");
  const hub = await startHubDouble();
  const storage = await startStorage(parseEnv("storage", storageEnv, serviceEnv(natsUrl, ns, dir.path)));
  const storageClient = createClient(StorageService, `127.0.0.1:${storage.grpcPort}`);
  const edge = await startEdge(
    parseEnv("edge", edgeEnv, {
      ...serviceEnv(natsUrl, ns, dir.path),
      NEARHUB_STORAGE_ADDR: `127.0.0.1:${storage.grpcPort}`,
      NEARHUB_HF_UPSTREAM: hub.url,
    }),
  );
  try {
    const big = randomBytes(MB * 1024 * 1024);
    const sha = sha256Hex(big);
    hub.commit("model", "bench/big", { "model.bin": { content: big, lfs: true }, "config.json": '{"a":1}' });
    const base = `http://127.0.0.1:${edge.httpPort}`;
    const url = `${base}/bench/big/resolve/main/model.bin`;

    await get(`${base}/bench/big/resolve/main/config.json`); // pins the revision (metadata), not the big file
    const cold = await get(url);
    if (cold.bytes !== big.length)
      throw new Error(`cold download: HTTP ${cold.status}, ${cold.bytes} of ${big.length} bytes`);
    console.log(
      `hf cold (pull-through, ${MB} MiB): ${mbps(cold.bytes, cold.totalMs).toFixed(0)} MB/s, first byte ${cold.firstByteMs.toFixed(1)} ms`,
    );
    // Let the background commit to storage finish so it does not compete with the warm runs.
    for (let i = 0; i < 600; i++) {
      if ((await storageClient.hasBlobs({ sha256: [sha] })).present.length === 1) break;
      await new Promise((r) => setTimeout(r, 500));
    }

    const warm: number[] = [];
    const disk: number[] = [];
    const bare: number[] = [];
    const cached = join(dir.path, "hf-cache", "blobs", sha);
    // A second baseline: a bare node HTTP server streaming the same file (the floor of any
    // node server on this machine), so the edge's own overhead shows apart from HTTP's.
    const plain = createServer((_req, res) => {
      res.writeHead(200, { "content-length": String(big.length) });
      pipeline(createReadStream(cached, { highWaterMark: 1024 * 1024 }), res).catch(() => res.destroy());
    });
    await new Promise<void>((resolve) => plain.listen(0, "127.0.0.1", resolve));
    const plainUrl = `http://127.0.0.1:${(plain.address() as AddressInfo).port}/`;
    for (let i = 0; i < ROUNDS; i++) {
      const r = await get(url);
      if (r.bytes !== big.length) throw new Error(`warm download got ${r.bytes} bytes`);
      warm.push(mbps(r.bytes, r.totalMs));
      disk.push(mbps(big.length, await readDisk(cached)));
      const p = await get(plainUrl);
      bare.push(mbps(p.bytes, p.totalMs));
    }
    plain.close();
    const w = median(warm);
    const d = median(disk);
    console.log(
      `hf warm (hot cache, ${MB} MiB, median of ${ROUNDS}): ${w.toFixed(0)} MB/s; local disk read of the same bytes ${d.toFixed(0)} MB/s; ratio ${(w / d).toFixed(2)} (target >= 0.7 and >= 1500 MB/s)`,
    );
    console.log(
      `hf warm vs a bare node HTTP server streaming the same file: ${median(bare).toFixed(0)} MB/s; ratio ${(w / median(bare)).toFixed(2)}`,
    );

    const small = `${base}/bench/big/resolve/main/config.json`;
    for (let i = 0; i < 20; i++) await get(small);
    const latencies: number[] = [];
    for (let i = 0; i < SMALL; i++) latencies.push((await get(small)).firstByteMs);
    console.log(
      `hf cache-hit first byte over ${SMALL} small-file requests: p50 ${pct(latencies, 50).toFixed(2)} ms, p99 ${pct(latencies, 99).toFixed(2)} ms (target p50 <= 2 ms)`,
    );
  } finally {
    agent.destroy();
    storageClient.$close();
    await edge.stop();
    await storage.stop();
    await hub.stop();
    await deleteNamespace(natsUrl, ns);
    await dir.cleanup();
  }
}

if (import.meta.url === `file://${process.argv[1] ?? ""}`) await main();
