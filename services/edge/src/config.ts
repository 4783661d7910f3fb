import { commonEnv, port } from "@nearhub/platform";
import { z } from "zod";

const address = (fallback: string) =>
  z
    .string()
    .regex(/^[^\s:/]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, "must be host:port, e.g. sync:7101")
    .default(fallback);

/** The edge's environment. */
export const edgeEnv = {
  ...commonEnv,
  /** The public HTTP port: git, the Hugging Face API, search, admin, /metrics, /healthz. */
  NEARHUB_HTTP_PORT: port(8080),
  /** gRPC port for grpc.health.v1 only. */
  NEARHUB_GRPC_PORT: port(7100),
  NEARHUB_SYNC_ADDR: address("127.0.0.1:7101"),
  NEARHUB_STORAGE_ADDR: address("127.0.0.1:7102"),
  NEARHUB_INDEXING_ADDR: address("127.0.0.1:7103"),
  NEARHUB_AUDIT_ADDR: address("127.0.0.1:7104"),
  NEARHUB_INFERENCE_ADDR: address("127.0.0.1:8001"),
};

/** The parsed configuration of the edge. */
export type EdgeConfig = z.infer<z.ZodObject<typeof edgeEnv>>;
