import type { IncomingMessage, ServerResponse } from "node:http";
import { Counter } from "prom-client";
import { Code, NearhubError, type Logger, type ServiceMetrics } from "@nearhub/platform";
import type { Backends } from "./backends.js";
import type { EdgeConfig } from "./config.js";
import { checkRepoName } from "./git-http.js";
import { parseRange } from "./hf-routes.js";
import type { Route } from "./router.js";

const REPO = String.raw`^\/(?<name>[^/]+\/[^/]+\/[^/]+?)(?:\.git)?`;
const LFS_JSON = "application/vnd.git-lfs+json";
const OID = /^[0-9a-f]{64}$/;
/** Objects one batch request may name (git-lfs sends 100 by default, `lfs.transfer.batchSize`). */
export const MAX_BATCH_OBJECTS = 1000;
const MAX_BATCH_BYTES = 256 * 1024;
const HOST = /^[A-Za-z0-9.-]{1,253}(:\d{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?$/;

/** An LFS API error: the status, and `message` as git-lfs prints it. */
class LfsError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function sendLfs(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": LFS_JSON,
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-cache",
  });
  res.end(text);
}

async function readLimited(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"] ?? 0);
  const tooBig = () =>
    new LfsError(
      413,
      `the batch request is larger than ${limit} bytes; send at most ${MAX_BATCH_OBJECTS} objects per request`,
    );
  if (declared > limit) {
    req.resume();
    throw tooBig();
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) {
      req.resume();
      throw tooBig();
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/**
 * The git LFS API of mirrors at the edge (download only): `POST …/info/lfs/objects/batch`
 * answers download actions pointing back at the edge for the objects the mirror's history
 * references (others get a per-object 404), and `GET …/info/lfs/objects/<oid>` streams the
 * object from storage, with ranges. Uploads are refused with 403: mirrors are read-only.
 */
export function gitLfsRoutes(deps: {
  backends: Backends;
  config: EdgeConfig;
  metrics: ServiceMetrics;
  logger: Logger;
}): Route[] {
  const { backends, config } = deps;
  const requests = new Counter({
    name: "nearhub_edge_lfs_requests_total",
    help: "Git LFS requests at the edge by kind (batch, download, other) and outcome",
    labelNames: ["kind", "outcome"],
    registers: [deps.metrics.registry],
  });
  const served = new Counter({
    name: "nearhub_edge_lfs_bytes_total",
    help: "Bytes of LFS objects served by the edge",
    registers: [deps.metrics.registry],
  });

  /** The mirror's LFS objects among `oids` (oid → size); throws 404 when the repository is not mirrored. */
  const lookup = async (name: string, oids: string[]): Promise<{ lfs: boolean; objects: Map<string, number> }> => {
    const payload = Buffer.from(JSON.stringify({ oids }));
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = backends.syncGit.request(
        {
          method: "POST",
          path: `/git/${name}/lfs-objects`,
          headers: {
            ...backends.identity(),
            "content-type": "application/json",
            "content-length": String(payload.length),
          },
          timeout: 30_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => resolve({ status: res.statusCode ?? 502, text: Buffer.concat(chunks).toString("utf8") }));
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error("no answer within 30s")));
      req.on("error", (error) =>
        reject(
          new NearhubError(
            Code.Unavailable,
            `the sync service's git endpoint at ${config.NEARHUB_SYNC_GIT_URL} is unreachable: ${error.message}`,
          ),
        ),
      );
      req.end(payload);
    });
    let body: { lfs?: boolean; objects?: Record<string, number>; error?: string } = {};
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      // an answer without JSON: its status says enough
    }
    if (status === 404)
      throw new LfsError(
        404,
        `${name} is not mirrored here; ask an administrator to run: nearhub mirror add ${name} --lfs`,
      );
    if (status === 401 || status === 403) throw new LfsError(403, body.error ?? `reading ${name} is not allowed`);
    if (status !== 200)
      throw new LfsError(status >= 500 ? 502 : 400, body.error ?? `the sync service answered ${status}`);
    return { lfs: body.lfs === true, objects: new Map(Object.entries(body.objects ?? {})) };
  };

  const guard =
    (
      kind: string,
      handler: (ctx: { req: IncomingMessage; res: ServerResponse; name: string; oid?: string }) => Promise<void>,
    ) =>
    async ({ req, res, params }: { req: IncomingMessage; res: ServerResponse; params: Record<string, string> }) => {
      try {
        const name = checkRepoName(params["name"] ?? "");
        await handler({ req, res, name, ...(params["oid"] !== undefined ? { oid: params["oid"] } : {}) });
        requests.inc({ kind, outcome: "ok" });
      } catch (error) {
        req.resume();
        if (res.headersSent) {
          res.destroy();
          return;
        }
        if (error instanceof LfsError) {
          requests.inc({ kind, outcome: String(error.status) });
          return sendLfs(res, error.status, { message: error.message });
        }
        const e = NearhubError.from(error);
        const status = e.code === Code.InvalidArgument ? 400 : e.code === Code.Unavailable ? 503 : 500;
        requests.inc({ kind, outcome: String(status) });
        sendLfs(res, status, { message: e.rawMessage });
      }
    };

  return [
    {
      method: "POST",
      pattern: new RegExp(`${REPO}\\/info\\/lfs\\/objects\\/batch$`),
      template: "/{repo}/info/lfs/objects/batch",
      access: ({ params }) => ({ permission: "read", resource: checkRepoName(params["name"] ?? "") }),
      handler: guard("batch", async ({ req, res, name }) => {
        const accept = String(req.headers["accept"] ?? LFS_JSON);
        if (!/application\/vnd\.git-lfs\+json|application\/json|\*\/\*/.test(accept)) {
          throw new LfsError(406, `send Accept: ${LFS_JSON}`);
        }
        const raw = await readLimited(req, MAX_BATCH_BYTES);
        let body: { operation?: unknown; objects?: unknown; hash_algo?: unknown; transfers?: unknown };
        try {
          body = JSON.parse(raw.toString("utf8")) as typeof body;
        } catch (error) {
          throw new LfsError(400, `the batch request is not valid JSON: ${(error as Error).message}`);
        }
        if (!body || typeof body !== "object" || Array.isArray(body)) {
          throw new LfsError(422, 'the batch request must be a JSON object: {"operation": "download", "objects": […]}');
        }
        if (body.operation === "upload") {
          throw new LfsError(
            403,
            `${name} is a read-only mirror: push LFS objects to the upstream repository, and they will be mirrored here`,
          );
        }
        if (body.operation !== "download") {
          throw new LfsError(422, 'operation must be "download" (or "upload", which a mirror refuses)');
        }
        if (body.hash_algo !== undefined && body.hash_algo !== "sha256") {
          throw new LfsError(
            409,
            `hash_algo ${JSON.stringify(body.hash_algo).slice(0, 30)} is not supported; use sha256`,
          );
        }
        if (Array.isArray(body.transfers) && !body.transfers.includes("basic")) {
          throw new LfsError(422, 'this server speaks the "basic" transfer adapter only');
        }
        if (!Array.isArray(body.objects) || body.objects.length === 0) {
          throw new LfsError(422, "objects must be a non-empty list of {oid, size}");
        }
        if (body.objects.length > MAX_BATCH_OBJECTS) {
          throw new LfsError(
            413,
            `at most ${MAX_BATCH_OBJECTS} objects per batch request; this one has ${body.objects.length}`,
          );
        }
        const wanted: { oid: string; size: number }[] = [];
        for (const [i, o] of (body.objects as unknown[]).entries()) {
          const { oid, size } = (o ?? {}) as { oid?: unknown; size?: unknown };
          if (typeof oid !== "string" || !OID.test(oid)) {
            throw new LfsError(
              422,
              `objects[${i}].oid ${JSON.stringify(String(oid).slice(0, 80))} is not a sha256 digest (64 lowercase hex)`,
            );
          }
          if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
            throw new LfsError(422, `objects[${i}].size must be a non-negative whole number of bytes`);
          }
          wanted.push({ oid, size });
        }
        const host = String(req.headers["host"] ?? "");
        if (!HOST.test(host)) throw new LfsError(400, "the Host header is missing or malformed");
        const proto = req.headers["x-forwarded-proto"] === "https" ? "https" : "http";
        const known = await lookup(
          name,
          wanted.map((w) => w.oid),
        );
        const present = new Set(
          known.objects.size > 0
            ? (await backends.storage.hasBlobs({ sha256: [...known.objects.keys()] })).present
            : [],
        );
        const objects = wanted.map(({ oid, size }) => {
          const stored = known.objects.get(oid);
          if (stored === undefined || !present.has(oid)) {
            return {
              oid,
              size,
              error: {
                code: 404,
                message: known.lfs
                  ? `Object does not exist: ${oid} is not referenced by ${name} as mirrored`
                  : `Object does not exist: ${name} is not mirrored with LFS; ask an administrator to run: nearhub mirror add ${name} --lfs`,
              },
            };
          }
          return {
            oid,
            size: stored,
            authenticated: true,
            actions: {
              download: { href: `${proto}://${host}/${name}.git/info/lfs/objects/${oid}`, expires_in: 3600 },
            },
          };
        });
        sendLfs(res, 200, { transfer: "basic", objects, hash_algo: "sha256" });
      }),
    },
    {
      method: "GET",
      pattern: new RegExp(`${REPO}\\/info\\/lfs\\/objects\\/(?<oid>[^/]+)$`),
      template: "/{repo}/info/lfs/objects/{oid}",
      access: ({ params }) => ({ permission: "read", resource: checkRepoName(params["name"] ?? "") }),
      handler: guard("download", async ({ req, res, name, oid = "" }) => {
        if (!OID.test(oid)) {
          throw new LfsError(
            400,
            `${JSON.stringify(oid.slice(0, 80))} is not an LFS oid (a sha256 digest, 64 lowercase hex)`,
          );
        }
        const known = await lookup(name, [oid]);
        const size = known.objects.get(oid);
        if (size === undefined) throw new LfsError(404, `Object does not exist: ${oid} is not referenced by ${name}`);
        let start = 0;
        let end = size - 1;
        const range = req.headers.range;
        if (range) {
          const r = parseRange(range, size);
          if (r === "unsatisfiable") {
            res.writeHead(416, { "content-range": `bytes */${size}`, "content-type": "text/plain" });
            res.end(`the range ${range.slice(0, 60)} is outside the object's ${size} bytes\n`);
            return;
          }
          ({ start, end } = r);
        }
        const length = Math.max(0, end - start + 1);
        const stream = backends.storage.getBlob(
          { sha256: oid, offset: BigInt(start), length: BigInt(length) },
          { timeoutMs: 6 * 3600_000 },
        );
        const iterator = stream[Symbol.asyncIterator]();
        // The first message proves storage has the blob before a status is sent.
        const first = length > 0 ? await iterator.next() : undefined;
        res.writeHead(range ? 206 : 200, {
          "content-type": "application/octet-stream",
          "content-length": String(length),
          "accept-ranges": "bytes",
          etag: `"${oid}"`,
          ...(range ? { "content-range": `bytes ${start}-${end}/${size}` } : {}),
        });
        if (req.method === "HEAD" || length === 0) {
          res.end();
          return;
        }
        const write = async (chunk: Uint8Array) => {
          served.inc(chunk.byteLength);
          if (!res.write(chunk)) await new Promise((r) => res.once("drain", r));
        };
        if (first && !first.done) await write(first.value.chunk);
        for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
          if (res.destroyed) break;
          await write(next.value.chunk);
        }
        res.end();
      }),
    },
    {
      method: "POST",
      pattern: new RegExp(`${REPO}\\/info\\/lfs\\/(?!objects\\/batch$).*$`),
      template: "/{repo}/info/lfs/{other}",
      handler: guard("other", ({ name }) => {
        throw new LfsError(
          403,
          `${name} is a read-only mirror: the LFS API here serves downloads only (objects/batch with operation download)`,
        );
      }),
    },
  ];
}
