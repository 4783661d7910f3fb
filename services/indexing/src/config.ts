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
};

/** The parsed configuration of the indexing service. */
export type IndexingConfig = z.infer<z.ZodObject<typeof indexingEnv>>;
