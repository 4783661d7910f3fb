import { readFile, readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { Code, NearhubError } from "@nearhub/platform";
import { parseModelConfig, type ModelConfig } from "./model-config.js";

/** A model the source holds, with its versions (newest last). */
export interface ModelListing {
  name: string;
  versions: string[];
}

/** A model version's configuration and file, ready to load. */
export interface FetchedModel {
  config: ModelConfig;
  bytes: Uint8Array;
  /** Where it came from, for messages. */
  where: string;
}

/** Where models come from: a local folder, or registry repos in storage. */
export interface ModelSource {
  /** Every model the source holds. */
  list(): Promise<ModelListing[]>;
  /** One version's configuration and model file; NOT_FOUND when absent. */
  fetch(name: string, version: string): Promise<FetchedModel>;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const VERSION = /^[0-9]{1,18}$/;

/** INVALID_ARGUMENT unless `name` is a model name (no path separators, no `..`). */
export function checkModelName(name: string): void {
  if (!NAME.test(name) || name.includes("..")) {
    throw new NearhubError(
      Code.InvalidArgument,
      `model name ${JSON.stringify(name.slice(0, 64))} is invalid: use 1-128 letters, digits, '_', '.', '-', starting with a letter or digit`,
    );
  }
}

/** INVALID_ARGUMENT unless `version` is empty or a positive decimal number. */
export function checkModelVersion(version: string): void {
  if (version !== "" && !VERSION.test(version)) {
    throw new NearhubError(
      Code.InvalidArgument,
      `model version ${JSON.stringify(version.slice(0, 32))} is invalid: versions are decimal numbers such as 1`,
    );
  }
}

/** Sorts decimal version strings in numeric order. */
export function sortVersions(versions: string[]): string[] {
  return [...versions].sort((a, b) => (BigInt(a) < BigInt(b) ? -1 : BigInt(a) > BigInt(b) ? 1 : 0));
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/**
 * A Triton-style folder (NEARHUB_MODEL_DIR): `<name>/<version>/model.onnx` with
 * `nearhub-model.json` beside the file or in `<name>/` for every version.
 */
export class LocalFolderSource implements ModelSource {
  constructor(readonly root: string) {}

  async list(): Promise<ModelListing[]> {
    const entries = await readdir(this.root, { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return [];
      throw error;
    });
    const out: ModelListing[] = [];
    for (const entry of entries) {
      if (!entry.isDirectory() || !NAME.test(entry.name) || entry.name.includes("..")) continue;
      const versions = (await readdir(join(this.root, entry.name), { withFileTypes: true }))
        .filter((v) => v.isDirectory() && VERSION.test(v.name))
        .map((v) => v.name);
      if (versions.length > 0) out.push({ name: entry.name, versions: sortVersions(versions) });
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  async fetch(name: string, version: string): Promise<FetchedModel> {
    checkModelName(name);
    checkModelVersion(version);
    const dir = join(this.root, name, version);
    const where = `model ${name} version ${version} (${dir})`;
    let configText = "";
    for (const candidate of [join(dir, "nearhub-model.json"), join(this.root, name, "nearhub-model.json")]) {
      if (await exists(candidate)) {
        configText = await readFile(candidate, "utf8");
        break;
      }
    }
    const config = parseModelConfig(configText, `${where} nearhub-model.json`);
    if (!NAME.test(config.model_file)) {
      throw new NearhubError(Code.FailedPrecondition, `${where}: model_file must be a file name in the version folder`);
    }
    const file = join(dir, config.model_file);
    const bytes = await readFile(file).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") {
        throw new NearhubError(Code.NotFound, `${where}: ${config.model_file} is missing`);
      }
      throw error;
    });
    return { config, bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), where };
  }
}
