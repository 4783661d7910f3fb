import { copyFile, link, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { modelConfigSchema, modelNameOf } from "@nearhub/inference-gateway";
import { createClient, formatZodIssues } from "@nearhub/platform";
import { GRPCInferenceService } from "@nearhub/proto/inference";
import { parse, print, UsageError, type Command } from "../command.js";
import { authHeaders } from "../http-api.js";
import { intOption, parseRepo } from "../storage-target.js";
import { grpcCredentials } from "../tls.js";
import { hfModelCommand } from "./hf-model.js";
import { uploadCommand } from "./upload.js";

const DEFAULT_INFERENCE_ADDR = "127.0.0.1:8001";

function intList(name: string, value: string | undefined): number[] {
  if (value === undefined) return [];
  const parts = value.split(",").map((p) => Number(p.trim()));
  if (parts.some((n) => !Number.isInteger(n) || n < 1)) {
    throw new UsageError(`--${name} ${value} must be comma-separated positive integers, e.g. 8,16`);
  }
  return parts;
}

/**
 * `nearhub model serve`: publishes an ONNX file and its `nearhub-model.json` (written from the
 * options) as a new revision of a model repo in storage's registry, which is a new version
 * for every inference gateway reading that registry; `--load` then asks a gateway to load it
 * at once and prints its inputs and outputs.
 */
export const modelCommand: Command = {
  name: "model",
  usage: [
    "nearhub model serve <model.onnx> --name NAME [--max-batch-size N] [--instances N] [--batching]",
    "               [--max-queue-delay-us N] [--preferred-batch-size 8,16] [--max-queue-size N]",
    "               [--storage HOST:PORT] [--load] [--inference HOST:PORT] [--json]",
    ...hfModelCommand.usage,
  ],
  async run(args, ctx) {
    const [sub, ...rest] = args;
    // add, list, show, sync, remove: scheduled Hugging Face mirrors (hf-model.ts).
    if (sub !== "serve" && sub !== undefined) return hfModelCommand.run(args, ctx);
    if (sub !== "serve") throw new UsageError("model takes a subcommand: serve, add, list, show, sync or remove");
    const { values, positionals } = parse(rest, {
      name: { type: "string" },
      "max-batch-size": { type: "string" },
      instances: { type: "string" },
      batching: { type: "boolean" },
      "max-queue-delay-us": { type: "string" },
      "preferred-batch-size": { type: "string" },
      "max-queue-size": { type: "string" },
      storage: { type: "string" },
      load: { type: "boolean" },
      inference: { type: "string" },
      json: { type: "boolean" },
    });
    if (positionals.length !== 1) throw new UsageError("model serve takes one <model.onnx> file");
    const file = positionals[0] as string;
    if (!values.name) throw new UsageError("model serve needs --name NAME (the model name clients use)");
    const repo = parseRepo(values.name, "model");
    const modelName = modelNameOf(repo.id);
    try {
      if (!(await stat(file)).isFile()) throw new UsageError(`${file} is not a file`);
    } catch (error) {
      if (error instanceof UsageError) throw error;
      throw new UsageError(`${file} does not exist`);
    }
    const maxBatch =
      values["max-batch-size"] === undefined ? 0 : intOption("max-batch-size", values["max-batch-size"], 0, 65536);
    const batching = Boolean(values.batching || values["max-queue-delay-us"] || values["preferred-batch-size"]);
    if (batching && maxBatch === 0)
      throw new UsageError("dynamic batching needs --max-batch-size N (the model's first dimension is the batch)");
    const raw = {
      backend: "onnxruntime",
      model_file: "model.onnx",
      max_batch_size: maxBatch,
      instances: intOption("instances", values.instances, 1, 16),
      max_queue_size: intOption("max-queue-size", values["max-queue-size"], 1024, 1_000_000),
      ...(batching
        ? {
            dynamic_batching: {
              preferred_batch_size: intList("preferred-batch-size", values["preferred-batch-size"]),
              max_queue_delay_microseconds:
                values["max-queue-delay-us"] === undefined
                  ? 0
                  : intOption("max-queue-delay-us", values["max-queue-delay-us"], 0, 10_000_000),
            },
          }
        : {}),
    };
    const parsed = modelConfigSchema.safeParse(raw);
    if (!parsed.success) throw new UsageError(`invalid model settings: ${formatZodIssues(parsed.error)}`);

    // The upload command publishes a folder: the model (hard-linked when it can be) and its settings.
    const staging = await mkdtemp(join(dirname(file), ".nearhub-model-"));
    try {
      await link(file, join(staging, "model.onnx")).catch(() => copyFile(file, join(staging, "model.onnx")));
      await writeFile(join(staging, "nearhub-model.json"), `${JSON.stringify(raw, null, 2)}\n`);
      const uploadArgs = [
        repo.id,
        staging,
        "--kind",
        "model",
        "--message",
        `nearhub model serve ${modelName}`,
        "--quiet",
      ];
      if (values.storage) uploadArgs.push("--storage", values.storage);
      if (values.json) uploadArgs.push("--json");
      const code = await uploadCommand.run(uploadArgs, ctx);
      if (code !== 0) return code;
    } finally {
      await rm(staging, { recursive: true, force: true });
    }

    const address = values.inference ?? ctx.env["NEARHUB_INFERENCE_ADDR"] ?? DEFAULT_INFERENCE_ADDR;
    if (!values.load) {
      if (!values.json) {
        process.stdout.write(
          `model ${modelName} registered; a gateway reading this storage loads it on the first request (KServe v2 gRPC at ${address}, model_name ${JSON.stringify(modelName)})\n`,
        );
      }
      return 0;
    }
    const client = createClient(GRPCInferenceService, address, {
      timeoutMs: 120_000,
      ...grpcCredentials(ctx.env),
      metadata: authHeaders(),
    });
    try {
      await client.repositoryModelLoad({ modelName });
      const meta = await client.modelMetadata({ name: modelName });
      const tensors = (ts: typeof meta.inputs) =>
        ts.map((t) => `${t.name} ${t.datatype}[${t.shape.join(",")}]`).join(", ");
      print(
        Boolean(values.json),
        {
          model: modelName,
          versions: meta.versions,
          inputs: meta.inputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape.map(Number) })),
          outputs: meta.outputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape.map(Number) })),
          inference: address,
        },
        () =>
          `model ${modelName} version ${meta.versions[meta.versions.length - 1] ?? "?"} ready at ${address}: inputs ${tensors(meta.inputs)}; outputs ${tensors(meta.outputs)}`,
      );
      return 0;
    } finally {
      client.$close();
    }
  },
};
