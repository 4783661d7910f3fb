import { createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { toJson } from "@bufbuild/protobuf";
import { Code, NearhubError, asService, sendJson, type Logger } from "@nearhub/platform";
import { MirrorSchema } from "@nearhub/proto/sync";
import type { Backends } from "./backends.js";
import type { EdgeConfig } from "./config.js";
import { HttpError, readJson, type Route } from "./router.js";

const MAX_WEBHOOK_BYTES = 25 * 1024 * 1024;

/** Verifies GitHub's `X-Hub-Signature-256: sha256=<hex>` over the raw body in constant time. */
export function validGithubSignature(secret: string, body: Buffer, header: string | undefined): boolean {
  if (!header?.startsWith("sha256=")) return false;
  const given = Buffer.from(header.slice(7), "hex");
  const expected = createHmac("sha256", secret).update(body).digest();
  return given.length === expected.length && timingSafeEqual(given, expected);
}

async function readRaw(req: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new HttpError(413, Code.ResourceExhausted, `the body is larger than ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/**
 * Mirror operations beyond add/list/show/remove: `POST /api/mirrors/{name}/sync` (`?wait=1`
 * to answer once a fresh sync ended), `…/pause`, `…/resume`, and GitHub's push webhook at
 * `POST /hooks/github`, which queues a sync of the pushed repository.
 */
export function gitMirrorRoutes(deps: { backends: Backends; config: EdgeConfig; logger: Logger }): Route[] {
  const { backends, config } = deps;
  const log = deps.logger.child({ component: "webhook" });
  return [
    {
      method: "POST",
      pattern: /^\/api\/mirrors\/(?<name>.+)\/(?<action>sync|pause|resume)$/,
      template: "/api/mirrors/{name}/{action}",
      handler: async ({ req, res, url, params }) => {
        const name = params["name"] ?? "";
        const action = params["action"];
        if (action === "sync") {
          req.resume();
          const wait = ["1", "true", "yes"].includes(url.searchParams.get("wait") ?? "");
          const timeoutParam = url.searchParams.get("timeout") ?? "600";
          const timeout = Number(timeoutParam);
          if (!Number.isInteger(timeout) || timeout < 1 || timeout > 3600) {
            throw new NearhubError(
              Code.InvalidArgument,
              `timeout ${JSON.stringify(timeoutParam.slice(0, 20))} must be whole seconds from 1 to 3600`,
            );
          }
          const { mirror, finished } = await backends.sync.syncMirror(
            { name, wait, timeoutSeconds: timeout, reason: "manual" },
            { timeoutMs: (timeout + 10) * 1000 },
          );
          sendJson(res, wait && !finished ? 504 : 202, {
            mirror: mirror ? toJson(MirrorSchema, mirror) : null,
            finished,
            ...(wait && !finished
              ? { error: `no sync finished within ${timeout}s; it goes on in the background` }
              : {}),
          });
          return;
        }
        if (action === "pause") {
          let reason = "";
          if (Number(req.headers["content-length"] ?? 0) > 0) {
            const body = (await readJson(req)) as { reason?: unknown };
            if (body.reason !== undefined && typeof body.reason !== "string") {
              throw new NearhubError(Code.InvalidArgument, "reason must be a string");
            }
            reason = body.reason ?? "";
          } else req.resume();
          const { mirror } = await backends.sync.pauseMirror({ name, reason });
          sendJson(res, 200, { mirror: mirror ? toJson(MirrorSchema, mirror) : null });
          return;
        }
        req.resume();
        const { mirror } = await backends.sync.resumeMirror({ name });
        sendJson(res, 200, { mirror: mirror ? toJson(MirrorSchema, mirror) : null });
      },
    },
    {
      method: "POST",
      pattern: /^\/hooks\/github$/,
      template: "/hooks/github",
      handler: async ({ req, res }) => {
        const secret = config.NEARHUB_GITHUB_WEBHOOK_SECRET;
        if (!secret) {
          req.resume();
          throw new HttpError(
            403,
            Code.PermissionDenied,
            "GitHub webhooks are off: set NEARHUB_GITHUB_WEBHOOK_SECRET on the edge and in the webhook's settings",
          );
        }
        const body = await readRaw(req, MAX_WEBHOOK_BYTES);
        const signature = req.headers["x-hub-signature-256"];
        if (!validGithubSignature(secret, body, typeof signature === "string" ? signature : undefined)) {
          log.warn("webhook with a missing or wrong signature refused", { remote: req.socket.remoteAddress });
          throw new HttpError(
            401,
            Code.Unauthenticated,
            "X-Hub-Signature-256 is missing or does not match the configured secret",
          );
        }
        const event = String(req.headers["x-github-event"] ?? "");
        if (event === "ping") return sendJson(res, 200, { ok: true });
        if (event !== "push")
          return sendJson(res, 202, { ignored: `event ${event.slice(0, 50)} does not change refs` });
        let payload: { repository?: { full_name?: unknown } };
        try {
          payload = JSON.parse(body.toString("utf8")) as typeof payload;
        } catch {
          throw new NearhubError(
            Code.InvalidArgument,
            "the push payload is not JSON; set the webhook's content type to application/json",
          );
        }
        const fullName = payload.repository?.full_name;
        if (typeof fullName !== "string" || !/^[^/]+\/[^/]+$/.test(fullName)) {
          throw new NearhubError(
            Code.InvalidArgument,
            "the push payload has no repository.full_name of the form owner/repo",
          );
        }
        const name = `${config.NEARHUB_GITHUB_WEBHOOK_UPSTREAM}/${fullName}`;
        // The signature proved GitHub sent it: queue the sync as edge itself.
        await asService(() => backends.sync.syncMirror({ name, reason: "webhook" }));
        log.info("webhook queued a sync", { mirror: name });
        sendJson(res, 202, { queued: name });
      },
    },
  ];
}
