import { randomBytes } from "node:crypto";
import { Client } from "@elastic/elasticsearch";
import { elasticsearch } from "@nearhub/testing";
import { ElasticsearchBackend } from "./elasticsearch-index.js";
import { indexBehaviour } from "./index-behaviour.js";

// The same behaviour suite as SQLite, against a real Elasticsearch where one answers
// (ELASTICSEARCH_URL, or a container when a Docker engine is available); skipped with the
// reason otherwise. Never a fake.
const target = await elasticsearch();

indexBehaviour(
  "elasticsearch",
  async () => {
    if (!("url" in target)) throw new Error("the suite is skipped without Elasticsearch");
    const client = new Client({ node: target.url });
    const backend = new ElasticsearchBackend(client, `nearhub-test-${randomBytes(4).toString("hex")}`, {
      refresh: "wait_for",
    });
    const { index } = await backend.open();
    return {
      index,
      dispose: async () => {
        await client.indices.delete({ index: `${backend.alias}-*` }).catch(() => undefined);
        await client.indices.deleteIndexTemplate({ name: backend.alias }).catch(() => undefined);
        await backend.close();
      },
    };
  },
  "skip" in target ? target.skip : undefined,
);
