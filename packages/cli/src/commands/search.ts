import { parse, print, type Command } from "../command.js";
import { callApi } from "../http-api.js";

/** `nearhub search`: repositories, models and datasets, through the edge. */
export const searchCommand: Command = {
  name: "search",
  usage: ["nearhub search <query> [--kind repo|model|dataset] [--limit N] [--json]"],
  async run(args, ctx) {
    const { values, positionals } = parse(args, {
      url: { type: "string" },
      kind: { type: "string" },
      limit: { type: "string" },
      json: { type: "boolean" },
    });
    const params = new URLSearchParams({ q: positionals.join(" ") });
    if (values.kind) params.set("kind", values.kind);
    if (values.limit) params.set("limit", values.limit);
    const result = (await callApi(values.url ?? ctx.defaultUrl, "GET", `/api/search?${params.toString()}`)) as {
      hits?: Array<{ id: string; kind?: string; description?: string }>;
      total?: string;
    };
    const hits = result.hits ?? [];
    print(values.json ?? false, result, () =>
      hits.length === 0
        ? "no matches"
        : hits
            .map(
              (h) =>
                `${(h.kind ?? "").replace("DOCUMENT_KIND_", "").toLowerCase().padEnd(9)} ${h.id}  ${h.description ?? ""}`,
            )
            .join("\n"),
    );
    return 0;
  },
};
