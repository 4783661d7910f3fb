import { fromJsonString } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { AuditEventSchema, type AuditRecord } from "@nearhub/proto/audit";
import { canonicalEvent, type RecordWitness, type WitnessBreak } from "./chain.js";
import type { IndexRow, RecordIndex } from "./record-index.js";

const PAGE = 1000;

/** Reads one record of the trail by stream sequence (undefined when there is none). */
export type TrailLookup = (streamSeq: number) => Promise<AuditRecord | undefined>;

/** Options of {@link IndexCheck}. */
export interface IndexCheckOptions {
  index: RecordIndex;
  /** Rows from this sequence on are checked (0 or 1: all). */
  sinceSequence: bigint;
  /**
   * The last record the recorder had both appended and indexed when the check began: a later
   * trail record may not be indexed yet, so its absence is no fault.
   */
  indexedThrough: bigint;
  /** For rows beyond `indexedThrough`: they must be copies of trail records written since. */
  lookup: TrailLookup;
}

const show = (value: string | number | bigint) => {
  const text = String(value);
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text);
};

/**
 * Cross-checks the SQLite query index against the trail while {@link verifyTrail} walks it:
 * every row must be an exact copy of the trail record of its sequence (hash, links, signature,
 * event, and the columns queries filter on), no record may be missing from the index and no
 * row may exist without its record. Queries answer from the index, so an edited row would
 * otherwise lie to every `nearhub audit query` while the trail itself verifies.
 */
export class IndexCheck implements RecordWitness {
  private page: IndexRow[] = [];
  private position = 0;
  private after: bigint;
  private exhausted = false;

  constructor(private readonly options: IndexCheckOptions) {
    this.after = options.sinceSequence > 0n ? options.sinceSequence - 1n : 0n;
  }

  private peek(): IndexRow | undefined {
    if (this.position >= this.page.length && !this.exhausted) {
      this.page = this.options.index.rows(this.after, PAGE);
      this.position = 0;
      this.exhausted = this.page.length < PAGE;
      const last = this.page.at(-1);
      if (last) this.after = BigInt(last.seq);
    }
    return this.page[this.position];
  }

  async check(record: AuditRecord, streamSeq: number | undefined): Promise<WitnessBreak | undefined> {
    if (record.sequence > this.options.indexedThrough) return undefined;
    const row = this.peek();
    if (row && BigInt(row.seq) < record.sequence) return extra(row);
    if (!row || BigInt(row.seq) > record.sequence) {
      return {
        sequence: record.sequence,
        problem: `record ${record.sequence} is missing from the query index: queries and exports do not show it (delete the index file to rebuild it from the trail)`,
      };
    }
    this.position++;
    const difference = differences(row, record, streamSeq);
    return difference
      ? {
          sequence: record.sequence,
          problem: `the query index row of record ${record.sequence} was altered: ${difference}`,
        }
      : undefined;
  }

  async finish(): Promise<WitnessBreak | undefined> {
    for (let row = this.peek(); row; row = this.peek()) {
      this.position++;
      if (BigInt(row.seq) <= this.options.indexedThrough) return extra(row);
      // Indexed after the check began: the recorder indexes a record only once the trail holds it.
      const record = await this.options.lookup(row.trail_seq);
      if (!record || record.sequence !== BigInt(row.seq) || record.hash !== row.hash) return extra(row);
    }
    return undefined;
  }
}

function extra(row: IndexRow): WitnessBreak {
  return {
    sequence: BigInt(row.seq),
    problem: `the query index has a row for record ${row.seq} that the trail does not hold: queries show an event that was never recorded`,
  };
}

/** The first column of `row` that is not a copy of `record`, described; undefined when none. */
function differences(row: IndexRow, record: AuditRecord, streamSeq: number | undefined): string | undefined {
  const event = record.event;
  if (!event) return "the trail record has no event";
  const expected: Array<[keyof IndexRow, string | number | bigint]> = [
    ["event_id", event.id],
    ["prev_hash", record.prevHash],
    ["hash", record.hash],
    ["actor", event.actor],
    ["action", event.action],
    ["resource", event.resource],
    ["decision", event.decision],
    ["time_ms", event.time ? timestampMs(event.time) : 0],
    ["recorded_ms", record.recordedAt ? timestampMs(record.recordedAt) : 0],
    ["key_id", record.keyId],
    ["signature", record.signature],
  ];
  if (streamSeq !== undefined) expected.push(["trail_seq", streamSeq]);
  for (const [column, value] of expected) {
    if (String(row[column]) !== String(value)) {
      return `${column} is ${show(row[column])} in the index but ${show(value)} in the trail`;
    }
  }
  let indexed: string;
  try {
    indexed = canonicalEvent(fromJsonString(AuditEventSchema, row.event_json));
  } catch {
    return "event_json is not an audit event";
  }
  return indexed === canonicalEvent(event) ? undefined : "event_json differs from the event in the trail";
}
