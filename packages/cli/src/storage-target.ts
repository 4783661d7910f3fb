import { createClient, type Client } from "@nearhub/platform";
import { RegistryService, RepoKind } from "@nearhub/proto/registry";
import { StorageService } from "@nearhub/proto/storage";
import { UsageError } from "./command.js";
import { authHeaders } from "./http-api.js";
import { grpcCredentials } from "./tls.js";

/** Bulk data goes to the storage service over gRPC, not through the edge. */
export const DEFAULT_STORAGE_ADDR = "127.0.0.1:7102";

const KINDS: Record<string, RepoKind> = { model: RepoKind.MODEL, dataset: RepoKind.DATASET, space: RepoKind.SPACE };

/**
 * `owner/name`, `name`, or with the Hugging Face prefixes `datasets/owner/name` and
 * `spaces/owner/name`; `--kind` says the kind when there is no prefix (model by default).
 */
export function parseRepo(text: string, kindOption: string | undefined): { kind: RepoKind; id: string } {
  if (kindOption !== undefined && !(kindOption in KINDS)) {
    throw new UsageError(`--kind ${kindOption} must be one of ${Object.keys(KINDS).join(", ")}`);
  }
  let kind = KINDS[kindOption ?? "model"]!;
  let id = text;
  const prefixed = /^(datasets|spaces|models)\/(.+)$/.exec(text);
  if (prefixed) {
    kind = prefixed[1] === "datasets" ? RepoKind.DATASET : prefixed[1] === "spaces" ? RepoKind.SPACE : RepoKind.MODEL;
    id = prefixed[2]!;
  }
  if (id === "" || id.split("/").length > 2)
    throw new UsageError(`repo ${JSON.stringify(text)} must be owner/name or name`);
  return { kind, id };
}

/** gRPC clients of the storage service at `--storage`, $NEARHUB_STORAGE_ADDR, or 127.0.0.1:7102. */
export function storageClients(
  option: string | undefined,
  env: NodeJS.ProcessEnv,
): {
  address: string;
  storage: Client<typeof StorageService>;
  registry: Client<typeof RegistryService>;
  close(): void;
} {
  const address = option ?? env["NEARHUB_STORAGE_ADDR"] ?? DEFAULT_STORAGE_ADDR;
  const tls = { ...grpcCredentials(env), metadata: authHeaders() };
  const storage = createClient(StorageService, address, {
    maxMessageBytes: 16 * 1024 * 1024,
    timeoutMs: 60_000,
    ...tls,
  });
  const registry = createClient(RegistryService, address, { timeoutMs: 60_000, ...tls });
  return {
    address,
    storage,
    registry,
    close: () => {
      storage.$close();
      registry.$close();
    },
  };
}

/** A positive integer option. */
export function intOption(name: string, value: string | undefined, fallback: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > max)
    throw new UsageError(`--${name} ${value} must be an integer from 1 to ${max}`);
  return n;
}
