import { Code, NearhubError } from "@nearhub/platform";

/** A model the gateway knows, with its serving state (Triton's READY/UNAVAILABLE/LOADING). */
export interface ModelEntry {
  name: string;
  version: string;
  state: "READY" | "UNAVAILABLE" | "LOADING";
  reason: string;
}

/**
 * The models this gateway can serve. Models become known when they are registered in storage
 * (the inference issue wires registry events and the ONNX Runtime backend); until then the
 * repository is empty and every model-addressed call answers NOT_FOUND with how to add one.
 */
export class ModelRepository {
  private readonly models = new Map<string, ModelEntry>();

  /** Every known model, optionally only the ready ones. */
  list(readyOnly = false): ModelEntry[] {
    return [...this.models.values()].filter((m) => !readyOnly || m.state === "READY");
  }

  /** The model, or NOT_FOUND naming it. */
  require(name: string, version = ""): ModelEntry {
    if (!name) throw new NearhubError(Code.InvalidArgument, "model name is required");
    if (name.length > 256) throw new NearhubError(Code.InvalidArgument, "model name is longer than 256 characters");
    const model = this.models.get(name);
    if (!model || (version && model.version !== version)) {
      throw new NearhubError(
        Code.NotFound,
        `model ${JSON.stringify(name.slice(0, 100))}${version ? ` version ${JSON.stringify(version.slice(0, 20))}` : ""} is not in the repository; register it with: nearhub model serve ./model.onnx --name ${name.slice(0, 100)}`,
      );
    }
    return model;
  }
}
