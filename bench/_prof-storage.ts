// scratch profiling script (helper #4), deleted before the report
import { createHash, randomBytes } from "node:crypto";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { createClient, parseEnv } from "@nearhub/platform";
import { StorageService } from "@nearhub/proto/storage";
import { downloadBlob, startStorage, storageEnv, uploadFile } from "@nearhub/storage";
import { deleteNamespace, nats, serviceEnv, tempDir, uniqueNamespace, s3 } from "@nearhub/testing";
const MiB = 1024 * 1024;
const SIZE_MIB = Number(process.env["MIB"] ?? 256);
const OPS = Number(process.env["OPS"] ?? 2000);
const what = (process.env["WHAT"] ?? "up,down,small").split(",");
const natsUrl = (await nats()).url;
const dir = await tempDir("nearhub-prof-");
const size = SIZE_MIB * MiB;
const source = join(dir.path, "blob.bin");
const f = await open(source, "w");
const hash = createHash("sha256");
for (let i = 0; i < SIZE_MIB; i += 16) { const b = randomBytes(16 * MiB); hash.update(b); await f.write(b); }
await f.close();
const sha256 = hash.digest("hex");
const ns = uniqueNamespace("prof");
let s3server: Awaited<ReturnType<typeof s3>> | undefined;
let extra: Record<string, string> = { NEARHUB_BLOB_BACKEND: "fs", NEARHUB_INTERNAL_KEY: Buffer.alloc(32, 7).toString("base64") };
if (what.includes("s3")) {
  s3server = await s3();
  const bucket = await s3server.createBucket();
  extra = { NEARHUB_INTERNAL_KEY: Buffer.alloc(32, 7).toString("base64"), NEARHUB_BLOB_BACKEND: "s3", NEARHUB_S3_ENDPOINT: s3server.endpoint, NEARHUB_S3_BUCKET: bucket, NEARHUB_S3_ACCESS_KEY: s3server.accessKey, NEARHUB_S3_SECRET_KEY: s3server.secretKey };
}
const host = await startStorage(parseEnv("storage", storageEnv, serviceEnv(natsUrl, ns, join(dir.path, "fs"), extra)));
const client = createClient(StorageService, `127.0.0.1:${host.grpcPort}`, { maxMessageBytes: 16 * MiB, timeoutMs: 600_000 });
try {
  if (what.includes("up")) {
    const t = performance.now(); const c0 = process.cpuUsage();
    await uploadFile(client, source, { sha256, size, chunkSize: 64 * MiB, parallel: 4 });
    const ms = performance.now() - t;
    const c = process.cpuUsage(c0);
    console.log(`upload ${(size / 1e6 / (ms / 1000)).toFixed(0)} MB/s (${ms.toFixed(0)} ms) cpu user ${(c.user/1000).toFixed(0)} sys ${(c.system/1000).toFixed(0)} ms`);
  }
  if (what.includes("down")) {
    const t = performance.now();
    await downloadBlob(client, sha256, size, join(dir.path, "down.bin"), { parallel: 4 });
    const ms = performance.now() - t;
    console.log(`download ${(size / 1e6 / (ms / 1000)).toFixed(0)} MB/s`);
  }
  if (what.includes("small")) {
    const small = Array.from({ length: OPS }, () => randomBytes(4096));
    const shas = small.map((b) => createHash("sha256").update(b).digest("hex"));
    let next = 0; const lat: number[] = [];
    const t = performance.now();
    await Promise.all(Array.from({ length: 64 }, async () => {
      for (let i = next++; i < OPS; i = next++) {
        const s = performance.now();
        await client.putBlob((async function* () {
          yield { part: { case: "header" as const, value: { sha256: shas[i]!, size: 4096n } } };
          yield { part: { case: "chunk" as const, value: small[i]! } };
        })());
        if (!process.env["NOGET"]) for await (const m of client.getBlob({ sha256: shas[i]! })) void m;
        lat.push(performance.now() - s);
      }
    }));
    const ms = performance.now() - t; lat.sort((a, b) => a - b);
    console.log(`small ${(OPS / ms * 1000).toFixed(0)} ops/s median ${lat[lat.length >> 1]!.toFixed(1)} p99 ${lat[Math.floor(lat.length * 0.99)]!.toFixed(1)}`);
  }
} finally {
  client.$close();
  await host.stop();
  await deleteNamespace(natsUrl, ns);
  await s3server?.stop();
  await dir.cleanup();
}
