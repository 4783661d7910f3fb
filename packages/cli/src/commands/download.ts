import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, stat } from "node:fs/promises";
import { dirname, resolve, sep } from "node:path";
import { downloadBlob, tuneHeapForStreaming } from "@nearhub/storage";
import { parse, print, UsageError, type Command } from "../command.js";
import { Progress, formatBytes } from "../progress.js";
import { intOption, parseRepo, storageClients } from "../storage-target.js";

async function sameFile(path: string, size: bigint, sha256: string): Promise<boolean> {
  try {
    if ((await stat(path)).size !== Number(size)) return false;
  } catch {
    return false;
  }
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })) hash.update(chunk as Buffer);
  return hash.digest("hex") === sha256;
}

/**
 * `nearhub download`: resolves the revision (a branch, tag or commit; the default branch when
 * none is given), skips files already in DIR with the right sha256, and fetches the rest in
 * parallel ranges; a rerun after an interruption continues partial files. Every file is
 * verified before it is renamed into place.
 */
export const downloadCommand: Command = {
  name: "download",
  usage: [
    "nearhub download <repo>[@revision] [path...] --to DIR [--kind model|dataset|space] [--storage HOST:PORT]",
    "                 [--parallel N] [--json]",
  ],
  async run(args, ctx) {
    // Streaming gigabytes through gRPC: see tuneHeapForStreaming.
    tuneHeapForStreaming();
    const { values, positionals } = parse(args, {
      to: { type: "string" },
      kind: { type: "string" },
      storage: { type: "string" },
      parallel: { type: "string" },
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
    });
    if (positionals.length < 1) throw new UsageError("download takes <repo>[@revision] [path...]");
    if (!values.to) throw new UsageError("--to DIR is required: where to put the files");
    const [repoText, revision = ""] = positionals[0]!.split("@", 2) as [string, string?];
    const repo = parseRepo(repoText, values.kind);
    const wanted = positionals.slice(1).map((p) => p.replace(/\/+$/, ""));
    const parallel = intOption("parallel", values.parallel, 4, 64);
    const root = resolve(values.to);
    const quiet = Boolean(values.quiet || values.json);
    const clients = storageClients(values.storage, ctx.env);
    process.once("SIGINT", () => {
      process.stderr.write("\ninterrupted: run the same command again to continue where it stopped\n");
      process.exit(130);
    });
    try {
      const { revision: rev } = await clients.registry.getRevision({ repo, revision });
      if (!rev) throw new Error("the registry answered without a revision");
      const entries = rev.entries.filter(
        (e) => wanted.length === 0 || wanted.some((w) => e.path === w || e.path.startsWith(`${w}/`)),
      );
      const unmatched = wanted.filter((w) => !rev.entries.some((e) => e.path === w || e.path.startsWith(`${w}/`)));
      if (unmatched.length > 0)
        throw new UsageError(
          `${repo.id}@${rev.commit.slice(0, 12)} has no ${unmatched.map((u) => JSON.stringify(u)).join(", ")}`,
        );
      const progress = new Progress("downloading", 0, process.stderr, quiet);
      let skipped = 0;
      let fetched = 0;
      const todo: typeof entries = [];
      for (const e of entries) {
        const dest = resolve(root, e.path);
        if (!dest.startsWith(root + sep))
          throw new Error(`refusing to write ${JSON.stringify(e.path)} outside ${root}`);
        if (await sameFile(dest, e.size, e.sha256)) skipped++;
        else {
          todo.push(e);
          progress.grow(Number(e.size));
        }
      }
      const queue = [...todo].sort((a, b) => Number(b.size - a.size));
      await Promise.all(
        Array.from({ length: Math.min(parallel, Math.max(1, queue.length)) }, async () => {
          for (let e = queue.shift(); e; e = queue.shift()) {
            const dest = resolve(root, e.path);
            await mkdir(dirname(dest), { recursive: true });
            await downloadBlob(clients.storage, e.sha256, Number(e.size), dest, {
              parallel: Number(e.size) > 64 * 1024 * 1024 ? parallel : 1,
              onProgress: (n) => progress.add(n),
            });
            fetched++;
          }
        }),
      );
      const timing = progress.finish();
      const bytes = todo.reduce((a, e) => a + Number(e.size), 0);
      const result = {
        repo: repo.id,
        commit: rev.commit,
        to: root,
        files: entries.length,
        downloaded: fetched,
        skipped,
        bytes,
        seconds: Number(timing.seconds.toFixed(3)),
      };
      print(
        Boolean(values.json),
        result,
        () =>
          `${repo.id}@${rev.commit.slice(0, 12)} → ${root}: ${fetched} file(s) downloaded (${formatBytes(bytes)} at ${formatBytes(timing.bytesPerSecond)}/s), ${skipped} already present`,
      );
      return 0;
    } finally {
      clients.close();
    }
  },
};
