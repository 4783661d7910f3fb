import type { KeyObject } from "node:crypto";
import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, type ServiceImpl } from "@nearhub/platform";
import type { AuditService } from "@nearhub/proto/audit";
import { verifyTrail } from "./chain.js";
import { IndexCheck } from "./index-check.js";
import type { RecordIndex } from "./record-index.js";
import type { Recorder } from "./recorder.js";
import type { AuditTrail } from "./trail.js";

const MAX_PAGE = 1000;

/** What the AuditService implementation needs. */
export interface AuditApiDeps {
  index: RecordIndex;
  trail: AuditTrail;
  recorder: Recorder;
  /** Keys whose records and checkpoints are trusted, by key id. */
  trustedKeys: Map<string, KeyObject>;
}

function range(since?: Timestamp, until?: Timestamp) {
  const sinceMs = since ? timestampMs(since) : undefined;
  const untilMs = until ? timestampMs(until) : undefined;
  if (sinceMs !== undefined && untilMs !== undefined && sinceMs >= untilMs) {
    throw new NearhubError(Code.InvalidArgument, "since must be before until");
  }
  return { ...(sinceMs !== undefined ? { sinceMs } : {}), ...(untilMs !== undefined ? { untilMs } : {}) };
}

/** nearhub.audit.v1.AuditService: query, verify, export. */
export function auditApi({ index, trail, recorder, trustedKeys }: AuditApiDeps): ServiceImpl<typeof AuditService> {
  return {
    async queryRecords(request, ctx) {
      await ctx.authorize("audit.read", "audit");
      if (request.pageSize > MAX_PAGE) {
        throw new NearhubError(
          Code.InvalidArgument,
          `page_size ${request.pageSize} is above the maximum of ${MAX_PAGE}`,
        );
      }
      let after = 0n;
      if (request.cursor) {
        if (!/^\d{1,19}$/.test(request.cursor)) {
          throw new NearhubError(
            Code.InvalidArgument,
            "cursor is not one this server returned; start again without a cursor",
          );
        }
        after = BigInt(request.cursor);
      }
      const limit = request.pageSize || 100;
      const records = index.query({
        actor: request.actor,
        action: request.action,
        resource: request.resource,
        ...range(request.since, request.until),
        decision: request.decision,
        afterSequence: after,
        limit,
      });
      const last = records.at(-1);
      return { records, nextCursor: records.length === limit && last ? last.sequence.toString() : "" };
    },

    async verifyTrail(request, ctx) {
      await ctx.authorize("audit.read", "audit");
      const end = await recorder.settled();
      if (request.sinceSequence > end.lastSequence + 1n) {
        throw new NearhubError(
          Code.InvalidArgument,
          `since_sequence ${request.sinceSequence} is after the last record (${end.lastSequence}): use a sequence from 1 to ${end.lastSequence}, or 0 for the whole trail`,
        );
      }
      const check = new IndexCheck({
        index,
        sinceSequence: request.sinceSequence,
        indexedThrough: end.lastSequence,
        lookup: (seq) => trail.recordAt(seq),
      });
      const verdict = await verifyTrail(trail.entries(), trustedKeys, request.sinceSequence, check);
      if (!verdict.ok) recorder.verifyFailures.inc();
      return {
        ...verdict,
        recordsChecked: BigInt(verdict.recordsChecked),
        checkpointsChecked: BigInt(verdict.checkpointsChecked),
      };
    },

    async *exportRecords(request, ctx) {
      await ctx.authorize("audit.read", "audit");
      const bounds = range(request.since, request.until);
      let after = 0n;
      for (;;) {
        if (ctx.aborted) return;
        const page = index.query({ ...bounds, afterSequence: after, limit: 500 });
        for (const record of page) yield { record };
        const last = page.at(-1);
        if (!last || page.length < 500) return;
        after = last.sequence;
      }
    },
  };
}
