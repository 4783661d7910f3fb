import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import { basename, join, relative, sep } from "node:path";
import { Code, NearhubError } from "@nearhub/platform";
import { uploadFile, tuneHeapForStreaming } from "@nearhub/storage";
import { parse, print, UsageError, type Command } from "../command.js";
import { Progress, formatBytes } from "../progress.js";
import { intOption, parseRepo, storageClients } from "../storage-target.js";

/** Files below this are stored in git (not LFS) on the Hugging Face side: give them a git blob sha1. */
const GIT_BLOB_LIMIT = 10 * 1024 * 1024;

interface LocalFile {
  path: string;
  /** Path in the repo, '/'-separated. */
  repoPath: string;
  size: number;
  sha256: string;
  gitBlobSha1: string;
}

async function walk(root: string): Promise<string[]> {
  const out: string[] = [];
  const visit = async (dir: string) => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      if (entry.name === ".git" || entry.name.endsWith(".nearhub-part") || entry.name.endsWith(".nearhub-part.json"))
        continue;
      const full = join(dir, entry.name);
      if (entry.isDirectory()) await visit(full);
      else if (entry.isFile()) out.push(full);
    }
  };
  await visit(root);
  return out.sort();
}

async function hashLocal(
  path: string,
  size: number,
  onBytes: (n: number) => void,
): Promise<{ sha256: string; gitBlobSha1: string }> {
  const sha256 = createHash("sha256");
  const sha1 = size < GIT_BLOB_LIMIT ? createHash("sha1").update(`blob ${size}\0`) : undefined;
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })) {
    sha256.update(chunk as Buffer);
    sha1?.update(chunk as Buffer);
    onBytes((chunk as Buffer).byteLength);
  }
  return { sha256: sha256.digest("hex"), gitBlobSha1: sha1?.digest("hex") ?? "" };
}

/**
 * `nearhub upload`: hashes the files, skips those storage already has (HasBlobs), uploads the
 * rest in parallel 64 MiB chunks as resumable sessions (a rerun after Ctrl-C or a dropped
 * connection continues them), then publishes a revision that adds or replaces these paths
 * on the branch (compare-and-set on its previous commit). Talks gRPC to storage directly.
 */
