import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import { DocumentKind, SortField } from "@nearhub/proto/search";
import {
  effectiveSort,
  filterTags,
  searchTokens,
  type IndexHit,
  type IndexOp,
  type IndexQuery,
  type IndexSuggestion,
  type SearchDocument,
  type SearchIndex,
} from "./document.js";

/** Bumped whenever the table layout changes; an older file is rebuilt from the events. */
const SCHEMA_VERSION = 4;
/** Totals are exact up to this many matches and reported as this many beyond. */
export const MAX_COUNTED = 10_000;

/**
 * Turns user text into a safe FTS5 expression: every token becomes a quoted string (quotes
 * doubled), so FTS5 operators (AND, OR, NEAR, *, ^, :, parentheses) typed by a user are
 * searched as words; the last token matches as a prefix, for search-as-you-type.
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

const HIT_COLUMNS = `d.id, d.kind, d.title, d.description, d.author, d.tags, d.pipeline_tag, d.library_name, d.license,
  d.upstream, d.state, d.default_branch, d.refs_count, d.files, d.size_bytes, d.downloads, d.likes, d.private, d.gated,
  d.sha, d.created_at, d.updated_at, d.status_at`;

const BM25 = "bm25(documents_fts, 10.0, 8.0, 2.0, 1.0, 0.5, 0.0)";
/** User text matches these columns only; `facets` holds the filter tokens. */
const TEXT_COLUMNS = "{id title description file_names body}";

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
    files: JSON.parse(row.files) as SearchDocument["files"],
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

/** The part of an id after its last slash: `rocket` of `github.com/acme/rocket`. */
function shortName(id: string): string {
  return id.slice(id.lastIndexOf("/") + 1).toLowerCase();
}

/** SQL LIKE-free prefix range: [prefix, prefix + U+FFFF). */
function prefixEnd(prefix: string): string {
  return `${prefix}\uffff`;
}

/**
 * The embedded search index: SQLite with FTS5 (bm25 ranking, prefix search), filters and
 * sorts through ordinary indexed columns, WAL mode, and a version per document so that
 * replayed or out-of-order events converge. Deletions leave a tombstone carrying the version,
 * so a late "added" cannot resurrect a removed document.
 */
export class SqliteSearchIndex implements SearchIndex {
  private readonly db: Database.Database;
  /** True when this file had no index (or an outdated layout) and must be filled from events. */
  readonly fresh: boolean;
  private readonly statements;

