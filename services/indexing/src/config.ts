import { commonEnv, port } from "@nearhub/platform";
import { z } from "zod";

/** The indexing service's environment. */
export const indexingEnv = {
  ...commonEnv,
  NEARHUB_GRPC_PORT: port(7103),
  NEARHUB_SEARCH_BACKEND: z
    .enum(["sqlite", "elasticsearch"], { error: "must be sqlite or elasticsearch" })
    .default("sqlite"),
  ELASTICSEARCH_URL: z.url({ error: "must be an http(s) URL such as http://elasticsearch:9200" }).optional(),
  /** The storage service, whose registry and blobs model and dataset documents are read from. */
  NEARHUB_STORAGE_ADDR: z
    .string()
    .regex(/^[^\s:/]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, "must be host:port, e.g. storage:7102")
    .default("127.0.0.1:7102"),
};

/** The parsed configuration of the indexing service. */
export type IndexingConfig = z.infer<z.ZodObject<typeof indexingEnv>>;
