import { DocumentKind, SortDirection, SortField } from "@nearhub/proto/search";

/** A file of a model or dataset revision. */
export interface DocumentFile {
  path: string;
  size: number;
}

/**
 * A searchable document: a git repository, a model or a dataset. One shape for both
 * backends; fields that do not apply to a kind stay empty (`""`, 0, []).
 */
export interface SearchDocument {
  /** `github.com/owner/repo` for git, `owner/name` (or `name`) for models and datasets. */
  id: string;
  kind: DocumentKind;
  title: string;
  description: string;
  /** Long searchable text: the model card, repository topics and language. */
  body: string;
  author: string;
  tags: string[];
  pipelineTag: string;
  libraryName: string;
  license: string;
  /** Git: upstream host, mirror state (`in_sync`, `failed`…), default branch, refs count. */
  upstream: string;
  state: string;
  defaultBranch: string;
  refsCount: number;
  files: DocumentFile[];
  sizeBytes: number;
  downloads: number;
  likes: number;
  private: boolean;
  gated: boolean;
  /** The commit of the indexed revision. */
  sha: string;
  createdAtMs: number;
  updatedAtMs: number;
  /**
   * Time of the event that last set `state`. Status events (synced, failed, paused) carry no
   * generation; an older status never overwrites a newer one.
   */
  statusAtMs: number;
  /** Monotonic per document; an older version never overwrites a newer one. */
  version: bigint;
}

/** A document with defaults for every field not given. */
export function newDocument(
  fields: Pick<SearchDocument, "id" | "kind" | "version"> & Partial<SearchDocument>,
): SearchDocument {
  return {
    title: fields.id,
    description: "",
    body: "",
    author: "",
    tags: [],
    pipelineTag: "",
    libraryName: "",
    license: "",
    upstream: "",
    state: "",
    defaultBranch: "",
    refsCount: 0,
    files: [],
    sizeBytes: 0,
    downloads: 0,
    likes: 0,
    private: false,
    gated: false,
    sha: "",
    createdAtMs: 0,
    updatedAtMs: 0,
    statusAtMs: 0,
    ...fields,
  };
}

/**
 * The tags a document can be filtered by. As on the Hugging Face Hub, the library, the
 * pipeline tag and `license:<id>` are tags too, so `?filter=pytorch` finds PyTorch models
 * whether or not the card lists the tag. Lower-cased: filters are case-insensitive.
 */
export function filterTags(doc: SearchDocument): string[] {
  const all = new Set<string>();
  for (const tag of doc.tags) if (tag) all.add(tag.toLowerCase());
  if (doc.libraryName) all.add(doc.libraryName.toLowerCase());
  if (doc.pipelineTag) all.add(doc.pipelineTag.toLowerCase());
  if (doc.license) all.add(`license:${doc.license.toLowerCase()}`);
  return [...all];
}

const MAX_TOKENS = 32;
const MAX_TOKEN_CHARS = 100;

/**
 * The words of user text that can match anything: NFKC-normalized, control characters
 * dropped, tokens without a letter or digit (`*`, `-`, emoji) dropped, at most 32 tokens of
 * 100 characters, so a 10 KB query costs what a short one does. Both backends search these.
 */
export function searchTokens(text: string): string[] {
  return text
    .normalize("NFKC")
    .split(/[\s/]+/u)
    .map((t) =>
      [...t]
        .filter((c) => c >= " ")
        .slice(0, MAX_TOKEN_CHARS)
        .join(""),
    )
    .filter((t) => /[\p{L}\p{N}]/u.test(t))
    .slice(0, MAX_TOKENS);
}

/** Filters of a query; empty strings and lists do not filter. */
export interface IndexFilters {
  author: string;
  tags: string[];
  pipelineTag: string;
  library: string;
  license: string;
  upstream: string;
  state: string;
}

