import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import Database from "better-sqlite3";
import { AuditEventSchema, AuditRecordSchema, type Decision, type AuditRecord } from "@nearhub/proto/audit";

/** Filters of {@link RecordIndex.query}. */
export interface RecordQuery {
  actor?: string;
  action?: string;
  /** Prefix of the resource. */
  resource?: string;
  sinceMs?: number;
  untilMs?: number;
  decision?: Decision;
  /** Records after this sequence number. */
  afterSequence: bigint;
  limit: number;
}

/** A row of the query index as stored: what `nearhub audit verify` compares with the trail. */
export interface IndexRow {
  seq: number;
  event_id: string;
  trail_seq: number;
  prev_hash: string;
  hash: string;
  time_ms: number;
  actor: string;
  action: string;
  resource: string;
  decision: number;
  recorded_ms: number;
  event_json: string;
  key_id: string;
  signature: string;
}

/**
 * The query index of the audit trail (SQLite, WAL): a copy of the trail stream's records, kept
 * in step by the recorder and rebuilt from the stream when lost. Indexed by actor, action,
 * resource prefix, time and decision.
 */
export class RecordIndex {
  private readonly db: Database.Database;
  private hasStatement: Database.Statement | undefined;
  private insertStatement: Database.Statement | undefined;
  private insertAll: ((records: ReadonlyArray<{ record: AuditRecord; streamSeq: number }>) => void) | undefined;

  constructor(path: string) {
    if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma("journal_mode = WAL");
    // NORMAL, not FULL: in WAL mode a commit survives a crash of the process, and what an OS
    // crash may take (the last commits) is re-indexed from the trail at start-up (the trail, not
    // the index, is the record). FULL costs an fsync per record: 5 ms, the recorder's bottleneck.
    this.db.pragma("synchronous = NORMAL");
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS records (
        seq INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        trail_seq INTEGER NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        resource TEXT NOT NULL,
        decision INTEGER NOT NULL,
        recorded_ms INTEGER NOT NULL,
        event_json TEXT NOT NULL,
        key_id TEXT NOT NULL DEFAULT '',
        signature TEXT NOT NULL DEFAULT ''
      );
      CREATE INDEX IF NOT EXISTS records_actor ON records(actor, seq);
      CREATE INDEX IF NOT EXISTS records_action ON records(action, seq);
      CREATE INDEX IF NOT EXISTS records_time ON records(time_ms);
    `);
    // Indexes made before records were signed: add the columns (verify then names the rows,
    // whose copies lack the signatures; delete the file to rebuild it from the trail).
    const columns = new Set((this.db.pragma("table_info(records)") as Array<{ name: string }>).map((c) => c.name));
    for (const column of ["key_id", "signature"]) {
      if (!columns.has(column)) this.db.exec(`ALTER TABLE records ADD COLUMN ${column} TEXT NOT NULL DEFAULT ''`);
    }
  }

  /** True when the event is already in the trail. */
  has(eventId: string): boolean {
    this.hasStatement ??= this.db.prepare("SELECT 1 FROM records WHERE event_id = ?");
    return this.hasStatement.get(eventId) !== undefined;
  }

  /** The trail stream sequence of the newest indexed record (0 when empty). */
  lastTrailSeq(): number {
    const row = this.db.prepare("SELECT max(trail_seq) AS s FROM records").get() as { s: number | null };
    return row.s ?? 0;
  }

  /** Indexes a trail record; false when it was already indexed. */
  insert(record: AuditRecord, trailSeq: number): boolean {
    const event = record.event;
    if (!event) return false;
    this.insertStatement ??= this.db.prepare(
      `INSERT OR IGNORE INTO records (seq, event_id, trail_seq, prev_hash, hash, time_ms, actor, action, resource, decision, recorded_ms, event_json, key_id, signature)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    const result = this.insertStatement.run(
      record.sequence,
      event.id,
      trailSeq,
      record.prevHash,
      record.hash,
      event.time ? timestampDate(event.time).getTime() : 0,
      event.actor,
      event.action,
      event.resource,
      event.decision,
      record.recordedAt ? timestampDate(record.recordedAt).getTime() : 0,
      toJsonString(AuditEventSchema, event),
      record.keyId,
      record.signature,
    );
    return result.changes > 0;
  }

  /** Indexes trail records in one transaction (one commit for a whole batch). */
  insertMany(records: ReadonlyArray<{ record: AuditRecord; streamSeq: number }>): void {
    if (records.length === 0) return;
    this.insertAll ??= this.db.transaction((all: ReadonlyArray<{ record: AuditRecord; streamSeq: number }>) => {
      for (const { record, streamSeq } of all) this.insert(record, streamSeq);
    });
    this.insertAll(records);
  }

  /** Matching records in sequence order. */
  query(q: RecordQuery): AuditRecord[] {
    const where: string[] = ["seq > @after"];
    if (q.actor) where.push("actor = @actor");
    if (q.action) where.push("action = @action");
    if (q.resource) where.push("substr(resource, 1, length(@resource)) = @resource");
    if (q.sinceMs !== undefined) where.push("time_ms >= @since");
    if (q.untilMs !== undefined) where.push("time_ms < @until");
    if (q.decision) where.push("decision = @decision");
    const rows = this.db
      .prepare(
        `SELECT seq, recorded_ms, event_json, prev_hash, hash, key_id, signature FROM records WHERE ${where.join(" AND ")} ORDER BY seq LIMIT @limit`,
      )
      .all({
        after: q.afterSequence.toString(),
        actor: q.actor,
        action: q.action,
        resource: q.resource,
        since: q.sinceMs,
        until: q.untilMs,
        decision: q.decision,
        limit: q.limit,
      }) as Array<Pick<IndexRow, "seq" | "recorded_ms" | "event_json" | "prev_hash" | "hash" | "key_id" | "signature">>;
    return rows.map((row) =>
      create(AuditRecordSchema, {
        sequence: BigInt(row.seq),
        event: fromJsonString(AuditEventSchema, row.event_json),
        recordedAt: timestampFromMs(row.recorded_ms),
        prevHash: row.prev_hash,
        hash: row.hash,
        keyId: row.key_id,
        signature: row.signature,
      }),
    );
  }

  /** Up to `limit` raw rows with a sequence above `afterSequence`, in sequence order. */
  rows(afterSequence: bigint, limit: number): IndexRow[] {
    return this.db
      .prepare("SELECT * FROM records WHERE seq > ? ORDER BY seq LIMIT ?")
      .all(afterSequence, limit) as IndexRow[];
  }

  /** Closes the database. */
  close(): void {
    this.db.close();
  }
}
