import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import { DocumentKind } from "@nearhub/proto/search";

/** A searchable document: a git repository, a model or a dataset. */
export interface SearchDocument {
  id: string;
  kind: DocumentKind;
  title: string;
  description: string;
  /** Extra searchable text (file names, model card…). */
  body: string;
  updatedAtMs: number;
  /** Monotonic per document; an older version never overwrites a newer one. */
  version: bigint;
}

/** One hit with its bm25-derived score (higher is better). */
export interface IndexHit {
  id: string;
  kind: DocumentKind;
  title: string;
  description: string;
  score: number;
  updatedAtMs: number;
}

/** Query of {@link SqliteSearchIndex.search}. */
export interface IndexQuery {
  text: string;
  kind: DocumentKind;
  limit: number;
  offset: number;
}

/**
 * Turns user text into a safe FTS5 expression: every token becomes a quoted string (quotes
 * doubled), so FTS5 operators (AND, OR, NEAR, *, ^, :, parentheses) typed by a user are
 * searched as words; the last token matches as a prefix, for search-as-you-type.
 */
export function toFtsQuery(text: string): string | undefined {
  const tokens = text
    .normalize("NFKC")
    .split(/[\s/]+/u)
    // Control characters go; quotes are doubled, FTS5's escape inside a string.
    .map((t) =>
      [...t]
        .filter((c) => c >= " ")
        .join("")
        .replace(/"/g, '""'),
    )
    .filter((t) => t.replace(/""/g, "").length > 0)
    .slice(0, 32);
  if (tokens.length === 0) return undefined;
  return tokens.map((t, i) => `"${t}"${i === tokens.length - 1 ? "*" : ""}`).join(" ");
}

/**
 * The embedded search index: SQLite with FTS5 (bm25 ranking, prefix search), WAL mode, and a
 * version per document so that replayed or out-of-order events converge. Deletions leave a
 * tombstone carrying the version, so a late "added" cannot resurrect a removed document.
 */
export class SqliteSearchIndex {
  private readonly db: Database.Database;

  constructor(path: string) {
    if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS documents (
        rowid INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        kind INTEGER NOT NULL,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        body TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        version TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0
      );
      CREATE INDEX IF NOT EXISTS documents_kind_updated ON documents(kind, updated_at);
      CREATE VIRTUAL TABLE IF NOT EXISTS documents_fts USING fts5(
        id, title, description, body,
        content='documents', content_rowid='rowid',
        tokenize="unicode61 remove_diacritics 2 tokenchars '-_.'"
      );
      CREATE TRIGGER IF NOT EXISTS documents_ai AFTER INSERT ON documents WHEN new.deleted = 0 BEGIN
        INSERT INTO documents_fts(rowid, id, title, description, body) VALUES (new.rowid, new.id, new.title, new.description, new.body);
      END;
      CREATE TRIGGER IF NOT EXISTS documents_ad AFTER DELETE ON documents WHEN old.deleted = 0 BEGIN
        INSERT INTO documents_fts(documents_fts, rowid, id, title, description, body) VALUES ('delete', old.rowid, old.id, old.title, old.description, old.body);
      END;
      CREATE TRIGGER IF NOT EXISTS documents_au AFTER UPDATE ON documents BEGIN
        INSERT INTO documents_fts(documents_fts, rowid, id, title, description, body)
          SELECT 'delete', old.rowid, old.id, old.title, old.description, old.body WHERE old.deleted = 0;
        INSERT INTO documents_fts(rowid, id, title, description, body)
          SELECT new.rowid, new.id, new.title, new.description, new.body WHERE new.deleted = 0;
      END;
    `);
  }

  /** Inserts or replaces a document unless the stored version is newer; true when applied. */
  upsert(doc: SearchDocument): boolean {
    const current = this.db.prepare("SELECT version FROM documents WHERE id = ?").get(doc.id) as
      { version: string } | undefined;
    if (current && BigInt(current.version) > doc.version) return false;
    this.db
      .prepare(
        `INSERT INTO documents (id, kind, title, description, body, updated_at, version, deleted)
         VALUES (@id, @kind, @title, @description, @body, @updatedAt, @version, 0)
         ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, title = excluded.title, description = excluded.description,
           body = excluded.body, updated_at = excluded.updated_at, version = excluded.version, deleted = 0`,
      )
      .run({
        id: doc.id,
        kind: doc.kind,
        title: doc.title,
        description: doc.description,
        body: doc.body,
        updatedAt: doc.updatedAtMs,
        version: doc.version.toString(),
      });
    return true;
  }

  /** Removes a document at `version` (leaving a tombstone); true when applied. */
  remove(id: string, version: bigint): boolean {
    const current = this.db.prepare("SELECT version FROM documents WHERE id = ?").get(id) as
      { version: string } | undefined;
    if (current && BigInt(current.version) > version) return false;
    this.db
      .prepare(
        `INSERT INTO documents (id, kind, title, description, body, updated_at, version, deleted)
         VALUES (?, 0, '', '', '', 0, ?, 1)
         ON CONFLICT(id) DO UPDATE SET version = excluded.version, deleted = 1`,
      )
      .run(id, version.toString());
    return true;
  }

  /** Ranked hits and the total number of matches. */
  search(query: IndexQuery): { hits: IndexHit[]; total: number } {
    const fts = toFtsQuery(query.text);
    const kindClause = query.kind === DocumentKind.UNSPECIFIED ? "" : "AND d.kind = @kind";
    const params = { fts, kind: query.kind, limit: query.limit, offset: query.offset };
    if (!fts) {
      const rows = this.db
        .prepare(
          `SELECT d.id, d.kind, d.title, d.description, 0.0 AS score, d.updated_at AS updatedAtMs FROM documents d
           WHERE d.deleted = 0 ${kindClause} ORDER BY d.updated_at DESC, d.id LIMIT @limit OFFSET @offset`,
        )
        .all(params) as IndexHit[];
      const { n } = this.db
        .prepare(`SELECT count(*) AS n FROM documents d WHERE d.deleted = 0 ${kindClause}`)
        .get(params) as { n: number };
      return { hits: rows, total: n };
    }
    const rows = this.db
      .prepare(
        `SELECT d.id, d.kind, d.title, d.description, -bm25(documents_fts, 0.0, 10.0, 2.0, 1.0) AS score, d.updated_at AS updatedAtMs
         FROM documents_fts JOIN documents d ON d.rowid = documents_fts.rowid
         WHERE documents_fts MATCH @fts AND d.deleted = 0 ${kindClause}
         ORDER BY bm25(documents_fts, 0.0, 10.0, 2.0, 1.0), d.id LIMIT @limit OFFSET @offset`,
      )
      .all(params) as IndexHit[];
    const { n } = this.db
      .prepare(
        `SELECT count(*) AS n FROM documents_fts JOIN documents d ON d.rowid = documents_fts.rowid
         WHERE documents_fts MATCH @fts AND d.deleted = 0 ${kindClause}`,
      )
      .get(params) as { n: number };
    return { hits: rows, total: n };
  }

  /** The live document, for tests and diagnostics. */
  get(id: string): SearchDocument | undefined {
    const row = this.db.prepare("SELECT * FROM documents WHERE id = ? AND deleted = 0").get(id) as
      | {
          id: string;
          kind: number;
          title: string;
          description: string;
          body: string;
          updated_at: number;
          version: string;
        }
      | undefined;
    if (!row) return undefined;
    return {
      id: row.id,
      kind: row.kind,
      title: row.title,
      description: row.description,
      body: row.body,
      updatedAtMs: row.updated_at,
      version: BigInt(row.version),
    };
  }

  close(): void {
    this.db.close();
  }
}