/** A query both backends answer alike. */
export interface IndexQuery {
  text: string;
  kind: DocumentKind;
  filters: IndexFilters;
  sort: SortField;
  direction: SortDirection;
  limit: number;
  offset: number;
  /** Whether hits carry their file list; without it `files` is empty (and not read). */
  includeFiles: boolean;
}

/**
 * Matches counted exactly up to this many, or to the end of the requested page when that is
 * further; beyond, the total is that bound and marked as a lower bound ("1,000+"), as
 * Elasticsearch's `track_total_hits` and GitHub do. Paging does not depend on it.
 */
export const COUNTED_EXACTLY = 1000;

/** How far a query's total is counted: {@link COUNTED_EXACTLY}, or the end of its page. */
export function countBound(query: Pick<IndexQuery, "offset" | "limit">): number {
  return Math.max(COUNTED_EXACTLY, query.offset + query.limit);
}

/** A page of hits and the number of matches (at least `total` when `totalIsLowerBound`). */
export interface SearchResult {
  hits: IndexHit[];
  total: number;
  totalIsLowerBound: boolean;
}

/** A query with defaults for every field not given. */
export function newQuery(
  fields: Partial<Omit<IndexQuery, "filters">> & { filters?: Partial<IndexFilters> },
): IndexQuery {
  return {
    text: "",
    kind: DocumentKind.UNSPECIFIED,
    sort: SortField.UNSPECIFIED,
    direction: SortDirection.UNSPECIFIED,
    limit: 20,
    offset: 0,
    includeFiles: false,
    ...fields,
    filters: {
      author: "",
      tags: [],
      pipelineTag: "",
      library: "",
      license: "",
      upstream: "",
      state: "",
      ...fields.filters,
    },
  };
}

/** The sort a query resolves to: relevance only with text, else the most recently updated. */
export function effectiveSort(query: IndexQuery): { field: SortField; descending: boolean } {
  let field = query.sort;
  if (field === SortField.UNSPECIFIED || (field === SortField.RELEVANCE && !query.text.trim())) {
    field = query.text.trim() ? SortField.RELEVANCE : SortField.UPDATED;
  }
  const natural = field !== SortField.NAME;
  const descending = query.direction === SortDirection.UNSPECIFIED ? natural : query.direction === SortDirection.DESC;
  return { field, descending };
}

/** One hit: the stored document (without its long text) and its score (higher is better). */
export type IndexHit = Omit<SearchDocument, "body" | "version"> & { score: number };

/** A completion of {@link SearchIndex.suggest}. */
export interface IndexSuggestion {
  id: string;
  kind: DocumentKind;
  title: string;
}

/** One write of a batch: an upsert, or a removal at a version (which leaves a tombstone). */
export type IndexOp = { upsert: SearchDocument } | { remove: { id: string; version: bigint } };

/**
 * A search index backend. Writes are idempotent and version-ordered per document: applying
 * the same operations in any order, any number of times, converges to the same index.
 */
export interface SearchIndex {
  /** A name for logs and `nearhub index rebuild` output (file or index name). */
  readonly name: string;
  /** Applies a batch; one boolean per operation, true when it changed the index. */
  apply(ops: IndexOp[]): Promise<boolean[]>;
  search(query: IndexQuery): Promise<SearchResult>;
  suggest(prefix: string, kind: DocumentKind, limit: number): Promise<IndexSuggestion[]>;
  /** The live document, or undefined when absent or removed. */
  get(id: string): Promise<SearchDocument | undefined>;
  /** Live documents. */
  count(): Promise<number>;
  close(): Promise<void>;
}

/** Upserts one document; true when applied (false when a newer version is stored). */
export async function upsert(index: SearchIndex, doc: SearchDocument): Promise<boolean> {
  const [applied] = await index.apply([{ upsert: doc }]);
  return applied ?? false;
}

/** Removes one document at `version`; true when applied. */
export async function remove(index: SearchIndex, id: string, version: bigint): Promise<boolean> {
  const [applied] = await index.apply([{ remove: { id, version } }]);
  return applied ?? false;
}