export const uploadCommand: Command = {
  name: "upload",
  usage: [
    "nearhub upload <repo> <file-or-folder> [--kind model|dataset|space] [--message M] [--branch main]",
    "               [--storage HOST:PORT] [--parallel N] [--chunk-size MiB] [--json]",
  ],
  async run(args, ctx) {
    // Streaming gigabytes through gRPC: see tuneHeapForStreaming.
    tuneHeapForStreaming();
    const { values, positionals } = parse(args, {
      kind: { type: "string" },
      message: { type: "string", short: "m" },
      "revision-message": { type: "string" },
      branch: { type: "string" },
      author: { type: "string" },
      storage: { type: "string" },
      parallel: { type: "string" },
      "chunk-size": { type: "string" },
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
    });
    if (positionals.length !== 2) throw new UsageError("upload takes <repo> and <file-or-folder>");
    const repo = parseRepo(positionals[0]!, values.kind);
    const source = positionals[1]!;
    const parallel = intOption("parallel", values.parallel, 4, 64);
    const chunkSize = intOption("chunk-size", values["chunk-size"], 64, 512) * 1024 * 1024;
    const branch = values.branch ?? "main";
    let info;
    try {
      info = await stat(source);
    } catch {
      throw new UsageError(`${source} does not exist`);
    }
    const paths = info.isDirectory() ? await walk(source) : [source];
    if (paths.length === 0) throw new UsageError(`${source} holds no files`);
    const quiet = Boolean(values.quiet || values.json);
    const clients = storageClients(values.storage, ctx.env);
    process.once("SIGINT", () => {
      process.stderr.write("\ninterrupted: run the same command again to continue where it stopped\n");
      process.exit(130);
    });
    try {
      const sizes = await Promise.all(paths.map(async (p) => (await stat(p)).size));
      const totalSize = sizes.reduce((a, b) => a + b, 0);
      const hashing = new Progress("hashing  ", totalSize, process.stderr, quiet);
      const files: LocalFile[] = [];
      for (const [i, path] of paths.entries()) {
        const digests = await hashLocal(path, sizes[i]!, (n) => hashing.add(n));
        const repoPath = info.isDirectory() ? relative(source, path).split(sep).join("/") : basename(path);
        files.push({ path, repoPath, size: sizes[i]!, ...digests });
      }
      hashing.finish();

      const present = new Set<string>();
      const shas = [...new Set(files.map((f) => f.sha256))];
      for (let i = 0; i < shas.length; i += 1000) {
        for (const sha of (await clients.storage.hasBlobs({ sha256: shas.slice(i, i + 1000) })).present)
          present.add(sha);
      }
      const missing = files.filter(
        (f, i) => !present.has(f.sha256) && files.findIndex((g) => g.sha256 === f.sha256) === i,
      );
      const toSend = missing.reduce((a, f) => a + f.size, 0);
      const uploading = new Progress("uploading", toSend, process.stderr, quiet);
      let resumedChunks = 0;
      let resumedBytes = 0;
      let sentChunks = 0;
      const small = missing.filter((f) => f.size < chunkSize);
      const large = missing.filter((f) => f.size >= chunkSize);
      // Large files one at a time with parallel chunks; small ones several at a time.
      for (const f of large) {
        const r = await uploadFile(clients.storage, f.path, {
          sha256: f.sha256,
          size: f.size,
          chunkSize,
          parallel,
          onProgress: (n) => uploading.add(n),
        });
        resumedChunks += r.chunksSkipped;
        resumedBytes += r.bytesSkipped;
        sentChunks += r.chunksSent;
      }
      const queue = [...small];
      await Promise.all(
        Array.from({ length: parallel }, async () => {
          for (let f = queue.shift(); f; f = queue.shift()) {
            const r = await uploadFile(clients.storage, f.path, {
              sha256: f.sha256,
              size: f.size,
              chunkSize,
              parallel: 1,
              onProgress: (n) => uploading.add(n),
            });
            sentChunks += r.chunksSent;
            resumedBytes += r.bytesSkipped;
          }
        }),
      );
      const timing = uploading.finish();

      // Add or replace these paths on top of the branch's current revision.
      let parent = "";
      const entries = new Map<
        string,
        { path: string; sha256: string; size: bigint; gitBlobSha1: string; lfs: boolean }
      >();
      try {
        const current = await clients.registry.getRevision({ repo, revision: branch });
        parent = current.revision?.commit ?? "";
        for (const e of current.revision?.entries ?? [])
          entries.set(e.path, { path: e.path, sha256: e.sha256, size: e.size, gitBlobSha1: e.gitBlobSha1, lfs: e.lfs });
      } catch (error) {
        if (!(error instanceof NearhubError && error.code === Code.NotFound)) throw error;
      }
      // Like huggingface_hub, no empty commit: when every file is already there at the same path
      // with the same bytes, the branch stays where it is.
      const unchanged = parent !== "" && files.every((f) => entries.get(f.repoPath)?.sha256 === f.sha256);
      for (const f of files) {
        entries.set(f.repoPath, {
          path: f.repoPath,
          sha256: f.sha256,
          size: BigInt(f.size),
          gitBlobSha1: f.gitBlobSha1,
          lfs: f.gitBlobSha1 === "",
        });
      }
      const message = values.message ?? values["revision-message"] ?? `Upload ${files.length} file(s) with nearhub`;
      let published;
      try {
        published = unchanged
          ? { revision: { commit: parent } }
          : await clients.registry.putRevision({
              repo,
              revision: {
                parent,
                message,
                author: values.author ?? ctx.env["USER"] ?? "",
                entries: [...entries.values()],
              },
              branch,
              expectedCommit: parent,
            });
      } catch (error) {
        if (error instanceof NearhubError && error.code === Code.Aborted) {
          throw new NearhubError(
            Code.Aborted,
            `${error.rawMessage}. Someone else published to ${branch} meanwhile; run the command again (the files are uploaded and will be skipped)`,
          );
        }
        throw error;
      }
      const result = {
        repo: repo.id,
        branch,
        commit: published.revision?.commit ?? "",
        // False when nothing changed and no commit was made.
        committed: !unchanged,
        files: files.length,
        skippedFiles: files.length - missing.length,
        // Sent by this run: a resumed upload's chunks already stored are not counted.
        uploadedBytes: toSend - resumedBytes,
        resumedBytes,
        chunksSent: sentChunks,
        chunksResumed: resumedChunks,
        seconds: Number(timing.seconds.toFixed(3)),
        storage: clients.address,
      };
      print(Boolean(values.json), result, () =>
        [
          `${result.commit} ${repo.id}@${branch}${unchanged ? " (no changes, no new commit)" : ""}: ${files.length} file(s), ${files.length - missing.length} already stored, ${formatBytes(result.uploadedBytes)} uploaded${resumedChunks > 0 ? ` (${resumedChunks} chunk(s), ${formatBytes(resumedBytes)}, resumed)` : ""} at ${formatBytes(timing.seconds > 0 ? result.uploadedBytes / timing.seconds : 0)}/s`,
        ].join("\n"),
      );
      return 0;
    } finally {
      clients.close();
    }
  },
};
