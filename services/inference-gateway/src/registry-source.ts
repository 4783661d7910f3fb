import { createHash } from "node:crypto";
import type { ChannelCredentials } from "@grpc/grpc-js";
import { Code, NearhubError, createClient, type Client } from "@nearhub/platform";
import { RegistryService, RepoKind, type ManifestEntry } from "@nearhub/proto/registry";
import { StorageService } from "@nearhub/proto/storage";
import { parseModelConfig } from "./model-config.js";
import {
  checkModelName,
  checkModelVersion,
  type FetchedModel,
  type ModelListing,
  type ModelSource,
} from "./model-source.js";

/** The file that marks a registry model repo as servable. */
export const MODEL_CONFIG_FILE = "nearhub-model.json";

/** Options of {@link RegistrySource}. */
export interface RegistrySourceOptions {
  /** Metadata of every call to storage: the gateway's own service identity. */
  callMetadata?: () => Record<string, string>;
  /** Bytes per ranged GetBlob call. */
  rangeBytes?: number;
  /** Ranged GetBlob calls in flight per model file. */
  parallel?: number;
  /** Called as bytes arrive (first-load progress). */
  onBytes?: (n: number) => void;
  /** TLS of the calls to storage; plain text when absent. */
  credentials?: ChannelCredentials;
}

/** A registry repo id (`owner/name` or `name`) as a model name: '/' becomes '--', which repo ids never hold. */
export function modelNameOf(repoId: string): string {
  return repoId.replace("/", "--");
}

/** The registry repo id of a model name. */
export function repoIdOf(modelName: string): string {
  return modelName.replace("--", "/");
}

/**
 * Models published in storage's registry: a model repo whose default branch holds
 * `nearhub-model.json` is servable. Version N is the N-th revision of the default branch
 * (oldest first), so every `nearhub model serve` of a new file adds a version. The model file
 * is fetched in parallel ranged GetBlob calls into memory and verified against its sha256.
 */
export class RegistrySource implements ModelSource {
  private readonly registry: Client<typeof RegistryService>;
  private readonly storage: Client<typeof StorageService>;

  constructor(
    readonly address: string,
    private readonly options: RegistrySourceOptions = {},
  ) {
    const credentials = {
      ...(options.credentials ? { credentials: options.credentials } : {}),
      ...(options.callMetadata ? { callMetadata: options.callMetadata } : {}),
    };
    this.registry = createClient(RegistryService, address, { timeoutMs: 30_000, ...credentials });
    this.storage = createClient(StorageService, address, {
      timeoutMs: 120_000,
      maxMessageBytes: 16 * 1024 * 1024,
      ...credentials,
    });
  }

  /** Closes the clients. */
  close(): void {
    this.registry.$close();
    this.storage.$close();
  }

  /** Commits of the default branch, oldest first: index + 1 is the version. */
  private async history(id: string): Promise<string[]> {
    const commits: string[] = [];
    let pageToken = "";
    do {
      const page = await this.registry.listRevisions({ repo: { kind: RepoKind.MODEL, id }, pageSize: 1000, pageToken });
      commits.push(...page.revisions.map((r) => r.commit));
      pageToken = page.nextPageToken;
    } while (pageToken && commits.length < 100_000);
    return commits.reverse();
  }

  async list(): Promise<ModelListing[]> {
    const out: ModelListing[] = [];
    let pageToken = "";
    do {
      const page = await this.registry.listRepos({ kind: RepoKind.MODEL, pageSize: 1000, pageToken });
      for (const repo of page.repos) {
        const id = repo.repo?.id ?? "";
        if (!id) continue;
        const head = await this.registry.getRevision({ repo: { kind: RepoKind.MODEL, id } }).catch(() => undefined);
        if (!head?.revision?.entries.some((e) => e.path === MODEL_CONFIG_FILE)) continue;
        const commits = await this.history(id);
        out.push({ name: modelNameOf(id), versions: commits.map((_, i) => String(i + 1)) });
      }
      pageToken = page.nextPageToken;
    } while (pageToken);
    return out;
  }

