import type { KV, KvEntry } from "@nats-io/kv";

/**
 * Every live entry of a bucket in one pass: a watcher delivers the last value of each key
 * through one consumer instead of one request per key, which is what makes listing and
 * scheduling thousands of mirrors cheap. Deleted and purged keys are left out.
 */
export async function readAll(kv: KV, timeoutMs = 30_000): Promise<Map<string, KvEntry>> {
  const out = new Map<string, KvEntry>();
  const status = await kv.status();
  if (status.values === 0) return out;
  const watcher = await kv.watch();
  const timer = setTimeout(() => watcher.stop(), timeoutMs);
  try {
    for await (const entry of watcher) {
      if (entry.operation === "PUT" && entry.length > 0) out.set(entry.key, entry);
      else out.delete(entry.key);
      if (entry.delta === 0) break;
    }
  } finally {
    clearTimeout(timer);
    watcher.stop();
  }
  return out;
}
