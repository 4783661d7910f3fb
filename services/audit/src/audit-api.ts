import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, type ServiceImpl } from "@nearhub/platform";
import { type AuditService } from "@nearhub/proto/audit";
import type { RecordIndex } from "./record-index.js";

const MAX_PAGE = 1000;

/** nearhub.audit.v1.AuditService over the record index. */
export function auditApi(index: RecordIndex): ServiceImpl<typeof AuditService> {
  return {
    async queryRecords(request) {
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
      const since = request.since ? timestampMs(request.since) : undefined;
      const until = request.until ? timestampMs(request.until) : undefined;
      if (since !== undefined && until !== undefined && since >= until) {
        throw new NearhubError(Code.InvalidArgument, "since must be before until");
      }
      const limit = request.pageSize || 100;
      const records = index.query({
        actor: request.actor,
        action: request.action,
        resource: request.resource,
        ...(since !== undefined ? { sinceMs: since } : {}),
        ...(until !== undefined ? { untilMs: until } : {}),
        decision: request.decision,
        afterSequence: after,
        limit,
      });
      const last = records.at(-1);
      return { records, nextCursor: records.length === limit && last ? last.sequence.toString() : "" };
    },
  };
}
