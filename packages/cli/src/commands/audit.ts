import { createWriteStream } from "node:fs";
import { parse, print, UsageError, type Command } from "../command.js";
import { ApiError, authHeaders, callApi } from "../http-api.js";

interface RecordJson {
  sequence: string;
  recordedAt?: string;
  event?: { actor?: string; action?: string; resource?: string; decision?: string; outcome?: string; service?: string };
}

function recordLine(r: RecordJson): string {
  const e = r.event ?? {};
  const decision = (e.decision ?? "").replace("DECISION_", "").toLowerCase();
  return `${r.sequence.padStart(8)}  ${r.recordedAt ?? ""}  ${(e.actor ?? "").padEnd(24)} ${(e.action ?? "").padEnd(18)} ${decision.padEnd(5)} ${e.resource ?? ""}`;
}

/** `nearhub audit query|verify|export`: the audit trail, through the edge. */
export const auditCommand: Command = {
  name: "audit",
  usage: [
    "nearhub audit query [--actor A] [--action X] [--resource PREFIX] [--since T] [--until T] [--decision allow|deny] [--limit N] [--json]",
    "nearhub audit verify [--since-sequence N] [--json]",
    "nearhub audit export [--since T] [--until T] [--out FILE]   NDJSON for a SIEM",
  ],
  async run(rest, ctx) {
    const [sub, ...args] = rest;
    const { values, positionals } = parse(args, {
      url: { type: "string" },
      actor: { type: "string" },
      action: { type: "string" },
      resource: { type: "string" },
      since: { type: "string" },
      until: { type: "string" },
      decision: { type: "string" },
      limit: { type: "string" },
      "since-sequence": { type: "string" },
      out: { type: "string" },
      json: { type: "boolean" },
    });
    if (positionals.length > 0)
      throw new UsageError(`audit ${sub ?? ""} takes options only; got ${positionals.join(" ")}`);
    const base = values.url ?? ctx.defaultUrl;
    const params = new URLSearchParams();
    for (const key of ["actor", "action", "resource", "since", "until", "decision", "limit"] as const) {
      const value = values[key];
      if (value) params.set(key, value);
    }
    switch (sub) {
      case "query": {
        const records: RecordJson[] = [];
        let cursor = "";
        do {
          if (cursor) params.set("cursor", cursor);
          const page = (await callApi(base, "GET", `/api/audit/records?${params.toString()}`)) as {
            records?: RecordJson[];
            nextCursor?: string;
          };
          records.push(...(page.records ?? []));
          cursor = values.limit ? "" : (page.nextCursor ?? "");
        } while (cursor);
        print(values.json ?? false, { records }, () =>
          records.length === 0 ? "no matching records" : records.map(recordLine).join("\n"),
        );
        return 0;
      }
      case "verify": {
        const since = values["since-sequence"] ?? "0";
        const verdict = (await callApi(
          base,
          "POST",
          `/api/audit/verify?since_sequence=${encodeURIComponent(since)}`,
          undefined,
          // Verification reads the whole trail: minutes on a large one, as the edge allows.
          600_000,
        )) as {
          ok?: boolean;
          recordsChecked?: string;
          checkpointsChecked?: string;
          firstBrokenSequence?: string;
          problem?: string;
        };
        print(values.json ?? false, verdict, () =>
          verdict.ok
            ? `trail intact: ${verdict.recordsChecked ?? 0} records and ${verdict.checkpointsChecked ?? 0} signed checkpoints verified`
            : `TRAIL BROKEN at record ${verdict.firstBrokenSequence ?? "?"}: ${verdict.problem ?? ""}`,
        );
        return verdict.ok ? 0 : 3;
      }
      case "export": {
        const url = new URL(`/api/audit/export?${params.toString()}`, base);
        let response: Response;
        try {
          response = await fetch(url, { headers: authHeaders() });
        } catch (error) {
          throw new ApiError(
            0,
            `cannot reach nearhub at ${base} (${(error as Error).message}); start it with 'nearhub up' or pass --url`,
          );
        }
        if (!response.ok || !response.body) {
          const body = (await response.json().catch(() => ({}))) as { error?: string };
          throw new ApiError(response.status, body.error ?? `HTTP ${response.status}`);
        }
        const out: NodeJS.WritableStream = values.out ? createWriteStream(values.out) : process.stdout;
        let lines = 0;
        for await (const chunk of response.body) {
          const buffer = Buffer.from(chunk as Uint8Array);
          for (const byte of buffer) if (byte === 10) lines++;
          if (!out.write(buffer)) await new Promise<void>((resolve) => out.once("drain", () => resolve()));
        }
        if (values.out) {
          await new Promise<void>((resolve, reject) =>
            (out as ReturnType<typeof createWriteStream>).end((e?: Error) => (e ? reject(e) : resolve())),
          );
          process.stderr.write(`exported ${lines} records to ${values.out}\n`);
        }
        return 0;
      }
      default:
        throw new UsageError(`unknown audit command ${JSON.stringify(sub ?? "")}; use query, verify or export`);
    }
  },
};
