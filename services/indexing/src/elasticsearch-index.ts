import { setTimeout as sleep } from "node:timers/promises";
import { errors, type Client, type estypes } from "@elastic/elasticsearch";
import { DocumentKind, SortField } from "@nearhub/proto/search";
import {
  countBound,
  effectiveSort,
  filterTags,
  searchTokens,
  type IndexHit,
  type IndexOp,
  type IndexQuery,
  type IndexSuggestion,
  type SearchDocument,
  type SearchIndex,
  type SearchResult,
} from "./document.js";

/** Operations per bulk request, and bulk requests in flight at once per index (back-pressure). */
const BULK_CHUNK = 500;
const MAX_IN_FLIGHT = 2;
const MAX_RETRIES = 5;

/** The stored shape: document fields plus what queries need (`deleted`, `name_key`…). */
interface Source {
  id: string;
  kind: number;
  title: string;
  description: string;
  body: string;
  author: string;
  tags: string[];
  filter_tags: string[];
  pipeline_tag: string;
  library_name: string;
  license: string;
  upstream: string;
  state: string;
  default_branch: string;
  refs_count: number;
  files: SearchDocument["files"];
  file_names: string;
  size_bytes: number;
  downloads: number;
  likes: number;
  private: boolean;
  gated: boolean;
  sha: string;
  created_at: number;
  updated_at: number;
  status_at: number;
  deleted: boolean;
  name_key: string;
  suggest?: { input: string[]; weight: number; contexts: { kind: string[] } };
}

const keyword = { type: "keyword", normalizer: "lowercase_keyword" } as const;

/** The index template's mappings: keyword fields with text sub-fields, and a completion field. */
export const MAPPINGS: estypes.MappingTypeMapping = {
  dynamic: "strict",
  properties: {
    id: { type: "keyword", fields: { text: { type: "text" } } },
    kind: { type: "byte" },
    title: { type: "text", fields: { raw: { type: "keyword", ignore_above: 512 } } },
    description: { type: "text" },
    body: { type: "text" },
    author: keyword,
    tags: { type: "keyword", index: false },
    filter_tags: keyword,
    pipeline_tag: keyword,
    library_name: keyword,
    license: keyword,
    upstream: keyword,
    state: keyword,
    default_branch: { type: "keyword", index: false },
    refs_count: { type: "integer" },
    files: { type: "object", enabled: false },
    file_names: { type: "text" },
    size_bytes: { type: "long" },
    downloads: { type: "long" },
    likes: { type: "long" },
    private: { type: "boolean" },
    gated: { type: "boolean" },
    sha: { type: "keyword", index: false },
    created_at: { type: "date", format: "epoch_millis" },
    updated_at: { type: "date", format: "epoch_millis" },
    status_at: { type: "long", index: false },
    deleted: { type: "boolean" },
    name_key: { type: "keyword" },
    suggest: {
      type: "completion",
      analyzer: "simple",
      contexts: [{ name: "kind", type: "category" }],
    },
  },
};

function toSource(doc: SearchDocument): Source {
  const short = doc.id.slice(doc.id.lastIndexOf("/") + 1);
  return {
    id: doc.id,
    kind: doc.kind,
    title: doc.title,
    description: doc.description,
    body: doc.body,
    author: doc.author,
    tags: doc.tags,
    filter_tags: filterTags(doc),
    pipeline_tag: doc.pipelineTag,
    library_name: doc.libraryName,
    license: doc.license,
    upstream: doc.upstream,
    state: doc.state,
    default_branch: doc.defaultBranch,
    refs_count: doc.refsCount,
    files: doc.files,
    file_names: doc.files.map((f) => f.path).join(" "),
    size_bytes: doc.sizeBytes,
    downloads: doc.downloads,
    likes: doc.likes,
    private: doc.private,
    gated: doc.gated,
    sha: doc.sha,
    created_at: doc.createdAtMs,
    updated_at: doc.updatedAtMs,
    status_at: doc.statusAtMs,
    deleted: false,
    name_key: doc.id.toLowerCase(),
    suggest: {
      input: [...new Set([doc.id, short, doc.title].filter(Boolean))],
      // Popular documents complete first; weights are capped integers.
      weight: Math.min(2 ** 31 - 1, Math.max(1, Math.round(Math.log2(doc.downloads + 1) * 1000))),
      contexts: { kind: [String(doc.kind)] },
    },
  };
}