  async fetch(name: string, version: string): Promise<FetchedModel> {
    checkModelName(name);
    checkModelVersion(version);
    const id = repoIdOf(name);
    const commits = await this.history(id);
    const commit = commits[Number(version) - 1];
    if (!commit) throw new NearhubError(Code.NotFound, `model ${name} has no version ${version} in the registry`);
    const where = `model ${name} version ${version} (registry repo ${id} at ${commit.slice(0, 12)})`;
    const revision = (await this.registry.getRevision({ repo: { kind: RepoKind.MODEL, id }, revision: commit }))
      .revision;
    const entries = revision?.entries ?? [];
    const configEntry = entries.find((e) => e.path === MODEL_CONFIG_FILE);
    if (!configEntry) throw new NearhubError(Code.FailedPrecondition, `${where} has no ${MODEL_CONFIG_FILE}`);
    if (configEntry.size > 1024n * 1024n) {
      throw new NearhubError(Code.FailedPrecondition, `${where}: ${MODEL_CONFIG_FILE} is larger than 1 MiB`);
    }
    const configText = new TextDecoder().decode(await this.fetchBlob(configEntry));
    const config = parseModelConfig(configText, `${where} ${MODEL_CONFIG_FILE}`);
    const modelEntry = entries.find((e) => e.path === config.model_file);
    if (!modelEntry) throw new NearhubError(Code.FailedPrecondition, `${where} has no ${config.model_file}`);
    return { config, bytes: await this.fetchBlob(modelEntry), where };
  }

  /** A blob in parallel ranged GetBlob calls, verified against its sha256. */
  private async fetchBlob(entry: ManifestEntry): Promise<Uint8Array> {
    const size = Number(entry.size);
    const out = new Uint8Array(size);
    const rangeBytes = this.options.rangeBytes ?? 8 * 1024 * 1024;
    const ranges = Array.from({ length: Math.max(1, Math.ceil(size / rangeBytes)) }, (_, i) => i);
    const worker = async () => {
      for (let i = ranges.shift(); i !== undefined; i = ranges.shift()) {
        const offset = i * rangeBytes;
        const length = Math.min(rangeBytes, size - offset);
        let at = offset;
        for await (const part of this.storage.getBlob({
          sha256: entry.sha256,
          offset: BigInt(offset),
          length: BigInt(length),
        })) {
          if (at + part.chunk.byteLength > offset + length) {
            throw new NearhubError(Code.DataLoss, `blob ${entry.sha256} sent more bytes than the range asked`);
          }
          out.set(part.chunk, at);
          at += part.chunk.byteLength;
          this.options.onBytes?.(part.chunk.byteLength);
        }
        if (at !== offset + length) {
          throw new NearhubError(
            Code.DataLoss,
            `blob ${entry.sha256} ended at byte ${at} inside range ${offset}+${length}`,
          );
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.options.parallel ?? 4, ranges.length) }, worker));
    const digest = createHash("sha256").update(out).digest("hex");
    if (digest !== entry.sha256) {
      throw new NearhubError(Code.DataLoss, `${entry.path}: the fetched bytes hash to ${digest}, not ${entry.sha256}`);
    }
    return out;
  }
}

/** Several sources as one: a model is served from the first source that lists it. */
export class CompositeSource implements ModelSource {
  constructor(private readonly sources: ModelSource[]) {}

  async list(): Promise<ModelListing[]> {
    const seen = new Map<string, ModelListing>();
    for (const source of this.sources) {
      for (const m of await source.list()) if (!seen.has(m.name)) seen.set(m.name, m);
    }
    return [...seen.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  async fetch(name: string, version: string): Promise<FetchedModel> {
    for (const source of this.sources) {
      if ((await source.list()).some((m) => m.name === name)) return source.fetch(name, version);
    }
    throw new NearhubError(Code.NotFound, `model ${name} is in no model source`);
  }
}
