import type { Logger } from "@nearhub/platform";
import { Counter, type Registry } from "prom-client";
import { HfError, PLURAL, PREFIX, UpstreamUnavailable, type HfErrorCode, type HfType } from "./hf-names.js";

/** One sibling of an upstream repo info answer (`?blobs=true`). */
export interface UpstreamSibling {
  rfilename: string;
  size?: number;
  blobId?: string;
  lfs?: { sha256: string; size: number; pointerSize?: number };
}

/** The upstream's repo info, Xet fields removed. */
export interface UpstreamInfo {
  sha: string;
  siblings: UpstreamSibling[];
  lastModified?: string;
  [key: string]: unknown;
}

const ERROR_CODES = new Set(["RepoNotFound", "RevisionNotFound", "EntryNotFound", "GatedRepo"]);

/** Removes every Xet signal from a JSON value: `xetHash` and any `xet*` field, recursively. */
export function stripXet<T>(value: T): T {
  if (Array.isArray(value)) return (value as unknown[]).map((v) => stripXet(v)) as T;
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) if (!/^xet/i.test(k)) out[k] = stripXet(v);
    return out as T;
  }
  return value;
}

/**
 * The hub the mirror pulls through (`NEARHUB_HF_UPSTREAM`). Upstream 4xx answers become the
 * same HF error (never a 504); network errors, timeouts and 5xx become {@link UpstreamUnavailable}
 * so the caller can serve what it has stored.
 */
export class HfUpstream {
  private readonly calls: Counter;

  constructor(
    readonly base: string,
    private readonly options: { token?: string; timeoutMs: number; logger: Logger; registry: Registry },
  ) {
    this.calls = new Counter({
      name: "nearhub_hf_upstream_requests_total",
      help: "Requests the edge sent to the Hugging Face upstream, by kind and outcome (HTTP status or error).",
      labelNames: ["kind", "outcome"],
      registers: [options.registry],
    });
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return {
      "user-agent": "nearhub-mirror/0.1",
      ...(this.options.token ? { authorization: `Bearer ${this.options.token}` } : {}),
      ...extra,
    };
  }

  /** `GET /api/{type}s/{id}[/revision/{rev}]?blobs=true`; `HEAD` asks for the default branch. */
  async info(type: HfType, id: string, revision: string): Promise<UpstreamInfo> {
    const rev = revision === "HEAD" ? "" : `/revision/${encodeURIComponent(revision)}`;
    const url = `${this.base}/api/${PLURAL[type]}/${id}${rev}?blobs=true`;
    const res = await this.send(
      "info",
      url,
      { headers: this.headers({ accept: "application/json" }) },
      this.options.timeoutMs,
    );
    let body: unknown;
    try {
      body = await res.json();
    } catch (error) {
      throw new UpstreamUnavailable(`the upstream answered ${url} with invalid JSON: ${(error as Error).message}`);
    }
    const info = stripXet(body) as UpstreamInfo;
    if (typeof info?.sha !== "string" || !/^[0-9a-f]{40}$/.test(info.sha) || !Array.isArray(info.siblings)) {
      throw new UpstreamUnavailable(`the upstream's answer for ${type} ${id} has no commit sha or siblings`);
    }
    return info;
  }

  /** The bytes of a file at a commit (redirects followed, Xet never asked for). */
  async file(type: HfType, id: string, commit: string, path: string, signal?: AbortSignal): Promise<Response> {
    const encoded = path.split("/").map(encodeURIComponent).join("/");
    const url = `${this.base}/${PREFIX[type]}${id}/resolve/${commit}/${encoded}`;
    return this.send(
      "file",
      url,
      { headers: this.headers({ "accept-encoding": "identity" }), ...(signal ? { signal } : {}) },
      this.options.timeoutMs,
    );
  }

  private async send(kind: string, url: string, init: RequestInit, timeoutMs: number): Promise<Response> {
    // The timeout bounds the wait for the headers; a body may take as long as it takes.
    const controller = new AbortController();
    const outer = init.signal;
    const onOuter = () => controller.abort(outer?.reason);
    outer?.addEventListener("abort", onOuter, { once: true });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort(new Error("timeout"));
    }, timeoutMs);
    let res: Response;
    try {
      res = await fetch(url, { ...init, signal: controller.signal, redirect: "follow" });
    } catch (error) {
      this.calls.inc({ kind, outcome: timedOut ? "timeout" : "network" });
      const reason = ((error as Error).cause as Error | undefined)?.message ?? (error as Error).message;
      throw new UpstreamUnavailable(
        `the upstream ${this.base} is unreachable (${timedOut ? `no answer in ${timeoutMs} ms` : reason})`,
      );
    } finally {
      clearTimeout(timer);
    }
    this.calls.inc({ kind, outcome: String(res.status) });
    if (res.ok) return res;
    const text = await res.text().catch(() => "");
    if (res.status >= 500 || res.status === 429) {
      throw new UpstreamUnavailable(`the upstream ${this.base} answered ${res.status}`);
    }
    const code = res.headers.get("x-error-code") ?? "";
    let message = res.headers.get("x-error-message") ?? "";
    if (!message) {
      try {
        const parsed = (JSON.parse(text) as { error?: unknown }).error;
        message = typeof parsed === "string" ? parsed : "";
      } catch {
        message = text.slice(0, 500);
      }
    }
    const errorCode = ERROR_CODES.has(code) ? (code as HfErrorCode) : res.status === 404 ? "RepoNotFound" : undefined;
    const headers: Record<string, string> = {};
    const commit = res.headers.get("x-repo-commit");
    if (commit) headers["x-repo-commit"] = commit;
    throw new HfError(res.status, `upstream: ${message || `HTTP ${res.status}`}`, errorCode, headers);
  }
}