function toHit(source: Source, score: number): IndexHit {
  return {
    id: source.id,
    kind: source.kind,
    title: source.title,
    description: source.description,
    author: source.author,
    tags: source.tags,
    pipelineTag: source.pipeline_tag,
    libraryName: source.library_name,
    license: source.license,
    upstream: source.upstream,
    state: source.state,
    defaultBranch: source.default_branch,
    refsCount: source.refs_count,
    files: source.files,
    sizeBytes: source.size_bytes,
    downloads: source.downloads,
    likes: source.likes,
    private: source.private,
    gated: source.gated,
    sha: source.sha,
    createdAtMs: source.created_at,
    updatedAtMs: source.updated_at,
    statusAtMs: source.status_at,
    score,
  };
}

/** A tiny semaphore: at most `limit` bulk requests in flight; callers wait their turn. */
class Semaphore {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly limit: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

/**
 * An Elasticsearch index (or the alias in front of one). Versions use Elasticsearch's
 * external versioning (`external_gte`: a replay of the same version re-applies, an older one
 * is refused with 409), and removals index a tombstone with the version, so a late "added"
 * cannot resurrect a removed document even after Elasticsearch forgets real deletes.
 */
export class ElasticsearchIndex implements SearchIndex {
  private readonly bulkSlots = new Semaphore(MAX_IN_FLIGHT);

  constructor(
    private readonly client: Client,
    /** The alias or concrete index this object reads and writes. */
    readonly name: string,
    private readonly options: { refresh?: boolean | "wait_for" } = {},
  ) {}

  /** Bulk-indexes in chunks, at most two requests in flight; 429s are retried with backoff. */
  async apply(ops: IndexOp[]): Promise<boolean[]> {
    const results: boolean[] = [];
    const chunks: IndexOp[][] = [];
    for (let i = 0; i < ops.length; i += BULK_CHUNK) chunks.push(ops.slice(i, i + BULK_CHUNK));
    const outcomes = await Promise.all(chunks.map((chunk) => this.bulkSlots.run(() => this.bulk(chunk))));
    for (const outcome of outcomes) results.push(...outcome);
    return results;
  }

  private async bulk(ops: IndexOp[]): Promise<boolean[]> {
    const operations: unknown[] = [];
    for (const op of ops) {
      if ("upsert" in op) {
        const doc = op.upsert;
        operations.push({ index: { _id: doc.id, version: Number(doc.version), version_type: "external_gte" } });
        operations.push(toSource(doc));
      } else {
        operations.push({
          index: { _id: op.remove.id, version: Number(op.remove.version), version_type: "external_gte" },
        });
        operations.push({ id: op.remove.id, kind: 0, deleted: true, name_key: op.remove.id.toLowerCase() });
      }
    }
    for (let attempt = 1; ; attempt++) {
      const response = await this.client.bulk({
        index: this.name,
        operations,
        refresh: this.options.refresh ?? false,
      });
      const outcome: boolean[] = [];
      let throttled = false;
      for (const item of response.items) {
        const result = item.index;
        const status = result?.status ?? 500;
        if (status === 200 || status === 201) outcome.push(true);
        else if (status === 409) outcome.push(false);
        else if (status === 429) throttled = true;
        else {
          throw new Error(
            `Elasticsearch refused document ${result?._id ?? "?"} in ${this.name}: ${result?.error?.reason ?? `status ${status}`}`,
          );
        }
      }
      if (!throttled) return outcome;
      // Back-pressure from the cluster: the whole chunk again (versions make that idempotent).
      if (attempt >= MAX_RETRIES) throw new Error(`Elasticsearch kept answering 429 to bulk writes on ${this.name}`);
      await sleep(200 * 2 ** attempt);
    }
  }

