import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import Database from "better-sqlite3";
import {
  AuditEventSchema,
  AuditRecordSchema,
  type Decision,
  type AuditEvent,
  type AuditRecord,
} from "@nearhub/proto/audit";

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
 * The query index of the audit trail (SQLite, WAL). Recording is idempotent by event id, so a
 * redelivered event is recorded once; sequence numbers are assigned in arrival order.
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
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
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

  /** Records an event; false when it was already recorded. */
  record(event: AuditEvent, recordedMs = Date.now()): boolean {
    const result = this.db
      .prepare(
        `INSERT OR IGNORE INTO records (event_id, time_ms, actor, action, resource, decision, recorded_ms, event_json)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        event.id,
        event.time ? timestampDate(event.time).getTime() : recordedMs,
        event.actor,
        event.action,
        event.resource,
        event.decision,
        recordedMs,
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
      }) as Array<{ seq: number; recorded_ms: number; event_json: string }>;
    return rows.map((row) =>
      create(AuditRecordSchema, {
        sequence: BigInt(row.seq),
        event: fromJsonString(AuditEventSchema, row.event_json),
        recordedAt: timestampFromMs(row.recorded_ms),
      }),
    );
  }

  close(): void {
    this.db.close();
  }
}
