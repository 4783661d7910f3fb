import type { IncomingMessage, ServerResponse } from "node:http";
import {
  Code,
  NearhubError,
  httpStatusOf,
  observeHttp,
  runAs,
  sendError,
  sendJson,
  type Access,
  type Permission,
  type Principal,
  type ServiceMetrics,
} from "@nearhub/platform";

/** An error whose HTTP status is more precise than its code's (413, 415, 431). */
export class HttpError extends NearhubError {
  constructor(
    readonly status: number,
    code: Code,
    message: string,
  ) {
    super(code, message);
  }
}

/** What a route handler gets. */
export interface RouteContext {
  req: IncomingMessage;
  res: ServerResponse;
  url: URL;
  params: Record<string, string>;
  /** Who sent the request (anonymous without credentials). */
  principal: Principal;
  /** Refuses (401 for anonymous, 403 otherwise; audited) unless the caller may do this. */
  authorize(permission: Permission, resource: string): Promise<void>;
  /** Whether the caller may do this (no audit; for filtering lists). */
  can(permission: Permission, resource: string): boolean;
  /** Records a read (clone, download) in the audit trail, when reads are audited. */
  recordRead(action: string, resource: string): void;
}

/** What a route needs before its handler runs. */
export interface AccessRule {
  permission: Permission;
  resource: string;
}

/** A route: method, path pattern with named groups, and a template used as the metric label. */
export interface Route {
  method: string;
  pattern: RegExp;
  template: string;
  handler: (ctx: RouteContext) => Promise<void> | void;
  /** Checked before the handler; a route without it checks inside (or is public). */
  access?: (ctx: Omit<RouteContext, "authorize" | "can" | "recordRead">) => AccessRule | undefined;
  /** With `access`: the audit action recorded for each allowed request, e.g. `git.fetch`. */
  auditRead?: string;
}

const anonymous: Principal = { subject: "anonymous", groups: [], method: "anonymous" };
const GIT_PATH = /\/(info\/refs|git-upload-pack|git-receive-pack|info\/lfs\/.*)$/;

/** The challenge of a 401: Basic for git (so it prompts for the token), Bearer for APIs. */
export function challenge(pathname: string): Record<string, string> {
  return {
    "www-authenticate": GIT_PATH.test(pathname) ? 'Basic realm="nearhub", charset="UTF-8"' : 'Bearer realm="nearhub"',
  };
}

/** Sends an error: JSON with the right status, and the challenge on a 401. */
export function sendRouteError(res: ServerResponse, pathname: string, error: unknown): void {
  if (error instanceof HttpError) return sendJson(res, error.status, { error: error.rawMessage });
  const e = NearhubError.from(error, Code.Internal);
  if (e.code === Code.Unauthenticated)
    return sendJson(res, httpStatusOf(e.code), { error: e.rawMessage }, challenge(pathname));
  sendError(res, error);
}

/**
 * A small router: matches method and path, times every request under its route template, and
 * turns thrown errors into JSON with the right status. 404 and 405 say what exists.
 */
export function createRouter(routes: Route[], metrics: ServiceMetrics, access?: Access) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    let url: URL;
    try {
      url = new URL(req.url ?? "/", "http://edge.invalid");
    } catch {
      observeHttp(metrics, req, res, "invalid");
      sendJson(res, 400, { error: "the request target is not a valid URL path" });
      return;
    }
    let pathname: string;
    try {
      pathname = decodeURIComponent(url.pathname);
    } catch {
      observeHttp(metrics, req, res, "invalid");
      sendJson(res, 400, { error: "the path has invalid percent-encoding" });
      return;
    }
    const matching = routes.filter((r) => r.pattern.test(pathname));
    if (matching.length === 0) {
      observeHttp(metrics, req, res, "unmatched");
      sendJson(res, 404, { error: `no route for ${pathname.slice(0, 200)}` });
      return;
    }
    const route = matching.find((r) => r.method === req.method || (r.method === "GET" && req.method === "HEAD"));
    if (!route) {
      observeHttp(metrics, req, res, matching[0]?.template ?? "unmatched");
      const allowed = [...new Set(matching.map((r) => r.method))].join(", ");
      sendJson(
        res,
        405,
        { error: `${req.method ?? "this method"} is not allowed on this path; allowed: ${allowed}` },
        { allow: allowed },
      );
      return;
    }
    observeHttp(metrics, req, res, route.template);
    const params = route.pattern.exec(pathname)?.groups ?? {};
    const peer = req.socket.remoteAddress ?? "";
    const userAgent = String(req.headers["user-agent"] ?? "").slice(0, 256);
    const run = async () => {
      // Only the Authorization header counts: an identity assertion from outside is ignored.
      const principal = access
        ? await access.authenticateAudited({ authorization: req.headers.authorization }, { peer, userAgent }, pathname)
        : anonymous;
      const source = { principal, peer, userAgent };
      const ctx: RouteContext = {
        req,
        res,
        url,
        params: { ...params },
        principal,
        authorize: (permission, resource) =>
          access ? access.authorize(source, permission, resource) : Promise.resolve(),
        can: (permission, resource) => (access ? access.decide(principal, permission, resource).allowed : true),
        recordRead: (action, resource) => access?.recordRead(source, action, resource),
      };
      const rule = route.access?.(ctx);
      if (rule) {
        await ctx.authorize(rule.permission, rule.resource);
        if (route.auditRead) ctx.recordRead(route.auditRead, rule.resource);
      }
      // gRPC calls the handler makes carry this caller's identity.
      await runAs(principal, () => route.handler(ctx));
    };
    run().catch((error: unknown) => {
      if (res.headersSent) res.destroy(error as Error);
      else sendRouteError(res, pathname, error);
    });
  };
}

/** Reads a JSON body of at most `limit` bytes; 413 when larger, 415 when not JSON. */
export async function readJson(req: IncomingMessage, limit = 64 * 1024): Promise<unknown> {
  const type = req.headers["content-type"] ?? "";
  if (!/^application\/json\b/i.test(type)) {
    throw new HttpError(415, Code.InvalidArgument, "send the body as JSON with content-type: application/json");
  }
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > limit) throw new HttpError(413, Code.ResourceExhausted, `the body is larger than ${limit} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new HttpError(413, Code.ResourceExhausted, `the body is larger than ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch (error) {
    throw new NearhubError(Code.InvalidArgument, `the body is not valid JSON: ${(error as Error).message}`);
  }
}