  async search(query: IndexQuery): Promise<SearchResult> {
    const text = searchTokens(query.text).join(" ");
    // Text with nothing searchable in it (only emoji or punctuation) matches nothing.
    if (!text && query.text.trim()) return { hits: [], total: 0, totalIsLowerBound: false };
    const filter: estypes.QueryDslQueryContainer[] = [{ term: { deleted: false } }];
    if (query.kind !== DocumentKind.UNSPECIFIED) filter.push({ term: { kind: query.kind } });
    const f = query.filters;
    const term = (field: string, value: string) => {
      if (value) filter.push({ term: { [field]: value } });
    };
    term("author", f.author);
    term("pipeline_tag", f.pipelineTag);
    term("library_name", f.library);
    term("license", f.license);
    term("upstream", f.upstream);
    term("state", f.state);
    for (const tag of [...new Set(f.tags.filter(Boolean))].slice(0, 20)) term("filter_tags", tag);
    const must: estypes.QueryDslQueryContainer[] = text
      ? [
          {
            // multi_match never parses its input as query syntax: user text stays text.
            multi_match: {
              query: text,
              type: "bool_prefix",
              operator: "and",
              fields: ["id.text^10", "title^8", "description^2", "file_names", "body^0.5"],
            },
          },
        ]
      : [];
    const { field, descending } = effectiveSort(query);
    const order = descending ? "desc" : "asc";
    const sort: estypes.SortCombinations[] =
      field === SortField.RELEVANCE && text
        ? ["_score", { name_key: "asc" }]
        : field === SortField.DOWNLOADS
          ? [{ downloads: order }, { name_key: "asc" }]
          : field === SortField.LIKES
            ? [{ likes: order }, { name_key: "asc" }]
            : field === SortField.CREATED
              ? [{ created_at: order }, { name_key: "asc" }]
              : field === SortField.NAME
                ? [{ name_key: order }]
                : [{ updated_at: order }, { name_key: "asc" }];
    const response = await this.client.search<Source>({
      index: this.name,
      query: { bool: { must, filter } },
      sort,
      from: query.offset,
      size: query.limit,
      // Exact up to 1,000 (or the end of the page), as the SQLite backend counts; beyond, "gte".
      track_total_hits: countBound(query),
      track_scores: true,
      _source: {
        excludes: [
          "body",
          "suggest",
          "filter_tags",
          "file_names",
          "name_key",
          ...(query.includeFiles ? [] : ["files"]),
        ],
      },
    });
    const total = response.hits.total;
    return {
      hits: response.hits.hits.flatMap((h) =>
        h._source ? [toHit({ ...h._source, files: h._source.files ?? [] }, h._score ?? 0)] : [],
      ),
      total: typeof total === "number" ? total : (total?.value ?? 0),
      totalIsLowerBound: typeof total === "object" && total.relation === "gte",
    };
  }

  async suggest(prefix: string, kind: DocumentKind, limit: number): Promise<IndexSuggestion[]> {
    const p = prefix.normalize("NFKC").trim().slice(0, 200);
    if (!/[\p{L}\p{N}]/u.test(p)) return [];
    const response = await this.client.search<Source>({
      index: this.name,
      _source: ["id", "kind", "title"],
      suggest: {
        complete: {
          prefix: p,
          completion: {
            field: "suggest",
            size: limit,
            skip_duplicates: true,
            ...(kind === DocumentKind.UNSPECIFIED ? {} : { contexts: { kind: [String(kind)] } }),
          },
        },
      },
    });
    const options = response.suggest?.["complete"]?.[0]?.options;
    const list = Array.isArray(options) ? options : options ? [options] : [];
    return list.flatMap((o) => {
      const source = (o as estypes.SearchCompletionSuggestOption<Source>)._source;
      return source ? [{ id: source.id, kind: source.kind, title: source.title }] : [];
    });
  }

