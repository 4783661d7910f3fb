import { create, toJson, toJsonString } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, sendJson } from "@nearhub/platform";
import {
  AuditRecordSchema,
  Decision,
  QueryRecordsResponseSchema,
  VerifyTrailResponseSchema,
} from "@nearhub/proto/audit";
import type { Backends } from "./backends.js";
import type { Route } from "./router.js";

const DECISIONS: Record<string, Decision> = {
  "": Decision.UNSPECIFIED,
  allow: Decision.ALLOW,
  deny: Decision.DENY,
};

/** `since`/`until` as RFC 3339 or epoch milliseconds. */
function parseTime(name: string, value: string | null) {
  if (!value) return undefined;
  const ms = /^\d{1,15}$/.test(value) ? Number(value) : Date.parse(value);
  if (!Number.isFinite(ms)) {
    throw new NearhubError(
      Code.InvalidArgument,
      `${name} ${JSON.stringify(value.slice(0, 50))} must be an RFC 3339 time (2026-01-31T12:00:00Z) or epoch milliseconds`,
    );
  }
  return timestampFromMs(ms);
}

function filters(url: URL) {
  const decisionParam = url.searchParams.get("decision") ?? "";
  const decision = DECISIONS[decisionParam];
  if (decision === undefined) {
    throw new NearhubError(
      Code.InvalidArgument,
      `decision ${JSON.stringify(decisionParam.slice(0, 20))} must be allow or deny`,
    );
  }
  for (const key of ["actor", "action", "resource"]) {
    if ((url.searchParams.get(key) ?? "").length > 1000)
      throw new NearhubError(Code.InvalidArgument, `${key} is longer than 1000 characters`);
  }
  const since = parseTime("since", url.searchParams.get("since"));
  const until = parseTime("until", url.searchParams.get("until"));
  return {
    actor: url.searchParams.get("actor") ?? "",
    action: url.searchParams.get("action") ?? "",
    resource: url.searchParams.get("resource") ?? "",
    decision,
    ...(since ? { since } : {}),
    ...(until ? { until } : {}),
  };
}

/** The audit trail over HTTP: query, verify and NDJSON export. */
export function auditRoutes(backends: Backends): Route[] {
  return [
    {
      method: "GET",
      pattern: /^\/api\/audit\/records$/,
      template: "/api/audit/records",
      handler: async ({ res, url }) => {
        const limitParam = url.searchParams.get("limit") ?? "100";
        const pageSize = Number(limitParam);
        if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > 1000) {
          throw new NearhubError(
            Code.InvalidArgument,
            `limit ${JSON.stringify(limitParam.slice(0, 20))} must be a whole number from 1 to 1000`,
          );
        }
        const response = await backends.audit.queryRecords({
          ...filters(url),
          pageSize,
          cursor: url.searchParams.get("cursor") ?? "",
        });
        sendJson(res, 200, toJson(QueryRecordsResponseSchema, response));
      },
    },
    {
      method: "POST",
      pattern: /^\/api\/audit\/verify$/,
      template: "/api/audit/verify",
      handler: async ({ res, url }) => {
        const since = url.searchParams.get("since_sequence") ?? "0";
        if (!/^\d{1,19}$/.test(since))
          throw new NearhubError(Code.InvalidArgument, "since_sequence must be a record sequence number");
        const verdict = await backends.audit.verifyTrail({ sinceSequence: BigInt(since) }, { timeoutMs: 600_000 });
        sendJson(res, 200, toJson(VerifyTrailResponseSchema, verdict));
      },
    },
    {
      method: "GET",
      pattern: /^\/api\/audit\/export$/,
      template: "/api/audit/export",
      handler: async ({ res, url }) => {
        const { since, until } = filters(url);
        const stream = backends.audit.exportRecords(
          { ...(since ? { since } : {}), ...(until ? { until } : {}) },
          { timeoutMs: 3_600_000 },
        );
        const iterator = stream[Symbol.asyncIterator]();
        // Fail with a status while nothing is sent yet; afterwards an error cuts the stream.
        const first = await iterator.next();
        res.writeHead(200, { "content-type": "application/x-ndjson; charset=utf-8" });
        for (let next = first; !next.done; next = await iterator.next()) {
          const record = next.value.record ?? create(AuditRecordSchema);
          if (!res.write(`${toJsonString(AuditRecordSchema, record)}\n`))
            await new Promise((r) => res.once("drain", r));
        }
        res.end();
      },
    },
  ];
}
