/**
 * A local git LFS server speaking the real batch API (download operation, basic transfer):
 * `POST /<owner>/<repo>.git/info/lfs/objects/batch` answers download actions pointing at
 * `GET /lfs-objects/<oid>` with a per-action header (as GitHub's answers carry one), and
 * per-object 404 errors for objects it lacks. Plug `handle` into an HTTP server in front of
 * `git http-backend` (the git origin) so one URL serves both, as real forges do.
 */
import { createHash } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";

/** A running LFS double's state and knobs. */
export interface LfsDouble {
  /** oid → bytes. */
  objects: Map<string, Buffer>;
  /** Requests by kind (`batch`, `download`). */
  requests: Map<string, number>;
  /** Oids whose download sends other bytes (a corrupt upstream). */
  corrupt: Set<string>;
  /** Adds an object, returning its oid. */
  put(bytes: Buffer): string;
  /** Answers LFS requests; false for anything else (let git http-backend have it). */
  handle(req: IncomingMessage, res: ServerResponse, baseUrl: string): boolean;
}

const LFS_JSON = "application/vnd.git-lfs+json";
const ACTION_AUTH = "RemoteAuth double-token";

/** Creates an LFS double (in memory). */
export function createLfsDouble(): LfsDouble {
  const objects = new Map<string, Buffer>();
  const requests = new Map<string, number>();
  const corrupt = new Set<string>();
  const count = (k: string) => requests.set(k, (requests.get(k) ?? 0) + 1);
  const send = (res: ServerResponse, status: number, body: unknown) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { "content-type": LFS_JSON, "content-length": Buffer.byteLength(text) });
    res.end(text);
  };
  return {
    objects,
    requests,
    corrupt,
    put(bytes) {
      const oid = createHash("sha256").update(bytes).digest("hex");
      objects.set(oid, bytes);
      return oid;
    },
    handle(req, res, baseUrl) {
      const url = new URL(req.url ?? "/", "http://double.invalid");
      if (req.method === "POST" && /\/info\/lfs\/objects\/batch$/.test(url.pathname)) {
        count("batch");
        const chunks: Buffer[] = [];
        req.on("data", (c: Buffer) => chunks.push(c));
        req.on("end", () => {
          let body: { operation?: string; objects?: { oid: string; size: number }[] };
          try {
            body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as typeof body;
          } catch {
            return send(res, 400, { message: "not JSON" });
          }
          if (!String(req.headers["accept"] ?? "").includes(LFS_JSON)) return send(res, 406, { message: "Accept" });
          if (body.operation !== "download") return send(res, 403, { message: "this double serves downloads" });
          send(res, 200, {
            transfer: "basic",
            hash_algo: "sha256",
            objects: (body.objects ?? []).map(({ oid, size }) =>
              objects.has(oid)
                ? {
                    oid,
                    size,
                    actions: {
                      download: { href: `${baseUrl}/lfs-objects/${oid}`, header: { Authorization: ACTION_AUTH } },
                    },
                  }
                : { oid, size, error: { code: 404, message: "Object does not exist" } },
            ),
          });
        });
        return true;
      }
      const m = /^\/lfs-objects\/([0-9a-f]{64})$/.exec(url.pathname);
      if (req.method === "GET" && m) {
        count("download");
        const oid = m[1] ?? "";
        const bytes = objects.get(oid);
        if (req.headers["authorization"] !== ACTION_AUTH) {
          res.writeHead(401).end("the action's header was not sent");
          return true;
        }
        if (!bytes) {
          res.writeHead(404).end("no such object");
          return true;
        }
        const out = corrupt.has(oid) ? Buffer.from(bytes).fill(0x41) : bytes;
        res.writeHead(200, { "content-type": "application/octet-stream", "content-length": out.length });
        res.end(out);
        return true;
      }
      return false;
    },
  };
}
