import { spawn } from "node:child_process";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** Options of {@link serveGitHttpBackend}. */
export interface HttpBackendOptions {
  /** The folder holding bare repositories (`<root>/<owner>/<repo>.git`). */
  root: string;
  host?: string;
  port?: number;
  /** Runs before each request; may answer it itself (return true) to simulate upstream trouble. */
  intercept?: (req: IncomingMessage, res: ServerResponse) => boolean | Promise<boolean>;
}

/** A running `git http-backend` server. */
export interface HttpBackend {
  server: Server;
  url: string;
  port: number;
  /** Requests seen, by `METHOD path` (query string dropped). */
  requests: Map<string, number>;
  /** Pack requests (protocol v2 `command=fetch`, or v0 wants) by repository path, e.g. `/acme/rocket.git`. */
  fetches: Map<string, number>;
  close(): Promise<void>;
}

/**
 * Serves bare repositories with git's own smart-HTTP server, `git http-backend`, run as a CGI
 * program per request (as Apache or nginx would): the reference server that nearhub's
 * serving is compared with, and the origin the tests and benchmarks mirror from.
 */
export async function serveGitHttpBackend(options: HttpBackendOptions): Promise<HttpBackend> {
  const requests = new Map<string, number>();
  const fetches = new Map<string, number>();
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://origin.invalid");
    const key = `${req.method ?? "GET"} ${url.pathname}`;
    requests.set(key, (requests.get(key) ?? 0) + 1);
    void (async () => {
      if (options.intercept && (await options.intercept(req, res))) return;
      const child = spawn("git", ["http-backend"], {
        env: {
          PATH: process.env["PATH"] ?? "/usr/bin:/bin",
          GIT_PROJECT_ROOT: options.root,
          GIT_HTTP_EXPORT_ALL: "1",
          GIT_CONFIG_NOSYSTEM: "1",
          GIT_CONFIG_GLOBAL: "/dev/null",
          REQUEST_METHOD: req.method ?? "GET",
          PATH_INFO: decodeURIComponent(url.pathname),
          QUERY_STRING: url.search.slice(1),
          CONTENT_TYPE: String(req.headers["content-type"] ?? ""),
          REMOTE_ADDR: req.socket.remoteAddress ?? "127.0.0.1",
          SERVER_PROTOCOL: "HTTP/1.1",
          ...(req.headers["content-length"] ? { CONTENT_LENGTH: String(req.headers["content-length"]) } : {}),
          ...(req.headers["content-encoding"]
            ? { HTTP_CONTENT_ENCODING: String(req.headers["content-encoding"]) }
            : {}),
          ...(req.headers["git-protocol"] ? { GIT_PROTOCOL: String(req.headers["git-protocol"]) } : {}),
        },
        stdio: ["pipe", "pipe", "ignore"],
      });
      if (req.method === "POST") {
        // Tell pack requests from ref listings (v2 ls-refs), looking at the start of the body.
        let seen = Buffer.alloc(0);
        let counted = false;
        req.on("data", (chunk: Buffer) => {
          if (counted || seen.length > 65536) return;
          seen = Buffer.concat([seen, chunk]);
          const text = seen.toString("latin1");
          if (/command=fetch|^[0-9a-f]{4}want /m.test(text)) {
            counted = true;
            const repo = url.pathname.replace(/\/git-upload-pack$/, "");
            fetches.set(repo, (fetches.get(repo) ?? 0) + 1);
          }
        });
      }
      req.pipe(child.stdin);
      child.stdin.on("error", () => undefined);
      let head = Buffer.alloc(0);
      let headersDone = false;
      child.stdout.on("data", (chunk: Buffer) => {
        if (headersDone) {
          if (!res.write(chunk)) {
            child.stdout.pause();
            res.once("drain", () => child.stdout.resume());
          }
          return;
        }
        head = Buffer.concat([head, chunk]);
        let end = head.indexOf("\r\n\r\n");
        let sep = 4;
        if (end < 0) {
          end = head.indexOf("\n\n");
          sep = 2;
        }
        if (end < 0) return;
        headersDone = true;
        let status = 200;
        const headers: Record<string, string> = {};
        for (const line of head.subarray(0, end).toString("latin1").split(/\r?\n/)) {
          const colon = line.indexOf(":");
          if (colon < 0) continue;
          const name = line.slice(0, colon).trim();
          const value = line.slice(colon + 1).trim();
          if (name.toLowerCase() === "status") status = Number(value.split(" ")[0]) || 200;
          else headers[name] = value;
        }
        res.writeHead(status, headers);
        res.write(head.subarray(end + sep));
      });
      child.on("close", () => {
        if (!headersDone) res.writeHead(500).end();
        else res.end();
      });
      res.on("close", () => {
        if (child.exitCode === null) child.kill("SIGKILL");
      });
    })();
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, options.host ?? "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    port,
    url: `http://${options.host ?? "127.0.0.1"}:${port}`,
    requests,
    fetches,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
