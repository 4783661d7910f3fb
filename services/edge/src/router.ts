import type { IncomingMessage, ServerResponse } from "node:http";
import { Code, NearhubError, observeHttp, sendError, sendJson, type ServiceMetrics } from "@nearhub/platform";

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
}

/** A route: method, path pattern with named groups, and a template used as the metric label. */
export interface Route {
  method: string;
  pattern: RegExp;
  template: string;
  handler: (ctx: RouteContext) => Promise<void> | void;
}

/**
 * A small router: matches method and path, times every request under its route template, and
 * turns thrown errors into JSON with the right status. 404 and 405 say what exists.
 */
export function createRouter(routes: Route[], metrics: ServiceMetrics) {
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
    Promise.resolve()
      .then(() => route.handler({ req, res, url, params: { ...params } }))
      .catch((error: unknown) => {
        if (res.headersSent) res.destroy(error as Error);
        else if (error instanceof HttpError) sendJson(res, error.status, { error: error.rawMessage });
        else sendError(res, error);
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
