#!/usr/bin/env node
import { parseArgs, type ParseArgsConfig } from "node:util";
import { parseDuration } from "./duration.js";
import { ApiError, callApi } from "./http-api.js";
import { up } from "./up.js";

const USAGE = `nearhub — GitHub and AI model hubs, brought near the teams that use them

Usage:
  nearhub up [--data DIR] [--port N]           run everything on this machine (Ctrl-C stops)
  nearhub mirror add <upstream/owner/repo> [--interval 5m] [--refs heads,tags|all] [--lfs]
  nearhub mirror list [--prefix P] [--json]
  nearhub mirror show <name> [--json]
  nearhub mirror remove <name>
  nearhub search <query> [--kind repo|model|dataset] [--limit N] [--json]
  nearhub health [--json]

Options for every command but up:
  --url URL     the edge to talk to (default $NEARHUB_URL or http://127.0.0.1:8080)
`;

/** A usage error: exit code 2 with the message and a pointer to --help. */
class UsageError extends Error {}

function parse<O extends NonNullable<ParseArgsConfig["options"]>>(args: string[], options: O) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

function print(json: boolean, value: unknown, text: () => string): void {
  process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : `${text()}\n`);
}

interface MirrorJson {
  name: string;
  state?: string;
  intervalSeconds?: number;
  refs?: string;
  lfs?: boolean;
  lastSuccessAt?: string;
  lastError?: string;
}

function mirrorLine(m: MirrorJson): string {
  const state = (m.state ?? "MIRROR_STATE_PENDING").replace("MIRROR_STATE_", "").toLowerCase();
  return `${m.name.padEnd(48)} ${state.padEnd(9)} every ${m.intervalSeconds ?? 300}s  refs ${m.refs ?? "heads,tags"}${m.lfs ? "  lfs" : ""}${m.lastError ? `  last error: ${m.lastError}` : ""}`;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const url = process.env["NEARHUB_URL"] ?? "http://127.0.0.1:8080";
  switch (command) {
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(USAGE);
      return 0;
    case "up": {
      const { values, positionals } = parse(rest, {
        data: { type: "string" },
        port: { type: "string" },
        "ready-timeout": { type: "string" },
      });
      if (positionals.length > 0) throw new UsageError(`up takes no arguments; got ${positionals.join(" ")}`);
      const port = Number(values.port ?? "8080");
      if (!Number.isInteger(port) || port < 0 || port > 65535) {
        throw new UsageError(`--port ${values.port ?? ""} must be a whole number from 0 to 65535`);
      }
      const readyTimeoutS = parseDuration(values["ready-timeout"] ?? "60s");
      return up({ dataDir: values.data ?? ".nearhub", httpPort: port, readyTimeoutS, env: process.env });
    }
    case "mirror": {
      const [sub, ...args] = rest;
      const { values, positionals } = parse(args, {
        url: { type: "string" },
        interval: { type: "string" },
        refs: { type: "string" },
        lfs: { type: "boolean" },
        prefix: { type: "string" },
        json: { type: "boolean" },
      });
      const base = values.url ?? url;
      const name = positionals[0];
      const needName = () => {
        if (!name) throw new UsageError(`mirror ${sub ?? ""} needs a name such as github.com/owner/repo`);
        return name;
      };
      switch (sub) {
        case "add": {
          const interval = values.interval ? parseDuration(values.interval) : 0;
          const result = (await callApi(base, "POST", "/api/mirrors", {
            name: needName(),
            interval_seconds: interval,
            ...(values.refs ? { refs: values.refs } : {}),
            lfs: values.lfs ?? false,
          })) as { mirror: MirrorJson; created: boolean };
          print(
            values.json ?? false,
            result,
            () => `${result.created ? "added" : "already mirrored"}: ${mirrorLine(result.mirror)}`,
          );
          return 0;
        }
        case "list": {
          const query = values.prefix ? `?prefix=${encodeURIComponent(values.prefix)}` : "";
          const result = (await callApi(base, "GET", `/api/mirrors${query}`)) as { mirrors: MirrorJson[] };
          print(values.json ?? false, result, () =>
            result.mirrors.length === 0
              ? "no mirrors yet; add one with: nearhub mirror add github.com/owner/repo"
              : result.mirrors.map(mirrorLine).join("\n"),
          );
          return 0;
        }
        case "show": {
          const result = (await callApi(base, "GET", `/api/mirrors/${needName()}`)) as { mirror: MirrorJson };
          print(values.json ?? false, result, () => mirrorLine(result.mirror));
          return 0;
        }
        case "remove": {
          await callApi(base, "DELETE", `/api/mirrors/${needName()}`);
          process.stdout.write(`removed ${name ?? ""}\n`);
          return 0;
        }
        default:
          throw new UsageError(`unknown mirror command ${JSON.stringify(sub ?? "")}; use add, list, show or remove`);
      }
    }
    case "search": {
      const { values, positionals } = parse(rest, {
        url: { type: "string" },
        kind: { type: "string" },
        limit: { type: "string" },
        json: { type: "boolean" },
      });
      const params = new URLSearchParams({ q: positionals.join(" ") });
      if (values.kind) params.set("kind", values.kind);
      if (values.limit) params.set("limit", values.limit);
      const result = (await callApi(values.url ?? url, "GET", `/api/search?${params.toString()}`)) as {
        hits?: Array<{ id: string; kind?: string; description?: string }>;
        total?: string;
      };
      const hits = result.hits ?? [];
      print(values.json ?? false, result, () =>
        hits.length === 0
          ? "no matches"
          : hits
              .map(
                (h) =>
                  `${(h.kind ?? "").replace("DOCUMENT_KIND_", "").toLowerCase().padEnd(9)} ${h.id}  ${h.description ?? ""}`,
              )
              .join("\n"),
      );
      return 0;
    }
    case "health": {
      const { values } = parse(rest, { url: { type: "string" }, json: { type: "boolean" } });
      let result: { status: string; services: Record<string, string> };
      try {
        result = (await callApi(values.url ?? url, "GET", "/healthz")) as typeof result;
      } catch (error) {
        if (error instanceof ApiError && error.status === 503) {
          process.stdout.write(`NOT_SERVING: ${error.message}\n`);
          return 1;
        }
        throw error;
      }
      print(values.json ?? false, result, () =>
        Object.entries(result.services)
          .map(([name, state]) => `${name.padEnd(18)} ${state}`)
          .join("\n"),
      );
      return 0;
    }
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    if (error instanceof UsageError) {
      process.stderr.write(`nearhub: ${error.message}\nRun 'nearhub --help' for usage.\n`);
      process.exit(2);
    }
    process.stderr.write(`nearhub: ${(error as Error).message}\n`);
    process.exit(1);
  },
);
