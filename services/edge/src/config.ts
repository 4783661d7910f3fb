import { commonEnv, port } from "@nearhub/platform";
import { z } from "zod";
import { hfEnv } from "./hf-config.js";

const address = (fallback: string) =>
  z
    .string()
    .regex(/^[^\s:/]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, "must be host:port, e.g. sync:7101")
    .default(fallback);

/** The edge's environment. */
export const edgeEnv = {
  ...commonEnv,
  ...hfEnv,
  /** The public HTTP port: git, the Hugging Face API, search, admin, /metrics, /healthz. */
  NEARHUB_HTTP_PORT: port(8080),
  /** gRPC port for grpc.health.v1 only. */
  NEARHUB_GRPC_PORT: port(7100),
  NEARHUB_SYNC_ADDR: address("127.0.0.1:7101"),
  NEARHUB_STORAGE_ADDR: address("127.0.0.1:7102"),
  NEARHUB_INDEXING_ADDR: address("127.0.0.1:7103"),
  NEARHUB_AUDIT_ADDR: address("127.0.0.1:7104"),
  NEARHUB_INFERENCE_ADDR: address("127.0.0.1:8001"),
  /** The sync service's internal git smart-HTTP endpoint, which serves clones. */
  NEARHUB_SYNC_GIT_URL: z
    .url({
      protocol: /^https?$/,
      error: "must be an http(s) URL such as http://sync:7111 (https://sync:7111 when sync has NEARHUB_TLS_CERT)",
    })
    .default("http://127.0.0.1:7111"),
  /** Whether a clone of a repository not yet mirrored creates the mirror (pull-through). */
  NEARHUB_GIT_PULL_THROUGH: z.enum(["on", "off"], { error: "must be on or off" }).default("on"),
  /** Comma-separated patterns pull-through may create, e.g. `github.com/pytorch/*,github.com/acme/*`. */
  NEARHUB_GIT_PULL_THROUGH_ALLOW: z.string().default("*"),
  /** How long a first clone waits for the first sync of a pull-through mirror. */
  NEARHUB_GIT_PULL_THROUGH_TIMEOUT_S: z.coerce.number().int().min(1).max(86_400).default(900),
  /** The secret GitHub signs webhook deliveries with (X-Hub-Signature-256); webhooks are refused without it. */
  NEARHUB_GITHUB_WEBHOOK_SECRET: z.string().optional(),
  /** SSH port for read-only `git clone ssh://…` (git-upload-pack); 0 turns SSH off. */
  NEARHUB_SSH_PORT: z.coerce
    .number({ error: "must be a port number from 0 (off) to 65535, e.g. 2222" })
    .int("must be a port number from 0 (off) to 65535, e.g. 2222")
    .min(0, "must be a port number from 0 (off) to 65535, e.g. 2222")
    .max(65535, "must be a port number from 0 (off) to 65535, e.g. 2222")
    .default(0),
  /** The SSH host key (OpenSSH private key file); generated and kept in NEARHUB_DATA_DIR when unset. */
  NEARHUB_SSH_HOST_KEY: z.string().optional(),
  /** authorized_keys file: each key's comment is its subject (`user:alice`); re-read when it changes. */
  NEARHUB_SSH_AUTHORIZED_KEYS: z.string().optional(),
  /** The upstream name GitHub webhook repositories map to. */
  NEARHUB_GITHUB_WEBHOOK_UPSTREAM: z.string().default("github.com"),
};

/** The parsed configuration of the edge. */
export type EdgeConfig = z.infer<z.ZodObject<typeof edgeEnv>>;
