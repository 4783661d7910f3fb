import { parse, print, UsageError, type Command } from "../command.js";
import { callApi } from "../http-api.js";

interface HitJson {
  id: string;
  kind?: string;
  description?: string;
  downloads?: string;
  state?: string;
  pipelineTag?: string;
}

const KINDS = ["repo", "model", "dataset", "all"];
const SORTS = ["relevance", "downloads", "likes", "updated", "created", "name"];

function hitLine(h: HitJson): string {
  const kind = (h.kind ?? "").replace("DOCUMENT_KIND_", "").toLowerCase().replace("git_repo", "repo");
  const extra = [
    h.pipelineTag,
    h.state,
    h.downloads && h.downloads !== "0" ? `${Number(h.downloads).toLocaleString("en")} downloads` : "",
  ].filter(Boolean);
  return `${kind.padEnd(8)} ${h.id}${h.description ? `  ${h.description}` : ""}${extra.length ? `  (${extra.join(", ")})` : ""}`;
}

/** The number of matches as people read it: `1,000+` when the server counted no further. */
function totalText(total: string | undefined, lowerBound: boolean | undefined, shown: number): string {
  const n = Number(total ?? shown).toLocaleString("en");
  return lowerBound ? `${n}+` : n;
}

/** `nearhub search`: repositories, models and datasets, through the edge. */
export const searchCommand: Command = {
  name: "search",
  usage: [
    "nearhub search <query> [--kind repo|model|dataset] [--author A] [--tag T] [--sort downloads|updated|name|relevance]",
    "               [--asc|--desc] [--limit N] [--json]",
  ],
  async run(args, ctx) {
    const { values, positionals } = parse(args, {
      url: { type: "string" },
      kind: { type: "string" },
      author: { type: "string" },
      tag: { type: "string" },
      sort: { type: "string" },
      asc: { type: "boolean" },
      desc: { type: "boolean" },
      limit: { type: "string" },
      json: { type: "boolean" },
    });
    if (values.kind && !KINDS.includes(values.kind)) {
      throw new UsageError(`--kind ${values.kind} must be one of ${KINDS.join(", ")}`);
    }
    if (values.sort && !SORTS.includes(values.sort)) {
      throw new UsageError(`--sort ${values.sort} must be one of ${SORTS.join(", ")}`);
    }
    if (values.asc && values.desc) throw new UsageError("--asc and --desc cannot both be given");
    const params = new URLSearchParams({ q: positionals.join(" ") });
    if (values.kind) params.set("kind", values.kind);
    if (values.author) params.set("author", values.author);
    if (values.tag) for (const tag of values.tag.split(",")) params.append("tag", tag);
    if (values.sort) params.set("sort", values.sort);
    if (values.asc) params.set("direction", "asc");
    if (values.desc) params.set("direction", "desc");
    if (values.limit) params.set("limit", values.limit);
    const result = (await callApi(values.url ?? ctx.defaultUrl, "GET", `/api/search?${params.toString()}`)) as {
      hits?: HitJson[];
      total?: string;
      totalIsLowerBound?: boolean;
    };
    const hits = result.hits ?? [];
    print(values.json ?? false, result, () =>
      hits.length === 0
        ? "no matches"
        : [
            ...hits.map(hitLine),
            `${hits.length} of ${totalText(result.total, result.totalIsLowerBound, hits.length)} match${result.total === "1" && !result.totalIsLowerBound ? "" : "es"}`,
          ].join("\n"),
    );
    return 0;
  },
};
