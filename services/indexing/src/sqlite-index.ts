import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import { DocumentKind, SortField } from "@nearhub/proto/search";
import {
  COUNTED_EXACTLY,
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

/** Bumped whenever the table layout changes; an older file is rebuilt from the events. */
const SCHEMA_VERSION = 7;
/**
 * Match sets up to this size are ranked (bm25) or sorted whole. Larger ones are ranked in
 * tiers of this many matches, most downloaded tier first, and sorted through sort buckets:
 * a query then costs what this many matches cost, whether 5,000 or 1,000,000 documents match.
 */
export const EXACT_MATCHES = 1000;
/**
 * bm25 reads every posting of every word of the query (its IDF), so a word found in more
 * documents than this is not ranked by bm25: such queries rank name matches first, then the
 * rest, each most downloaded first.
 */
export const MAX_RANKED_DF = 10_000;
/** Ranked without bm25, matches come in tiers of this many, name matches first within each. */
const NAME_TIER = 100;
/**
 * A sort bucket with more matches than this is put in order by walking its range of the sort
 * index ({@link SqliteSearchIndex.bucketPage}); fewer are sorted (about a microsecond each).
 */
const WALK_FROM = 4096;
/** A walk reads at most this many index entries per match, then gives up (the matches are sorted). */
const WALK_COST = 1;
/** A walk over the whole sort index testing each document is taken when it expects this many tests at most. */
const DENSE_TESTS = 64;
/** Thrown by the walk's row test to stop a walk that costs more than sorting would. */
class WalkOverBudget extends Error {}
/** The last word expands to at most this many vocabulary words; beyond, FTS5's own prefix query runs. */
const MAX_EXPANSION = 200;
const TOKENIZE = `tokenize="unicode61 remove_diacritics 2"`;

/**
 * Turns user text into a safe FTS5 expression: every token becomes a quoted string (quotes
 * doubled), so FTS5 operators (AND, OR, NEAR, *, ^, :, parentheses) typed by a user are
 * searched as words; the last token matches as a prefix, for search-as-you-type. The index
 * quotes the same way and spells the prefix from its vocabulary when it can (`phrases`).
 */
export function toFtsQuery(text: string): string | undefined {
  const tokens = searchTokens(text).map((t) => t.replace(/"/g, '""'));
  if (tokens.length === 0) return undefined;
  return tokens.map((t, i) => `"${t}"${i === tokens.length - 1 ? "*" : ""}`).join(" ");
}

interface Row {
  rowid: number;
  id: string;
  kind: number;
  title: string;
  description: string;
  body: string;
  author: string;
  tags: string;
  pipeline_tag: string;
  library_name: string;
  license: string;
  upstream: string;
  state: string;
  default_branch: string;
  refs_count: number;
  files: string;
  size_bytes: number;
  downloads: number;
  likes: number;
  private: number;
  gated: number;
  sha: string;
  created_at: number;
  updated_at: number;
  status_at: number;
  version: string;
  score?: number;
}

/** The columns of a hit; without files, the file list is neither read nor parsed. */
function hitColumns(includeFiles: boolean): string {
  return `d.rowid, d.id, d.kind, d.title, d.description, d.author, d.tags, d.pipeline_tag, d.library_name, d.license,
  d.upstream, d.state, d.default_branch, d.refs_count, ${includeFiles ? "d.files" : "'[]' AS files"}, d.size_bytes,
  d.downloads, d.likes, d.private, d.gated, d.sha, d.created_at, d.updated_at, d.status_at`;
}

const BM25 = "bm25(documents_fts, 10.0, 8.0, 2.0, 1.0, 0.5, 0.0)";
/** User text matches these columns only; `facets` holds the filter and sort-bucket tokens. */
const TEXT_COLUMNS = "{id title description file_names body}";
/** The shapes of the facet tokens ({@link facet}, {@link sortToken}): no other token is found in `facets`. */
const FACET_LIKE = /^(?:f[0-9a-f]{16}|s\d+xm?\d+)$/;

/**
 * The FTS5 expression of the text phrases. The column filter costs a look at the positions
 * of every posting read; a phrase of words none of which has the shape of a facet token
 * cannot match in `facets`, so those phrases are matched across the row without it.
 */
function textExpression(phrases: Array<{ expr: string; anywhere: boolean }>): string {
  const all = `(${phrases.map((p) => p.expr).join(" AND ")})`;
  return phrases.every((p) => p.anywhere) ? all : `${TEXT_COLUMNS} : ${all}`;
}

/**
 * The vocabulary form of a typed word, when it is certain: FTS5's unicode61 folds ASCII case
 * as toLowerCase does, and leaves a word alone that has no case and no diacritics (CJK).
 * Anything else (accents, other scripts' case) is left to FTS5's own prefix query.
 */
function vocabularyKey(word: string): string | undefined {
  if (!/^[\p{L}\p{N}]+$/u.test(word)) return undefined;
  if (/^[\x20-\x7e]+$/.test(word)) return word.toLowerCase();
  return word.toLowerCase() === word && word.normalize("NFD") === word ? word : undefined;
}

/**
 * The vocabulary forms of the words FTS5 cuts a typed word into (`fine-tuned` → `fine`,
 * `tuned`), when every one is certain ({@link vocabularyKey}); combining marks and private
 * use characters, which FTS5 keeps inside words, leave the word to FTS5.
 */
function vocabularyParts(word: string): string[] | undefined {
  if (/[\p{M}\p{Co}]/u.test(word)) return undefined;
  const keys = word
    .split(/[^\p{L}\p{N}]+/u)
    .filter(Boolean)
    .map(vocabularyKey);
  return keys.length > 0 && keys.every((k): k is string => k !== undefined) ? keys : undefined;
}

/** A query word as FTS5 matches it, and how many documents hold it, as far as the vocabulary tells. */
interface Phrase {
  /** The FTS5 expression: a quoted phrase, an OR of spelled completions, or FTS5's prefix query. */
  expr: string;
  /** At least this many documents match it (0: unknown). */
  least: number;
  /** At most this many documents match it, and about the postings bm25 would read; undefined: unknown. */
  most: number | undefined;
  /** Whether no word of it has the shape of a facet token ({@link textExpression}). */
  anywhere: boolean;
  /** A last word with too many completions to spell: the word alone, searched before its completions. */
  exact?: { expr: string; anywhere: boolean };
}

/**
 * The full-text row of a document is keyed by popularity, then by the document's rowid:
 * `popularity rank × 2^32 + rowid`, rank 0 for the most downloaded. FTS5 walks matches in
 * key order, so the first N matches of any query are its N most downloaded ones.
 */
const KEY_SHIFT = 2 ** 32;
const BUCKETS_PER_DOUBLING = 16;
/** The bucket of a count (downloads, likes): 0 for none, then 16 per doubling. */
function countBucket(value: number): number {
  return value > 0 ? 1 + Math.floor(Math.log2(value) * BUCKETS_PER_DOUBLING) : 0;
}
const MAX_COUNT_BUCKET = countBucket(Number.MAX_SAFE_INTEGER) + 1;
function ftsKey(downloads: number, rowid: number): bigint {
  return (BigInt(MAX_COUNT_BUCKET - countBucket(downloads)) << 32n) | BigInt(rowid);
}
const DAY_MS = 86_400_000;

/**
 * Sort buckets: every sortable field is cut into ordered buckets (counts by 1/16 of a
 * doubling, times by day, names by first character) and each document carries one facet
 * token per field naming its bucket. A sorted query over a large match set walks the
 * buckets in sort order, asking FTS5 for the matches in each, until it holds the page: only
 * those are fetched and sorted. Names order by UTF-8 bytes, so ASCII first characters are a
 * bucket each and every other character falls in one last bucket.
 */
interface SortSpec {
  column: string;
  bucket: (row: {
    downloads: number;
    likes: number;
    updated_at: number;
    created_at: number;
    name_key: string;
  }) => number;
  /** The lowest and highest value among live documents: two queries, so each reads one end of an index. */
  range: [string, string];
  /**
   * The least value of a bucket (its values are from there up to the next bucket's least);
   * undefined past either end, where the range is open.
   */
  least: (bucket: number) => number | string | undefined;
  /** The index of live documents in this field's order, which a walk reads. */
  index: string;
  /** Whether the index read in this direction gives ORDER BY's order, ties included (name ties have none). */
  walks: (descending: boolean) => boolean;
}
function nameBucket(nameKey: string): number {
  const c = nameKey.charCodeAt(0);
  return Number.isNaN(c) ? 0 : Math.min(c, 128);
}
/** The least count in a bucket ({@link countBucket} is monotonic: a binary search over the integers). */
function leastCount(bucket: number): number | undefined {
  if (bucket <= 0 || bucket > countBucket(Number.MAX_SAFE_INTEGER)) return undefined;
  let lo = 1;
  let hi = Number.MAX_SAFE_INTEGER;
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (countBucket(mid) >= bucket) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}
/** Names bucket by first character: the character itself, or (128) any non-ASCII one, after ASCII in UTF-8. */
function leastName(bucket: number): string | undefined {
  if (bucket <= 0) return "";
  return bucket <= 128 ? String.fromCharCode(bucket) : undefined;
}
/** Counts and times: the indexes run high to low, ties by id ascending, as ORDER BY … DESC, id. */
const descendingOnly = (descending: boolean) => descending;
const SORTS: Partial<Record<SortField, SortSpec>> = {
  [SortField.DOWNLOADS]: {
    column: "downloads",
    bucket: (r) => countBucket(r.downloads),
    range: [
      "SELECT min(downloads) FROM documents WHERE deleted = 0",
      "SELECT max(downloads) FROM documents WHERE deleted = 0",
    ],
    least: leastCount,
    index: "documents_downloads",
    walks: descendingOnly,
  },
  [SortField.LIKES]: {
    column: "likes",
    bucket: (r) => countBucket(r.likes),
    range: ["SELECT min(likes) FROM documents WHERE deleted = 0", "SELECT max(likes) FROM documents WHERE deleted = 0"],
    least: leastCount,
    index: "documents_likes",
    walks: descendingOnly,
  },
  [SortField.UPDATED]: {
    column: "updated_at",
    bucket: (r) => Math.floor(r.updated_at / DAY_MS),
    range: [
      "SELECT min(updated_at) FROM documents WHERE deleted = 0",
      "SELECT max(updated_at) FROM documents WHERE deleted = 0",
    ],
    least: (b) => b * DAY_MS,
    index: "documents_updated",
    walks: descendingOnly,
  },
  [SortField.CREATED]: {
    column: "created_at",
    bucket: (r) => Math.floor(r.created_at / DAY_MS),
    range: [
      "SELECT min(created_at) FROM documents WHERE deleted = 0",
      "SELECT max(created_at) FROM documents WHERE deleted = 0",
    ],
    least: (b) => b * DAY_MS,
    index: "documents_created",
    walks: descendingOnly,
  },
  [SortField.NAME]: {
    column: "name_key",
    bucket: (r) => nameBucket(r.name_key),
    range: [
      "SELECT min(name_key) FROM documents WHERE deleted = 0",
      "SELECT max(name_key) FROM documents WHERE deleted = 0",
    ],
    least: leastName,
    index: "documents_name",
    walks: () => true,
  },
};
/** The spec of a sort field (relevance and unknown fields sort as UPDATED) and the field it resolves to. */
function sortSpec(field: SortField): { spec: SortSpec; resolved: SortField } {
  const spec = SORTS[field];
  if (spec) return { spec, resolved: field };
  return { spec: SORTS[SortField.UPDATED] as SortSpec, resolved: SortField.UPDATED };
}

/** A sort bucket's token: `s<field><bucket>`, letters and digits only, so one FTS5 token. */
function sortToken(field: SortField, bucket: number): string {
  return `s${field}x${bucket < 0 ? `m${-bucket}` : bucket}`;
}

/**
 * One FTS5 token per filterable value (`kind=2`, `author=acme`, `tag=pytorch`…): a hash, so
 * any value becomes a single alphanumeric token. Filters then run inside the FTS5 query, and
 * ranking, limit and count never leave the full-text index.
 */
function facet(name: string, value: string | number): string {
  return `f${createHash("sha1")
    .update(`${name}\u0000${String(value).toLowerCase()}`)
    .digest("hex")
    .slice(0, 16)}`;
}

function facetsOf(doc: SearchDocument): string {
  const tokens = [facet("kind", doc.kind)];
  const add = (name: string, value: string) => {
    if (value) tokens.push(facet(name, value));
  };
  add("author", doc.author);
  add("pipeline", doc.pipelineTag);
  add("library", doc.libraryName);
  add("license", doc.license);
  add("upstream", doc.upstream);
  add("state", doc.state);
  for (const tag of filterTags(doc)) add("tag", tag);
  const keys = {
    downloads: doc.downloads,
    likes: doc.likes,
    updated_at: doc.updatedAtMs,
    created_at: doc.createdAtMs,
    name_key: doc.id.toLowerCase(),
  };
  for (const [field, spec] of Object.entries(SORTS)) tokens.push(sortToken(Number(field), spec.bucket(keys)));
  return tokens.join(" ");
}

function toHit(row: Row): IndexHit {
  return {
    id: row.id,
    kind: row.kind,
    title: row.title,
    description: row.description,
    author: row.author,
    tags: JSON.parse(row.tags) as string[],
    pipelineTag: row.pipeline_tag,
    libraryName: row.library_name,
    license: row.license,
    upstream: row.upstream,
    state: row.state,
    defaultBranch: row.default_branch,
    refsCount: row.refs_count,
    files: row.files === "[]" ? [] : (JSON.parse(row.files) as SearchDocument["files"]),
    sizeBytes: row.size_bytes,
    downloads: row.downloads,
    likes: row.likes,
    private: row.private === 1,
    gated: row.gated === 1,
    sha: row.sha,
    createdAtMs: row.created_at,
    updatedAtMs: row.updated_at,
    statusAtMs: row.status_at,
    score: row.score ?? 0,
  };
}

/** What name matching reads of a document ({@link namesMatch}), and its kind. */
interface NameRow {
  rowid: number;
  id: string;
  title: string;
  kind: DocumentKind;
}

/** The stored fields of a document that an update or removal reads. */
interface CurrentRow {
  rowid: number;
  version: string;
  fts_key: number;
  id: string;
  kind: number;
  title: string;
  description: string;
  files: string;
  body: string;
}

/** The text columns of a document as one string, for the word counts of `terms`. */
function textOf(id: string, title: string, description: string, fileNames: string, body: string): string {
  return `${id}\n${title}\n${description}\n${fileNames}\n${body}`;
}

/** The part of an id after its last slash: `rocket` of `github.com/acme/rocket`. */
function shortName(id: string): string {
  return id.slice(id.lastIndexOf("/") + 1).toLowerCase();
}

/** SQL LIKE-free prefix range: [prefix, prefix + U+FFFF). */
function prefixEnd(prefix: string): string {
  return `${prefix}\uffff`;
}

/** Words as FTS5's unicode61 sees them, near enough for ordering: folded case and accents. */
function foldedWords(text: string): string[] {
  return text
    .toLowerCase()
    .normalize("NFD")
    .replace(/\p{M}/gu, "")
    .split(/[^\p{L}\p{N}]+/u)
    .filter(Boolean);
}

/** Whether the id or title holds every typed word (the last as a prefix). */
function namesMatch(words: string[], doc: { id: string; title: string }): boolean {
  const names = new Set([...foldedWords(doc.id), ...foldedWords(doc.title)]);
  return words.every((word, i) => {
    const parts = foldedWords(word);
    return parts.every((part, j) =>
      i === words.length - 1 && j === parts.length - 1 ? [...names].some((n) => n.startsWith(part)) : names.has(part),
    );
  });
}

/**
 * The embedded search index: SQLite with FTS5 (bm25 ranking, prefix search), filters as
 * facet tokens inside the full-text query, sorts through indexed columns and sort buckets,
 * WAL mode, and a version per document so that replayed or out-of-order events converge.
 * Deletions leave a tombstone carrying the version, so a late "added" cannot resurrect a
 * removed document. The full-text table is contentless: it holds the index only, keyed by
 * popularity (see {@link ftsKey}), and the `documents` row keeps its key to delete it.
 */
export class SqliteSearchIndex implements SearchIndex {
  private readonly db: Database.Database;
  /** True when this file had no index (or an outdated layout) and must be filled from events. */
  readonly fresh: boolean;
  private readonly statements;
  /** The rowid the next new document gets; one writer per file, so a counter suffices. */
  private nextRowid: number;

  /** Match sets up to this size are ranked or sorted whole ({@link EXACT_MATCHES}; tests set less). */
  private readonly exact: number;
  /** {@link WALK_FROM}; tests set less. */
  private readonly walkFrom: number;
  /** {@link MAX_RANKED_DF}; tests set less. */
  private readonly maxRankedDf: number;
  /** Counts asked during the current search. */
  private readonly counted = new Map<string, number>();
  /**
   * The current search counts matches up to this many: one past {@link countBound}, so that
   * reaching it says the total is a lower bound. Filtered walks read this many keys at once,
   * which gives both the page and the count.
   */
  private countLimit = COUNTED_EXACTLY + 1;
  /** Whether the current search returns file lists. */
  private includeFiles = false;
  /** Every match of the current search's `match`, in key order, when read beforehand ({@link preload}). */
  private known: { match: string; keys: number[] } | undefined;
  /** Names (and kinds) of documents the current search has read ({@link preload}). */
  private readonly knownNames = new Map<number, NameRow>();
  /** Per kind, live documents added minus removed by the current batch. */
  private readonly kindDelta = new Map<number, number>();
  /** The matches a walk keeps (all, when undefined), and how many more index entries it may read. */
  private walking: { keep: Set<number> | undefined; budget: number } | undefined;
  /** Statements of {@link cached}: per-query SQL from a fixed set of shapes (no values in the text). */
  private readonly prepared = new Map<string, Database.Statement>();
  /** Whether the current batch wrote text into `batch_text`, or into `batch_gone`. */
  private textWritten = false;
  private textGone = false;

  constructor(
    readonly name: string,
    options: { exactMatches?: number; maxRankedDf?: number; walkFrom?: number } = {},
  ) {
    this.exact = Math.max(1, options.exactMatches ?? EXACT_MATCHES);
    this.walkFrom = Math.max(0, options.walkFrom ?? WALK_FROM);
    this.maxRankedDf = Math.max(1, options.maxRankedDf ?? MAX_RANKED_DF);
    if (name !== ":memory:") mkdirSync(dirname(name), { recursive: true });
    this.db = new Database(name);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    // Reads come from the mapped file and a 64 MiB page cache; sorts stay in memory.
    this.db.pragma("mmap_size = 4294967296");
    this.db.pragma("cache_size = -65536");
    this.db.pragma("temp_store = MEMORY");
    const version = this.db.pragma("user_version", { simple: true }) as number;
    this.fresh = version !== SCHEMA_VERSION;
    if (this.fresh) this.createSchema();
    // Added to layout 7 after its files were written: built here once (seconds for a million).
    this.db.exec(
      "CREATE INDEX IF NOT EXISTS documents_author_name ON documents(author COLLATE NOCASE, name_key) WHERE deleted = 0",
    );
    // Each batch's words pass through scratch FTS5 tables (the same tokenizer) into `terms`:
    // the text of written documents adds to each word's document count, the text they replace
    // or remove takes from it.
    this.db.exec(`
      CREATE VIRTUAL TABLE temp.batch_text USING fts5(t, content='', detail=none, ${TOKENIZE});
      CREATE VIRTUAL TABLE temp.batch_vocab USING fts5vocab(temp, batch_text, row);
      CREATE VIRTUAL TABLE temp.batch_gone USING fts5(t, content='', detail=none, ${TOKENIZE});
      CREATE VIRTUAL TABLE temp.batch_gone_vocab USING fts5vocab(temp, batch_gone, row);
    `);
    this.statements = {
      batchText: this.db.prepare("INSERT INTO temp.batch_text (t) VALUES (?)"),
      goneText: this.db.prepare("INSERT INTO temp.batch_gone (t) VALUES (?)"),
      saveTerms: this.db.prepare(
        `INSERT INTO terms (term, df) SELECT term, doc FROM temp.batch_vocab WHERE true
         ON CONFLICT(term) DO UPDATE SET df = df + excluded.df`,
      ),
      dropTerms: this.db.prepare(
        "UPDATE terms SET df = terms.df - g.doc FROM temp.batch_gone_vocab g WHERE terms.term = g.term",
      ),
      clearBatch: this.db.prepare("INSERT INTO temp.batch_text (batch_text) VALUES ('delete-all')"),
      clearGone: this.db.prepare("INSERT INTO temp.batch_gone (batch_gone) VALUES ('delete-all')"),
      saveKind: this.db.prepare(
        "INSERT INTO kinds (kind, n) VALUES (?, ?) ON CONFLICT(kind) DO UPDATE SET n = n + excluded.n",
      ),
      kinds: this.db.prepare("SELECT kind, n FROM kinds"),
      expand: this.db.prepare(
        "SELECT term, df FROM terms WHERE term >= ? AND term < ? AND df > 0 ORDER BY term LIMIT ?",
      ),
      df: this.db.prepare("SELECT df FROM terms WHERE term = ?").pluck(),
      countUpTo: this.db
        .prepare("SELECT count(*) FROM (SELECT 1 FROM documents_fts WHERE documents_fts MATCH ? LIMIT ?)")
        .pluck(),
      page: this.db
        .prepare("SELECT rowid FROM documents_fts WHERE documents_fts MATCH ? ORDER BY rowid LIMIT ? OFFSET ?")
        .pluck(),
      rankAmong: this.db.prepare(
        `SELECT rowid AS key, ${BM25} AS s FROM documents_fts WHERE documents_fts MATCH ?
           AND +rowid IN (SELECT value FROM json_each(?)) ORDER BY s, rowid LIMIT ? OFFSET ?`,
      ),
      current: this.db.prepare(
        "SELECT rowid, version, fts_key, id, kind, title, description, files, body FROM documents WHERE id = ?",
      ),
      upsert: this.db.prepare(
        `INSERT INTO documents (rowid, id, kind, title, description, body, author, tags, pipeline_tag, library_name, license,
           upstream, state, default_branch, refs_count, files, size_bytes, downloads, likes, private, gated, sha,
           created_at, updated_at, status_at, version, deleted, name_key, short_key, fts_key)
         VALUES (@rowid, @id, @kind, @title, @description, @body, @author, @tags, @pipelineTag, @libraryName, @license,
           @upstream, @state, @defaultBranch, @refsCount, @files, @sizeBytes, @downloads, @likes, @private, @gated,
           @sha, @createdAt, @updatedAt, @statusAt, @version, 0, @nameKey, @shortKey, @ftsKey)
         ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, title = excluded.title, description = excluded.description,
           body = excluded.body, author = excluded.author, tags = excluded.tags, pipeline_tag = excluded.pipeline_tag,
           library_name = excluded.library_name, license = excluded.license, upstream = excluded.upstream,
           state = excluded.state, default_branch = excluded.default_branch, refs_count = excluded.refs_count,
           files = excluded.files, size_bytes = excluded.size_bytes,
           downloads = excluded.downloads, likes = excluded.likes, private = excluded.private, gated = excluded.gated,
           sha = excluded.sha, created_at = excluded.created_at, updated_at = excluded.updated_at,
           status_at = excluded.status_at, version = excluded.version, deleted = 0, name_key = excluded.name_key,
           short_key = excluded.short_key, fts_key = excluded.fts_key`,
      ),
      tombstone: this.db.prepare(
        `INSERT INTO documents (rowid, id, kind, title, description, body, version, deleted, name_key, short_key, fts_key)
         VALUES (?, ?, 0, '', '', '', ?, 1, '', '', 0)
         ON CONFLICT(id) DO UPDATE SET version = excluded.version, deleted = 1, fts_key = 0`,
      ),
      ftsInsert: this.db.prepare(
        "INSERT INTO documents_fts (rowid, id, title, description, file_names, body, facets) VALUES (?, ?, ?, ?, ?, ?, ?)",
      ),
      ftsDelete: this.db.prepare("DELETE FROM documents_fts WHERE rowid = ?"),
      get: this.db.prepare("SELECT * FROM documents WHERE id = ? AND deleted = 0"),
      count: this.db.prepare("SELECT count(*) AS n FROM documents WHERE deleted = 0"),
      maxRowid: this.db.prepare("SELECT coalesce(max(rowid), 0) AS n FROM documents"),
      matches: this.db.prepare("SELECT rowid FROM documents_fts WHERE documents_fts MATCH ? LIMIT ?").pluck(),
      rankAll: this.db.prepare(
        `SELECT rowid AS key, ${BM25} AS s FROM documents_fts WHERE documents_fts MATCH ? ORDER BY s, rowid LIMIT ? OFFSET ?`,
      ),
      names: this.db.prepare(
        "SELECT rowid, id, title, kind FROM documents WHERE rowid IN (SELECT value FROM json_each(?))",
      ),
      byRowids: this.db.prepare(
        `SELECT ${hitColumns(false)} FROM documents d WHERE d.rowid IN (SELECT value FROM json_each(?))`,
      ),
      byRowidsWithFiles: this.db.prepare(
        `SELECT ${hitColumns(true)} FROM documents d WHERE d.rowid IN (SELECT value FROM json_each(?))`,
      ),
    };
    this.nextRowid = (this.statements.maxRowid.get() as { n: number }).n + 1;
    // The row test of a bucket walk: keeps the walk's matches, and stops a walk over budget.
    this.db.function("nearhub_walk_keeps", { deterministic: false, directOnly: true }, (rowid: unknown) => {
      const walking = this.walking;
      if (!walking) return 0;
      if (--walking.budget < 0) throw new WalkOverBudget("bucket walk over budget");
      return walking.keep === undefined || walking.keep.has(Number(rowid)) ? 1 : 0;
    });
  }

  private createSchema(): void {
    this.db.exec(`
      DROP TABLE IF EXISTS documents_fts;
      DROP TABLE IF EXISTS document_tags;
      DROP TABLE IF EXISTS documents;
      CREATE TABLE documents (
        rowid INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        kind INTEGER NOT NULL,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        body TEXT NOT NULL,
        author TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '[]',
        pipeline_tag TEXT NOT NULL DEFAULT '',
        library_name TEXT NOT NULL DEFAULT '',
        license TEXT NOT NULL DEFAULT '',
        upstream TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL DEFAULT '',
        default_branch TEXT NOT NULL DEFAULT '',
        refs_count INTEGER NOT NULL DEFAULT 0,
        files TEXT NOT NULL DEFAULT '[]',
        size_bytes INTEGER NOT NULL DEFAULT 0,
        downloads INTEGER NOT NULL DEFAULT 0,
        likes INTEGER NOT NULL DEFAULT 0,
        private INTEGER NOT NULL DEFAULT 0,
        gated INTEGER NOT NULL DEFAULT 0,
        sha TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL DEFAULT 0,
        status_at INTEGER NOT NULL DEFAULT 0,
        version TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        name_key TEXT NOT NULL,
        short_key TEXT NOT NULL,
        fts_key INTEGER NOT NULL DEFAULT 0
      );
      -- Sorts without filters walk these in order (natural direction first; ties by id).
      CREATE INDEX documents_updated ON documents(updated_at DESC, id) WHERE deleted = 0;
      CREATE INDEX documents_downloads ON documents(downloads DESC, id) WHERE deleted = 0;
      CREATE INDEX documents_likes ON documents(likes DESC, id) WHERE deleted = 0;
      CREATE INDEX documents_created ON documents(created_at DESC, id) WHERE deleted = 0;
      -- Suggest reads these alone (covering): no table lookups per completion.
      CREATE INDEX documents_name ON documents(name_key, downloads, id, kind, title) WHERE deleted = 0;
      -- An author's documents by name (authorWalk).
      CREATE INDEX documents_author_name ON documents(author COLLATE NOCASE, name_key) WHERE deleted = 0;
      CREATE INDEX documents_short ON documents(short_key, downloads, id, kind, title) WHERE deleted = 0;
      -- Every word of the text columns (as FTS5 tokenizes it): the last word of a query
      -- expands to the words it begins, so FTS5 never merges a huge prefix doclist.
      -- Each word keeps the number of live documents whose text holds it: a query knows how
      -- common its words are without reading their postings, and so which plan to take.
      DROP TABLE IF EXISTS terms;
      CREATE TABLE terms (term TEXT PRIMARY KEY, df INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
      -- Live documents per kind: a kind filter takes the cheaper of "this kind" and "not the others".
      DROP TABLE IF EXISTS kinds;
      CREATE TABLE kinds (kind INTEGER PRIMARY KEY, n INTEGER NOT NULL);
      CREATE VIRTUAL TABLE documents_fts USING fts5(
        id, title, description, file_names, body, facets,
        content='', contentless_delete=1,
        ${TOKENIZE}
      );
      -- Bulk writes (rebuilds) flush 32 MiB of terms per segment instead of 1 MiB.
      INSERT INTO documents_fts (documents_fts, rank) VALUES ('hashsize', 33554432);
      PRAGMA user_version = ${SCHEMA_VERSION};
    `);
  }

  /** Applies a batch in one transaction (one fsync for the lot). */
  async apply(ops: IndexOp[]): Promise<boolean[]> {
    return this.applySync(ops);
  }

  /**
   * {@link apply} without the promise: the bulk path. A rebuild or a benchmark writes
   * thousands of documents per call, in one transaction.
   */
  applySync(ops: IndexOp[]): boolean[] {
    return this.db.transaction(() => {
      this.kindDelta.clear();
      this.textWritten = false;
      this.textGone = false;
      const applied = ops.map((op) => ("upsert" in op ? this.upsertOne(op.upsert) : this.removeOne(op.remove)));
      if (this.textWritten) {
        this.statements.saveTerms.run();
        this.statements.clearBatch.run();
      }
      if (this.textGone) {
        this.statements.dropTerms.run();
        this.statements.clearGone.run();
      }
      for (const [kind, n] of this.kindDelta) if (n !== 0) this.statements.saveKind.run(kind, n);
      return applied;
    })();
  }

  /**
   * The live document `current` leaves the full-text index (replaced or removed): its words
   * and its kind no longer count.
   */
  private unindex(current: CurrentRow): void {
    if (!current.fts_key) return;
    this.statements.ftsDelete.run(current.fts_key);
    const fileNames = (JSON.parse(current.files) as SearchDocument["files"]).map((f) => f.path).join(" ");
    this.statements.goneText.run(textOf(current.id, current.title, current.description, fileNames, current.body));
    this.textGone = true;
    this.kindDelta.set(current.kind, (this.kindDelta.get(current.kind) ?? 0) - 1);
  }

  /** The stored row of `id` unless a strictly newer version is stored (then undefined: skip). */
  private current(id: string, version: bigint): CurrentRow | "stale" | undefined {
    const current = this.statements.current.get(id) as CurrentRow | undefined;
    // Equal versions re-apply (idempotent); only a strictly newer stored version wins.
    if (current && BigInt(current.version) > version) return "stale";
    return current;
  }

  private upsertOne(doc: SearchDocument): boolean {
    const current = this.current(doc.id, doc.version);
    if (current === "stale") return false;
    if (current) this.unindex(current);
    const rowid = current?.rowid ?? this.nextRowid++;
    const key = ftsKey(doc.downloads, rowid);
    const fileNames = doc.files.map((f) => f.path).join(" ");
    this.statements.upsert.run({
      rowid,
      id: doc.id,
      kind: doc.kind,
      title: doc.title,
      description: doc.description,
      body: doc.body,
      author: doc.author,
      tags: JSON.stringify(doc.tags),
      pipelineTag: doc.pipelineTag,
      libraryName: doc.libraryName,
      license: doc.license,
      upstream: doc.upstream,
      state: doc.state,
      defaultBranch: doc.defaultBranch,
      refsCount: doc.refsCount,
      files: JSON.stringify(doc.files),
      sizeBytes: doc.sizeBytes,
      downloads: doc.downloads,
      likes: doc.likes,
      private: doc.private ? 1 : 0,
      gated: doc.gated ? 1 : 0,
      sha: doc.sha,
      createdAt: doc.createdAtMs,
      updatedAt: doc.updatedAtMs,
      statusAt: doc.statusAtMs,
      version: doc.version.toString(),
      nameKey: doc.id.toLowerCase(),
      shortKey: shortName(doc.id),
      ftsKey: key,
    });
    this.statements.ftsInsert.run(key, doc.id, doc.title, doc.description, fileNames, doc.body, facetsOf(doc));
    this.statements.batchText.run(textOf(doc.id, doc.title, doc.description, fileNames, doc.body));
    this.textWritten = true;
    this.kindDelta.set(doc.kind, (this.kindDelta.get(doc.kind) ?? 0) + 1);
    return true;
  }

  private removeOne({ id, version }: { id: string; version: bigint }): boolean {
    const current = this.current(id, version);
    if (current === "stale") return false;
    if (current) this.unindex(current);
    this.statements.tombstone.run(current?.rowid ?? this.nextRowid++, id, version.toString());
    return true;
  }

  /** Ranked hits and the total number of matches. */
  async search(query: IndexQuery): Promise<SearchResult> {
    return this.searchSync(query);
  }

  /** {@link search} without the promise. */
  searchSync(query: IndexQuery): SearchResult {
    this.counted.clear();
    const bound = countBound(query);
    this.countLimit = bound + 1;
    this.includeFiles = query.includeFiles;
    this.known = undefined;
    this.knownNames.clear();
    const { hits, total } = this.pageOf(query);
    return total > bound ? { hits, total: bound, totalIsLowerBound: true } : { hits, total, totalIsLowerBound: false };
  }

  /** The page of a query and its matches counted up to {@link countLimit}. */
  private pageOf(query: IndexQuery): { hits: IndexHit[]; total: number } {
    const words = searchTokens(query.text);
    // Text with nothing searchable in it (only emoji or punctuation) matches nothing.
    if (words.length === 0 && query.text.trim()) return { hits: [], total: 0 };
    const f = query.filters;
    const tags = [...new Set(f.tags.map((t) => t.toLowerCase()).filter(Boolean))].slice(0, 20);
    // Filters are facet tokens in the FTS5 query, with or without text.
    const facets: string[] = [];
    const filter = (name: string, value: string | number, empty: string | number) => {
      if (value !== empty) facets.push(`facets : "${facet(name, value)}"`);
    };
    filter("author", f.author, "");
    filter("pipeline", f.pipelineTag, "");
    filter("library", f.library, "");
    filter("license", f.license, "");
    filter("upstream", f.upstream, "");
    filter("state", f.state, "");
    for (const tag of tags) facets.push(`facets : "${facet("tag", tag)}"`);
    const { field, descending } = effectiveSort(query);
    const phrases = this.phrases(words);
    const text = phrases.length > 0 ? textExpression(phrases) : undefined;
    // A kind most documents have is cheaper as "none of the other kinds" (their postings are
    // fewer), which FTS5 can only say after something positive.
    let without: string | undefined;
    if (query.kind !== DocumentKind.UNSPECIFIED) {
      without = text || facets.length > 0 ? this.otherKinds(query.kind) : undefined;
      if (without === undefined) filter("kind", query.kind, DocumentKind.UNSPECIFIED);
    }
    if (!text && facets.length === 0) return this.browse(field, descending, query);
    const positive = [...(text ? [text] : []), ...facets].join(" AND ");
    const match = without !== undefined ? `(${positive}) NOT ${without}` : positive;
    const filtered = facets.length > 0 || without !== undefined;
    // Text and a filter, or two filters, besides the kind: usually few matches.
    if (without !== undefined && (text ? 1 : 0) + facets.length >= 2) this.preload(positive, match, query.kind);
    // At least this many documents match: known from the vocabulary for one word and no filter.
    const least = !filtered && phrases.length === 1 ? (phrases[0]?.least ?? 0) : 0;
    if (field === SortField.RELEVANCE && text) return this.ranked(words, phrases, filtered, match, least, query);
    return this.sorted(match, least, field, descending, query);
  }

  /**
   * The kinds other than `kind` as one FTS5 expression, when they hold fewer live documents
   * than `kind` does; every document has exactly one kind facet, so "not those" is "this one".
   */
  private otherKinds(kind: number): string | undefined {
    const counts = new Map(
      (this.statements.kinds.all() as Array<{ kind: number; n: number }>).map((r) => [r.kind, r.n] as const),
    );
    const known = Object.values(DocumentKind).filter((v): v is number => typeof v === "number");
    const others = [...new Set([...known, ...counts.keys()])].filter((k) => k !== kind);
    const rest = others.reduce((n, k) => n + Math.max(0, counts.get(k) ?? 0), 0);
    if (rest >= (counts.get(kind) ?? 0)) return undefined;
    return `facets : (${others.map((k) => `"${facet("kind", k)}"`).join(" OR ")})`;
  }

  /** The query words as FTS5 phrases; the last completes as a prefix, for search-as-you-type. */
  private phrases(words: string[]): Phrase[] {
    return words.map((word, i) => this.phrase(word, i === words.length - 1));
  }

  /**
   * A word as an FTS5 phrase, quoted (quotes doubled) so that operators typed by a user are
   * searched as words, and how many documents hold it, from the vocabulary's counts. The
   * last word is spelled as the vocabulary words it begins (`("bert" OR "berta")`, or
   * `("fine tuned" OR "fine tuner")` for a word FTS5 cuts in several) when there are few:
   * FTS5 then walks their doclists in step instead of merging every posting of the prefix
   * first. With more completions than that, FTS5's own prefix query answers, and the word
   * itself, when the vocabulary has it, is searched first ({@link Phrase.exact}).
   */
  private phrase(word: string, last: boolean): Phrase {
    const quoted = `"${word.replace(/"/g, '""')}"`;
    const parts = vocabularyParts(word);
    if (parts === undefined) return { expr: last ? `${quoted}*` : quoted, least: 0, most: undefined, anywhere: false };
    const dfs = parts.map((p) => (this.statements.df.get(p) as number | undefined) ?? 0);
    const head = parts.slice(0, -1);
    const headDf = Math.min(Infinity, ...dfs.slice(0, -1));
    // Only ASCII words are certain not to fold into a facet token's shape.
    const plain = (words: string[]) => words.every((w) => /^[0-9a-z]+$/.test(w) && !FACET_LIKE.test(w));
    if (!last) {
      return {
        expr: quoted,
        least: head.length === 0 ? (dfs[0] ?? 0) : 0,
        most: Math.min(...dfs),
        anywhere: plain(parts),
      };
    }
    const tail = parts.at(-1) ?? "";
    const terms = this.statements.expand.all(tail, `${tail}\u{10ffff}`, MAX_EXPANSION + 1) as Array<{
      term: string;
      df: number;
    }>;
    // FTS5's own prefix query may reach into `facets`: those keep the column filter.
    if (terms.length === 0) return { expr: `${quoted}*`, least: 0, most: 0, anywhere: false };
    if (terms.length > MAX_EXPANSION) {
      const exact = (dfs.at(-1) ?? 0) > 0 ? { expr: `"${parts.join(" ")}"`, anywhere: plain(parts) } : undefined;
      const least = head.length === 0 ? (dfs.at(-1) ?? 0) : 0;
      return { expr: `${quoted}*`, least, most: undefined, anywhere: false, exact };
    }
    const spelled = terms.map((t) => `"${[...head, t.term.replace(/"/g, '""')].join(" ")}"`);
    return {
      expr: spelled.length === 1 ? (spelled[0] ?? quoted) : `(${spelled.join(" OR ")})`,
      least: head.length === 0 ? Math.max(...terms.map((t) => t.df)) : 0,
      most: Math.min(
        headDf,
        terms.reduce((n, t) => n + t.df, 0),
      ),
      anywhere: plain(head) && plain(terms.map((t) => t.term)),
    };
  }

  /**
   * A kind most documents have is said as "none of the other kinds", and walking the other
   * kinds' postings costs about as much as the rest of a selective query. When the query without
   * the kind has fewer than {@link countLimit} matches, they are read at once and their kind is
   * checked on the rows: `match` is then answered from those keys ({@link matchKeys}).
   */
  private preload(withoutKind: string, match: string, kind: DocumentKind): void {
    const keys = this.statements.matches.all(withoutKind, this.countLimit) as number[];
    if (keys.length >= this.countLimit) return;
    // Their names are read with their kinds: the tiers of the page look at them next.
    const rows = this.statements.names.all(JSON.stringify(keys.map((k) => k % KEY_SHIFT))) as NameRow[];
    for (const r of rows) this.knownNames.set(r.rowid, r);
    const ofKind = new Set(rows.filter((r) => r.kind === kind).map((r) => r.rowid));
    this.known = { match, keys: keys.filter((k) => ofKind.has(k % KEY_SHIFT)).sort((a, b) => a - b) };
  }

  /** The first `limit` (-1: all) matches of `match` after `offset`, in key order. */
  private matchKeys(match: string, limit: number, offset = 0): number[] {
    if (this.known?.match === match) return this.known.keys.slice(offset, limit < 0 ? undefined : offset + limit);
    return (
      offset === 0 ? this.statements.matches.all(match, limit) : this.statements.page.all(match, limit, offset)
    ) as number[];
  }

  /** Matches of `match`, counted up to `cap`; a query asks the same count once. */
  private countUpTo(match: string, cap: number): number {
    if (this.known?.match === match) return cap < 0 ? this.known.keys.length : Math.min(cap, this.known.keys.length);
    const key = `${cap}\u0000${match}`;
    let n = this.counted.get(key);
    if (n === undefined) {
      n = this.statements.countUpTo.get(match, cap) as number;
      this.counted.set(key, n);
    }
    return n;
  }

  /** ORDER BY for a sort field; ties by id, ascending. */
  private orderBy(field: SortField, descending: boolean): string {
    const dir = descending ? "DESC" : "ASC";
    const { spec } = sortSpec(field);
    return spec.column === "name_key" ? `d.name_key ${dir}` : `d.${spec.column} ${dir}, d.id`;
  }

  /** No text and no filter: every live document, in sort order, straight from a sort index. */
  private browse(field: SortField, descending: boolean, query: IndexQuery): { hits: IndexHit[]; total: number } {
    const rows = this.cached(
      `SELECT ${hitColumns(this.includeFiles)} FROM documents d WHERE d.deleted = 0
         ORDER BY ${this.orderBy(field, descending)} LIMIT ? OFFSET ?`,
      false,
    ).all(query.limit, query.offset) as Row[];
    const total =
      query.offset === 0 && rows.length < query.limit
        ? rows.length
        : (
            this.cached(`SELECT count(*) AS n FROM (SELECT 1 FROM documents WHERE deleted = 0 LIMIT ?)`, false).get(
              this.countLimit,
            ) as { n: number }
          ).n;
    return { hits: rows.map(toHit), total };
  }

  /** The live rows of these FTS keys, in the order given. */
  private rowsOf(keys: number[]): Row[] {
    if (keys.length === 0) return [];
    const rowids = keys.map((k) => k % KEY_SHIFT);
    const byRowid = new Map(
      (
        (this.includeFiles ? this.statements.byRowidsWithFiles : this.statements.byRowids).all(
          JSON.stringify(rowids),
        ) as Row[]
      ).map((r) => [r.rowid, r] as const),
    );
    return rowids.map((r) => byRowid.get(r)).filter((r): r is Row => r !== undefined);
  }

  /**
   * Matches ranked. When no word is in {@link MAX_RANKED_DF} documents or more (the
   * vocabulary's counts say so without reading postings) and at most {@link EXACT_MATCHES}
   * documents match, by bm25 (filters restrict the candidates, not the ranking). Otherwise
   * bm25 would read millions of postings: matches come in tiers ({@link tiered}). When the last
   * word has too many completions to spell, the documents holding the word itself come first
   * (tiered), then those holding only a completion: the second part needs FTS5's prefix
   * query, which reads every posting of the prefix, and a page rarely reaches it.
   */
  private ranked(
    words: string[],
    phrases: Phrase[],
    filtered: boolean,
    match: string,
    least: number,
    query: IndexQuery,
  ): { hits: IndexHit[]; total: number } {
    const { limit, offset } = query;
    const text = textExpression(phrases);
    const cap = Math.max(this.countLimit, this.maxRankedDf);
    const common = (p: Phrase) =>
      p.least >= this.maxRankedDf || (p.most ?? this.countUpTo(textExpression([p]), cap)) >= this.maxRankedDf;
    const fewest = Math.min(...phrases.map((p) => p.most ?? Infinity));
    const rankable =
      !phrases.some(common) && (fewest <= this.exact || this.countUpTo(match, this.exact + 1) <= this.exact);
    if (rankable) {
      const ranked = (
        filtered
          ? this.statements.rankAmong.all(text, JSON.stringify(this.matchKeys(match, this.exact)), limit, offset)
          : this.statements.rankAll.all(text, limit, offset)
      ) as Array<{ key: number; s: number }>;
      const score = new Map(ranked.map((r) => [r.key % KEY_SHIFT, -r.s]));
      const rows = this.rowsOf(ranked.map((r) => r.key));
      const total = offset === 0 && ranked.length < limit ? rows.length : this.countUpTo(match, this.countLimit);
      return { hits: rows.map((r) => toHit({ ...r, score: score.get(r.rowid) ?? 0 })), total };
    }
    // Possibly few matches (filters, or a rare word): read in one walk, counted on the way.
    const sparse = filtered || fewest <= this.countLimit;
    const exact = phrases.at(-1)?.exact;
    let page: { keys: number[]; named: Set<number>; total: number };
    if (exact === undefined) {
      page = this.tiered(words, match, offset, limit, least, sparse);
    } else {
      // `match` begins with the text expression; the filters after it stay.
      const withWord = match.replace(text, () => textExpression([...phrases.slice(0, -1), exact]));
      const first = this.tiered(words, withWord, offset, limit, least, sparse);
      // The documents with the word itself, all of them counted when the page goes past them.
      const before =
        first.keys.length < limit && first.total >= this.countLimit ? this.countUpTo(withWord, -1) : first.total;
      const rest =
        first.keys.length < limit
          ? this.tiered(
              words,
              `(${match}) NOT (${withWord})`,
              Math.max(0, offset - before),
              limit - first.keys.length,
              0,
              sparse,
            )
          : undefined;
      page = {
        keys: [...first.keys, ...(rest?.keys ?? [])],
        named: new Set([...first.named, ...(rest?.named ?? [])]),
        total: rest
          ? Math.min(this.countLimit, before + rest.total)
          : first.total >= this.countLimit
            ? this.countLimit
            : this.countUpTo(match, this.countLimit),
      };
    }
    const rows = this.rowsOf(page.keys);
    return { hits: rows.map((r) => toHit({ ...r, score: page.named.has(r.rowid) ? 2 : 1 })), total: page.total };
  }

  /**
   * A page of `match` without bm25: matches are cut in tiers of {@link NAME_TIER} in key order
   * (most downloaded first), and within a tier documents whose id or title holds every word
   * come first; the order is (tier, name match, key), the same on every page, and a page
   * costs one or two tiers. `named` holds the rowids of name matches among the tiers read
   * (the page's among them); `total` counts up to {@link countLimit} (`least` of them known
   * beforehand). When the match set may be `sparse`, its first {@link countLimit} keys are
   * read at once: fewer, and they are the tiers and the count in one walk.
   */
  private tiered(
    words: string[],
    match: string,
    offset: number,
    limit: number,
    least: number,
    sparse: boolean,
  ): { keys: number[]; named: Set<number>; total: number } {
    const tier = Math.min(this.exact, NAME_TIER);
    const all = sparse ? this.matchKeys(match, this.countLimit) : undefined;
    const complete = all !== undefined && all.length < this.countLimit;
    const keys: number[] = [];
    // Rowids of name matches among the tiers read (the page's are among them).
    const named = new Set<number>();
    // Set when a tier comes up short: the matches end there, and their number is known.
    let counted = complete ? all.length : undefined;
    for (let t = Math.floor(offset / tier); t <= Math.floor((offset + limit - 1) / tier); t++) {
      const candidates =
        all && (complete || (t + 1) * tier <= all.length)
          ? all.slice(t * tier, (t + 1) * tier)
          : this.matchKeys(match, tier, t * tier);
      if (candidates.length < tier && (candidates.length > 0 || t === 0)) counted ??= t * tier + candidates.length;
      for (const r of this.namesOf(candidates)) if (namesMatch(words, r)) named.add(r.rowid);
      const ordered = [
        ...candidates.filter((k) => named.has(k % KEY_SHIFT)),
        ...candidates.filter((k) => !named.has(k % KEY_SHIFT)),
      ];
      const from = t === Math.floor(offset / tier) ? offset - t * tier : 0;
      keys.push(...ordered.slice(from, from + limit - keys.length));
      if (candidates.length < tier) break;
    }
    const total =
      counted !== undefined
        ? Math.min(counted, this.countLimit)
        : least >= this.countLimit
          ? this.countLimit
          : this.countUpTo(match, this.countLimit);
    return { keys, named, total };
  }

  /** Ids and titles of these FTS keys. */
  private namesOf(keys: number[]): NameRow[] {
    if (keys.length === 0) return [];
    const known = keys.map((k) => this.knownNames.get(k % KEY_SHIFT));
    if (known.every((r) => r !== undefined)) return known;
    return this.statements.names.all(JSON.stringify(keys.map((k) => k % KEY_SHIFT))) as NameRow[];
  }

  /**
   * Matches in sort order. Up to {@link EXACT_MATCHES} matches are fetched and sorted whole.
   * Beyond, when a large share of all documents matches, the sort index is walked from its
   * start and each document tested ({@link denseWalk}); otherwise the sort field's buckets are
   * walked in sort order and FTS5 gives the matches of each, until the page is held: buckets
   * before the page are skipped by their count, and the ones it falls in are put in order
   * ({@link bucketPage}).
   */
  private sorted(
    match: string,
    least: number,
    field: SortField,
    descending: boolean,
    query: IndexQuery,
  ): { hits: IndexHit[]; total: number } {
    const { limit, offset } = query;
    const { spec, resolved } = sortSpec(field);
    // `least` known to reach the bound: no need to read the first matches to find out.
    const all = least >= this.exact ? undefined : this.matchKeys(match, this.exact);
    let keys = all ?? [];
    let total = keys.length;
    if (all === undefined || all.length >= this.exact) {
      total = least >= this.countLimit ? this.countLimit : this.countUpTo(match, this.countLimit);
      const walked =
        this.denseWalk(match, least, spec, resolved, descending, offset, limit) ??
        this.authorWalk(query, resolved, descending);
      if (walked !== undefined) return { hits: this.rowsOf(walked).map(toHit), total };
      keys = [];
      const range = {
        lo: this.cached(spec.range[0]).get() as number | string,
        hi: this.cached(spec.range[1]).get() as number | string,
      };
      const asKeys = (v: number | string) =>
        spec.bucket({
          downloads: Number(v),
          likes: Number(v),
          updated_at: Number(v),
          created_at: Number(v),
          name_key: String(v),
        });
      const lo = asKeys(range.lo);
      const hi = asKeys(range.hi);
      const step = descending ? -1 : 1;
      // Buckets partition the order: a bucket wholly before the page is skipped by its count;
      // only the buckets the page falls in are put in order.
      const page: number[] = [];
      let skip = offset;
      for (let b = descending ? hi : lo; b >= lo && b <= hi && page.length < limit; b += step) {
        const inBucket = this.statements.matches.all(
          `(${match}) AND facets : "${sortToken(resolved, b)}"`,
          -1,
        ) as number[];
        if (skip >= inBucket.length) {
          skip -= inBucket.length;
          continue;
        }
        page.push(...this.bucketPage(spec, resolved, b, descending, inBucket, skip, limit - page.length));
        skip = 0;
      }
      return { hits: this.rowsOf(page).map(toHit), total };
    }
    const rows = this.cached(
      `SELECT ${hitColumns(this.includeFiles)} FROM documents d WHERE d.rowid IN (SELECT value FROM json_each(?))
         ORDER BY ${this.orderBy(resolved, descending)} LIMIT ? OFFSET ?`,
      false,
    ).all(JSON.stringify(keys.map((k) => k % KEY_SHIFT)), limit, offset) as Row[];
    return { hits: rows.map(toHit), total };
  }

  /**
   * Rowids of one sort bucket's matches (`keys`), `skip` of them skipped and at most `need`,
   * in sort order. Sorting them reads every match's row, which costs about a microsecond
   * each: thousands in one bucket (a name sort of a common tag: a first letter holds tens of
   * thousands of names) cost milliseconds. When the field's index gives the order, the
   * bucket's range of it is walked instead, keeping its matches, and the walk stops at the
   * page; it gives up once it has read {@link WALK_COST} index entries per match (matches
   * sparse in the bucket, or bunched at its far end), and the rows are sorted after all.
   */
  private bucketPage(
    spec: SortSpec,
    field: SortField,
    bucket: number,
    descending: boolean,
    keys: number[],
    skip: number,
    need: number,
  ): number[] {
    const rowids = keys.map((k) => k % KEY_SHIFT);
    if (rowids.length > this.walkFrom && spec.walks(descending)) {
      const walked = this.walkBucket(spec, field, bucket, descending, rowids, skip, need);
      if (walked !== undefined) return walked;
    }
    return this.cached(
      `SELECT d.rowid FROM documents d WHERE d.rowid IN (SELECT value FROM json_each(?))
       ORDER BY ${this.orderBy(field, descending)} LIMIT ? OFFSET ?`,
    ).all(JSON.stringify(rowids), need, skip) as number[];
  }

  /**
   * When at least `least` documents match, a large part of all of them, the page is found by
   * walking the sort index from its start and testing each document against the match (a
   * look-up in the full-text index, tens of microseconds for a common word): for the first
   * pages, a few dozen tests instead of reading a bucket of tens of thousands of matches.
   * Undefined when the walk does not suit: matches too few (or unknown), a deep page, an
   * index that does not give this order, or a walk that read past its budget.
   */
  private denseWalk(
    match: string,
    least: number,
    spec: SortSpec,
    field: SortField,
    descending: boolean,
    skip: number,
    need: number,
  ): number[] | undefined {
    if (least <= 0 || !spec.walks(descending)) return undefined;
    const live = (this.statements.kinds.all() as Array<{ n: number }>).reduce((n, r) => n + Math.max(0, r.n), 0);
    // Rows a walk tests on average: the page's depth over the share of documents matching.
    const expected = ((skip + need) * live) / least;
    if (expected > DENSE_TESTS) return undefined;
    const walk = this.cached(
      `SELECT d.rowid FROM documents d INDEXED BY ${spec.index} WHERE d.deleted = 0 AND nearhub_walk_keeps(d.rowid)
         AND EXISTS (SELECT 1 FROM documents_fts f WHERE f.documents_fts MATCH @match AND f.rowid = d.fts_key)
       ORDER BY ${this.orderBy(field, descending)} LIMIT @need OFFSET @skip`,
    );
    // Twice the expected tests: an unlucky stretch of the order still finishes.
    return this.walkWithin(walk, { match, need, skip }, undefined, 2 * DENSE_TESTS);
  }

  /**
   * Filters only, one of them an author, sorted by name: the author's documents in name order
   * straight from an index of (author, name), the other filters tested on each row. An
   * author's names all begin with the author, so they fill one name bucket, and the bucket
   * walk would read every posting of the author's facet, and of the buckets before it.
   * Column equality folds ASCII case only, so values with anything else, and tag filters
   * (which are not columns), take the full-text path.
   */
  private authorWalk(query: IndexQuery, field: SortField, descending: boolean): number[] | undefined {
    const f = query.filters;
    if (field !== SortField.NAME || query.text.trim() || !f.author || f.tags.length > 0) return undefined;
    const columns: Array<[string, string]> = [
      ["author", f.author],
      ["pipeline_tag", f.pipelineTag],
      ["library_name", f.library],
      ["license", f.license],
      ["upstream", f.upstream],
      ["state", f.state],
    ].filter((c): c is [string, string] => c[1] !== "");
    if (!columns.every(([, value]) => /^[\x20-\x7e]*$/.test(value))) return undefined;
    const kind = query.kind === DocumentKind.UNSPECIFIED ? "" : "AND d.kind = @kind";
    const walk = this.cached(
      `SELECT d.rowid FROM documents d INDEXED BY documents_author_name WHERE d.deleted = 0
         ${columns.map(([column]) => `AND d.${column} = @${column} COLLATE NOCASE`).join(" ")} ${kind}
       ORDER BY d.name_key ${descending ? "DESC" : "ASC"} LIMIT @limit OFFSET @offset`,
    );
    return walk.all({
      ...Object.fromEntries(columns),
      ...(kind ? { kind: query.kind } : {}),
      limit: query.limit,
      offset: query.offset,
    }) as number[];
  }

  /** Runs a walk with its row test set up; undefined when it read past `budget` rows. */
  private walkWithin(
    walk: Database.Statement,
    params: Record<string, unknown>,
    keep: Set<number> | undefined,
    budget: number,
  ): number[] | undefined {
    this.walking = { keep, budget };
    try {
      return walk.all(params) as number[];
    } catch (error) {
      if (error instanceof WalkOverBudget) return undefined;
      throw error;
    } finally {
      this.walking = undefined;
    }
  }

  /** {@link bucketPage} through the sort index; undefined when the walk gave up. */
  private walkBucket(
    spec: SortSpec,
    field: SortField,
    bucket: number,
    descending: boolean,
    rowids: number[],
    skip: number,
    need: number,
  ): number[] | undefined {
    const lower = spec.least(bucket);
    const upper = spec.least(bucket + 1);
    const walk = this.cached(
      `SELECT d.rowid FROM documents d INDEXED BY ${spec.index} WHERE d.deleted = 0
         ${lower === undefined ? "" : `AND d.${spec.column} >= @lower`}
         ${upper === undefined ? "" : `AND d.${spec.column} < @upper`}
         AND nearhub_walk_keeps(d.rowid)
       ORDER BY ${this.orderBy(field, descending)} LIMIT @need OFFSET @skip`,
    );
    return this.walkWithin(
      walk,
      { ...(lower === undefined ? {} : { lower }), ...(upper === undefined ? {} : { upper }), need, skip },
      new Set(rowids),
      WALK_COST * rowids.length + skip + need,
    );
  }

  /** A statement prepared once per SQL text (the sort paths build a few variants). */
  private cached(sql: string, pluck = true): Database.Statement {
    const key = pluck ? `p:${sql}` : `r:${sql}`;
    let statement = this.prepared.get(key);
    if (!statement) {
      statement = pluck ? this.db.prepare(sql).pluck() : this.db.prepare(sql);
      this.prepared.set(key, statement);
    }
    return statement;
  }

  /** Ids and titles starting with `prefix` (whole id or its last segment), most downloaded first. */
  async suggest(prefix: string, kind: DocumentKind, limit: number): Promise<IndexSuggestion[]> {
    const p = prefix.normalize("NFKC").trim().toLowerCase();
    if (!/[\p{L}\p{N}]/u.test(p)) return [];
    const kindClause = kind === DocumentKind.UNSPECIFIED ? "" : "AND kind = @kind";
    const rows = this.cached(
      // Each arm reads at most 1000 keys in order, so a one-letter prefix costs what a long one does.
      `SELECT id, kind, title FROM (
           SELECT * FROM (SELECT id, kind, title, downloads FROM documents INDEXED BY documents_name
             WHERE deleted = 0 AND name_key >= @p AND name_key < @end ${kindClause} ORDER BY name_key LIMIT 1000)
           UNION
           SELECT * FROM (SELECT id, kind, title, downloads FROM documents INDEXED BY documents_short
             WHERE deleted = 0 AND short_key >= @p AND short_key < @end ${kindClause} ORDER BY short_key LIMIT 1000)
         ) ORDER BY downloads DESC, id LIMIT @limit`,
      false,
    ).all({ p, end: prefixEnd(p), kind, limit }) as IndexSuggestion[];
    return rows;
  }

  /** The live document. */
  async get(id: string): Promise<SearchDocument | undefined> {
    const row = this.statements.get.get(id) as Row | undefined;
    if (!row) return undefined;
    const { score: _score, ...hit } = toHit(row);
    return { ...hit, body: row.body, version: BigInt(row.version) };
  }

  /** Live documents. */
  async count(): Promise<number> {
    return (this.statements.count.get() as { n: number }).n;
  }

  /**
   * The brute-force baseline of the benchmark: a case-insensitive substring scan of every
   * document's text, the way a search without an index answers.
   */
  scanSync(text: string, limit: number): string[] {
    const like = `%${text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    const rows = this.db
      .prepare(
        `SELECT id FROM documents NOT INDEXED WHERE deleted = 0 AND (id LIKE @like ESCAPE '\\' OR title LIKE @like ESCAPE '\\'
           OR description LIKE @like ESCAPE '\\' OR files LIKE @like ESCAPE '\\' OR body LIKE @like ESCAPE '\\')
         ORDER BY downloads DESC LIMIT @limit`,
      )
      .all({ like, limit }) as Array<{ id: string }>;
    return rows.map((r) => r.id);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}