  async get(id: string): Promise<SearchDocument | undefined> {
    try {
      const response = await this.client.get<Source>({ index: this.name, id });
      const source = response._source;
      if (!source || source.deleted) return undefined;
      const { score: _score, ...hit } = toHit(source, 0);
      return { ...hit, body: source.body, version: BigInt(response._version ?? 0) };
    } catch (error) {
      if (error instanceof errors.ResponseError && error.statusCode === 404) return undefined;
      throw error;
    }
  }

  async count(): Promise<number> {
    const response = await this.client.count({ index: this.name, query: { term: { deleted: false } } });
    return response.count;
  }

  /** The client belongs to the backend, which closes it. */
  async close(): Promise<void> {}
}

/**
 * The Elasticsearch side of index life-cycle: an index template with explicit mappings,
 * concrete indices named `<alias>-<time>`, and the alias that reads and writes go through.
 * A rebuild fills a new concrete index and moves the alias in one atomic `_aliases` call.
 */
export class ElasticsearchBackend {
  constructor(
    private readonly client: Client,
    /** The alias, e.g. `nearhub-search` or `nearhub-search-<namespace>`. */
    readonly alias: string,
    private readonly options: { refresh?: boolean | "wait_for" } = {},
  ) {}

  /** Creates or updates the index template for `<alias>-*`. */
  async ensureTemplate(): Promise<void> {
    await this.client.indices.putIndexTemplate({
      name: this.alias,
      index_patterns: [`${this.alias}-*`],
      template: {
        settings: {
          number_of_shards: 1,
          refresh_interval: "200ms",
          analysis: { normalizer: { lowercase_keyword: { type: "custom", filter: ["lowercase", "asciifolding"] } } },
        },
        mappings: MAPPINGS,
      },
    });
  }

  /** The index behind the alias, creating both when absent (then `fresh`). */
  async open(): Promise<{ index: SearchIndex; fresh: boolean }> {
    await this.ensureTemplate();
    const exists = await this.client.indices.existsAlias({ name: this.alias });
    if (exists) return { index: new ElasticsearchIndex(this.client, this.alias, this.options), fresh: false };
    const concrete = await this.createNext();
    try {
      await this.client.indices.updateAliases({
        actions: [{ add: { index: concrete.name, alias: this.alias, is_write_index: true } }],
      });
    } catch (error) {
      // Another replica won the race: use its index, drop ours.
      await this.client.indices.delete({ index: concrete.name }).catch(() => undefined);
      if (!(await this.client.indices.existsAlias({ name: this.alias }))) throw error;
      return { index: new ElasticsearchIndex(this.client, this.alias, this.options), fresh: false };
    }
    return { index: new ElasticsearchIndex(this.client, this.alias, this.options), fresh: true };
  }

  /** A new, empty concrete index under the template. */
  async createNext(): Promise<SearchIndex> {
    const name = `${this.alias}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
    await this.client.indices.create({ index: name });
    return new ElasticsearchIndex(this.client, name, this.options);
  }

  /** Moves the alias to `next` atomically, then deletes the indices it left. */
  async promote(next: SearchIndex): Promise<SearchIndex> {
    await this.client.indices.refresh({ index: next.name });
    const current = await this.client.indices.getAlias({ name: this.alias }).catch((error: unknown) => {
      if (error instanceof errors.ResponseError && error.statusCode === 404) return {};
      throw error;
    });
    const old = Object.keys(current).filter((name) => name !== next.name);
    await this.client.indices.updateAliases({
      actions: [
        ...old.map((index) => ({ remove: { index, alias: this.alias } })),
        { add: { index: next.name, alias: this.alias, is_write_index: true } },
      ],
    });
    for (const index of old) await this.client.indices.delete({ index }).catch(() => undefined);
    return new ElasticsearchIndex(this.client, this.alias, this.options);
  }

  /** Deletes a concrete index that will not be promoted. */
  async discard(next: SearchIndex): Promise<void> {
    await this.client.indices.delete({ index: next.name }).catch(() => undefined);
  }

  /** Closes the client. */
  async close(): Promise<void> {
    await this.client.close();
  }
}