  constructor(readonly name: string) {
    if (name !== ":memory:") mkdirSync(dirname(name), { recursive: true });
    this.db = new Database(name);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    const version = this.db.pragma("user_version", { simple: true }) as number;
    this.fresh = version !== SCHEMA_VERSION;
    if (this.fresh) this.createSchema();
    this.statements = {
      version: this.db.prepare("SELECT rowid, version FROM documents WHERE id = ?"),
      upsert: this.db.prepare(
        `INSERT INTO documents (id, kind, title, description, body, author, tags, pipeline_tag, library_name, license,
           upstream, state, default_branch, refs_count, files, file_names, facets, size_bytes, downloads, likes, private, gated, sha,
           created_at, updated_at, status_at, version, deleted, name_key, short_key)
         VALUES (@id, @kind, @title, @description, @body, @author, @tags, @pipelineTag, @libraryName, @license,
           @upstream, @state, @defaultBranch, @refsCount, @files, @fileNames, @facets, @sizeBytes, @downloads, @likes, @private, @gated,
           @sha, @createdAt, @updatedAt, @statusAt, @version, 0, @nameKey, @shortKey)
         ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, title = excluded.title, description = excluded.description,
           body = excluded.body, author = excluded.author, tags = excluded.tags, pipeline_tag = excluded.pipeline_tag,
           library_name = excluded.library_name, license = excluded.license, upstream = excluded.upstream,
           state = excluded.state, default_branch = excluded.default_branch, refs_count = excluded.refs_count,
           files = excluded.files, file_names = excluded.file_names, facets = excluded.facets, size_bytes = excluded.size_bytes,
           downloads = excluded.downloads, likes = excluded.likes, private = excluded.private, gated = excluded.gated,
           sha = excluded.sha, created_at = excluded.created_at, updated_at = excluded.updated_at,
           status_at = excluded.status_at, version = excluded.version, deleted = 0, name_key = excluded.name_key, short_key = excluded.short_key
         RETURNING rowid`,
      ),
      tombstone: this.db.prepare(
        `INSERT INTO documents (id, kind, title, description, body, version, deleted, name_key, short_key)
         VALUES (?, 0, '', '', '', ?, 1, '', '')
         ON CONFLICT(id) DO UPDATE SET version = excluded.version, deleted = 1
         RETURNING rowid`,
      ),
      clearTags: this.db.prepare("DELETE FROM document_tags WHERE doc = ?"),
      addTag: this.db.prepare("INSERT OR IGNORE INTO document_tags (tag, doc) VALUES (?, ?)"),
      get: this.db.prepare("SELECT * FROM documents WHERE id = ? AND deleted = 0"),
      count: this.db.prepare("SELECT count(*) AS n FROM documents WHERE deleted = 0"),
    };
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
        file_names TEXT NOT NULL DEFAULT '',
        facets TEXT NOT NULL DEFAULT '',
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
        short_key TEXT NOT NULL
      );
      CREATE INDEX documents_updated ON documents(updated_at, id) WHERE deleted = 0;
      CREATE INDEX documents_downloads ON documents(downloads, id) WHERE deleted = 0;
      CREATE INDEX documents_likes ON documents(likes, id) WHERE deleted = 0;
      CREATE INDEX documents_created ON documents(created_at, id) WHERE deleted = 0;
      CREATE INDEX documents_name ON documents(name_key) WHERE deleted = 0;
      CREATE INDEX documents_short ON documents(short_key) WHERE deleted = 0;
      CREATE INDEX documents_author ON documents(author COLLATE NOCASE) WHERE deleted = 0;
      CREATE INDEX documents_pipeline ON documents(pipeline_tag COLLATE NOCASE) WHERE deleted = 0;
      CREATE INDEX documents_library ON documents(library_name COLLATE NOCASE) WHERE deleted = 0;
      CREATE INDEX documents_upstream ON documents(upstream COLLATE NOCASE) WHERE deleted = 0;
      CREATE TABLE document_tags (
        tag TEXT NOT NULL,
        doc INTEGER NOT NULL,
        PRIMARY KEY (tag, doc)
      ) WITHOUT ROWID;
      CREATE INDEX document_tags_doc ON document_tags(doc);
      CREATE VIRTUAL TABLE documents_fts USING fts5(
        id, title, description, file_names, body, facets,
        content='documents', content_rowid='rowid',
        tokenize="unicode61 remove_diacritics 2", prefix='2 3'
      );
      CREATE TRIGGER documents_ai AFTER INSERT ON documents WHEN new.deleted = 0 BEGIN
        INSERT INTO documents_fts(rowid, id, title, description, file_names, body, facets)
          VALUES (new.rowid, new.id, new.title, new.description, new.file_names, new.body, new.facets);
      END;
      CREATE TRIGGER documents_ad AFTER DELETE ON documents WHEN old.deleted = 0 BEGIN
        INSERT INTO documents_fts(documents_fts, rowid, id, title, description, file_names, body, facets)
          VALUES ('delete', old.rowid, old.id, old.title, old.description, old.file_names, old.body, old.facets);
      END;
      CREATE TRIGGER documents_au AFTER UPDATE ON documents BEGIN
        INSERT INTO documents_fts(documents_fts, rowid, id, title, description, file_names, body, facets)
          SELECT 'delete', old.rowid, old.id, old.title, old.description, old.file_names, old.body, old.facets
          WHERE old.deleted = 0;
        INSERT INTO documents_fts(rowid, id, title, description, file_names, body, facets)
          SELECT new.rowid, new.id, new.title, new.description, new.file_names, new.body, new.facets
          WHERE new.deleted = 0;
      END;
      PRAGMA user_version = ${SCHEMA_VERSION};
    `);
  }

  /** Applies a batch in one transaction (one fsync for the lot). */
  async apply(ops: IndexOp[]): Promise<boolean[]> {
    return this.applySync(ops);
  }

  /** {@link apply} without the promise, for callers that batch in a tight loop. */
  applySync(ops: IndexOp[]): boolean[] {
    return this.db.transaction(() =>
      ops.map((op) => ("upsert" in op ? this.upsertOne(op.upsert) : this.removeOne(op.remove))),
    )();
  }

  private isStale(id: string, version: bigint): boolean {
    const current = this.statements.version.get(id) as { version: string } | undefined;
    // Equal versions re-apply (idempotent); only a strictly newer stored version wins.
    return current !== undefined && BigInt(current.version) > version;
  }

  private upsertOne(doc: SearchDocument): boolean {
    if (this.isStale(doc.id, doc.version)) return false;
    const { rowid } = this.statements.upsert.get({
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
      fileNames: doc.files.map((f) => f.path).join(" "),
      facets: facetsOf(doc),
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
    }) as { rowid: number };
    this.statements.clearTags.run(rowid);
    for (const tag of filterTags(doc)) this.statements.addTag.run(tag, rowid);
    return true;
  }

  private removeOne({ id, version }: { id: string; version: bigint }): boolean {
    if (this.isStale(id, version)) return false;
    const { rowid } = this.statements.tombstone.get(id, version.toString()) as { rowid: number };
    this.statements.clearTags.run(rowid);
    return true;
  }

  /** Ranked hits and the total number of matches. */
  async search(query: IndexQuery): Promise<{ hits: IndexHit[]; total: number }> {
    return this.searchSync(query);
  }

  /** {@link search} without the promise. */
  searchSync(query: IndexQuery): { hits: IndexHit[]; total: number } {
    const fts = toFtsQuery(query.text);
    // Text with nothing searchable in it (only emoji or punctuation) matches nothing.
    if (!fts && query.text.trim()) return { hits: [], total: 0 };
    const where = ["d.deleted = 0"];
    const params: Record<string, unknown> = { limit: query.limit, offset: query.offset };
    const f = query.filters;
    const tags = [...new Set(f.tags.map((t) => t.toLowerCase()).filter(Boolean))].slice(0, 20);
    // With text, filters are facet tokens in the FTS5 query; without, indexed columns.
    const facets: string[] = [];
    const filter = (column: string, name: string, value: string | number, empty: string | number) => {
      if (value === empty) return;
      if (fts) facets.push(facet(name, value));
      else {
        where.push(`d.${column} = @${name} COLLATE NOCASE`);
        params[name] = value;
      }
    };
    filter("kind", "kind", query.kind, DocumentKind.UNSPECIFIED);
    filter("author", "author", f.author, "");
    filter("pipeline_tag", "pipeline", f.pipelineTag, "");
    filter("library_name", "library", f.library, "");
    filter("license", "license", f.license, "");
    filter("upstream", "upstream", f.upstream, "");
    filter("state", "state", f.state, "");
    tags.forEach((tag, i) => {
      if (fts) facets.push(facet("tag", tag));
      else {
        where.push(`d.rowid IN (SELECT doc FROM document_tags WHERE tag = @tag${i})`);
        params[`tag${i}`] = tag;
      }
    });
    const match = fts ? [`${TEXT_COLUMNS} : (${fts})`, ...facets.map((t) => `facets : "${t}"`)].join(" AND ") : "";
    const { field, descending } = effectiveSort(query);
    const dir = descending ? "DESC" : "ASC";
    const orderBy =
      field === SortField.RELEVANCE && fts
        ? `${BM25}, d.id`
        : field === SortField.DOWNLOADS
          ? `d.downloads ${dir}, d.id`
          : field === SortField.LIKES
            ? `d.likes ${dir}, d.id`
            : field === SortField.CREATED
              ? `d.created_at ${dir}, d.id`
              : field === SortField.NAME
                ? `d.name_key ${dir}`
                : `d.updated_at ${dir}, d.id`;
    // Ranked text: rank, limit and count inside FTS5, and join only the page.
    if (fts && field === SortField.RELEVANCE) return this.searchText(match, query);
    let from = "documents d";
    let score = "0.0";
    if (fts) {
      from = "documents_fts JOIN documents d ON d.rowid = documents_fts.rowid";
      where.push("documents_fts MATCH @fts");
      params["fts"] = match;
      score = `-${BM25}`;
    }
    const clause = where.join(" AND ");
    const rows = this.db
      .prepare(
        `SELECT ${HIT_COLUMNS}, ${score} AS score FROM ${from} WHERE ${clause} ORDER BY ${orderBy} LIMIT @limit OFFSET @offset`,
      )
      .all(params) as Row[];
    // A short first page is the whole result: no second query to count. Otherwise count up
    // to MAX_COUNTED, as Elasticsearch does by default: beyond it nobody pages anyway.
    const total =
      query.offset === 0 && rows.length < query.limit
        ? rows.length
        : (
            this.db
              .prepare(`SELECT count(*) AS n FROM (SELECT 1 FROM ${from} WHERE ${clause} LIMIT ${MAX_COUNTED})`)
              .get(params) as { n: number }
          ).n;
    return { hits: rows.map(toHit), total };
  }

  private searchText(fts: string, query: IndexQuery): { hits: IndexHit[]; total: number } {
    const params = { fts, limit: query.limit, offset: query.offset };
    const rows = this.db
      .prepare(
        `SELECT ${HIT_COLUMNS}, -f.s AS score FROM (
           SELECT rowid, ${BM25} AS s FROM documents_fts WHERE documents_fts MATCH @fts
           ORDER BY s, rowid LIMIT @limit OFFSET @offset
         ) f JOIN documents d ON d.rowid = f.rowid ORDER BY f.s, f.rowid`,
      )
      .all(params) as Row[];
    const total =
      query.offset === 0 && rows.length < query.limit
        ? rows.length
        : (
            this.db
              .prepare(
                `SELECT count(*) AS n FROM (SELECT 1 FROM documents_fts WHERE documents_fts MATCH @fts LIMIT ${MAX_COUNTED})`,
              )
              .get({ fts }) as { n: number }
          ).n;
    return { hits: rows.map(toHit), total };
  }

  /** Ids and titles starting with `prefix` (whole id or its last segment), most downloaded first. */
  async suggest(prefix: string, kind: DocumentKind, limit: number): Promise<IndexSuggestion[]> {
    const p = prefix.normalize("NFKC").trim().toLowerCase();
    if (!/[\p{L}\p{N}]/u.test(p)) return [];
    const kindClause = kind === DocumentKind.UNSPECIFIED ? "" : "AND kind = @kind";
    const rows = this.db
      .prepare(
        // Each arm reads at most 1000 keys in order, so a one-letter prefix costs what a long one does.
        `SELECT id, kind, title FROM (
           SELECT * FROM (SELECT id, kind, title, downloads FROM documents
             WHERE deleted = 0 AND name_key >= @p AND name_key < @end ${kindClause} ORDER BY name_key LIMIT 1000)
           UNION
           SELECT * FROM (SELECT id, kind, title, downloads FROM documents
             WHERE deleted = 0 AND short_key >= @p AND short_key < @end ${kindClause} ORDER BY short_key LIMIT 1000)
         ) ORDER BY downloads DESC, id LIMIT @limit`,
      )
      .all({ p, end: prefixEnd(p), kind, limit }) as IndexSuggestion[];
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
           OR description LIKE @like ESCAPE '\\' OR file_names LIKE @like ESCAPE '\\' OR body LIKE @like ESCAPE '\\')
         ORDER BY downloads DESC LIMIT @limit`,
      )
      .all({ like, limit }) as Array<{ id: string }>;
    return rows.map((r) => r.id);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}
