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

/**
 * The query index of the audit trail (SQLite, WAL): a copy of the trail stream's records, kept
 * in step by the recorder and rebuilt from the stream when lost. Indexed by actor, action,
 * resource prefix, time and decision.
 */
export class RecordIndex {
  private readonly db: Database.Database;

  constructor(path: string) {
    if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = FULL");
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
        event_json TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS records_actor ON records(actor, seq);
      CREATE INDEX IF NOT EXISTS records_action ON records(action, seq);
      CREATE INDEX IF NOT EXISTS records_time ON records(time_ms);
    `);
  }

  /** True when the event is already in the trail. */
  has(eventId: string): boolean {
    return this.db.prepare("SELECT 1 FROM records WHERE event_id = ?").get(eventId) !== undefined;
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
    const result = this.db
      .prepare(
        `INSERT OR IGNORE INTO records (seq, event_id, trail_seq, prev_hash, hash, time_ms, actor, action, resource, decision, recorded_ms, event_json)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
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
      );
    return result.changes > 0;
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
        `SELECT seq, recorded_ms, event_json FROM records WHERE ${where.join(" AND ")} ORDER BY seq LIMIT @limit`,
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
      }) as Array<{ seq: number; recorded_ms: number; event_json: string; prev_hash: string; hash: string }>;
    return rows.map((row) =>
      create(AuditRecordSchema, {
        sequence: BigInt(row.seq),
        event: fromJsonString(AuditEventSchema, row.event_json),
        recordedAt: timestampFromMs(row.recorded_ms),
        prevHash: row.prev_hash,
        hash: row.hash,
      }),
    );
  }

  close(): void {
    this.db.close();
  }
}
