import { createPrivateKey, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { isAbsolute } from "node:path";
import { ConfigError } from "@nearhub/platform";
import { SignJWT } from "jose";
import { z } from "zod";
import { listEntries } from "./env-list.js";
import { GitError, redact } from "./git-runner.js";

/** One GitHub App installation that authenticates the mirrors of an upstream. */
export interface GitHubApp {
  appId: string;
  installationId: string;
  /** Where the key came from (shown in messages; the key itself never is). */
  keyPath: string;
  privateKey: KeyObject;
}

/** A GitHub App with the API it talks to. */
export interface ResolvedGitHubApp extends GitHubApp {
  /** API base, e.g. https://api.github.com (no trailing slash). */
  apiUrl: string;
}

/** Hands git the credential of an upstream: a configured token, or a GitHub App's installation token. */
export interface CredentialSource {
  token(upstream: string, signal?: AbortSignal): Promise<string | undefined>;
}

const UPSTREAM = /^[a-z0-9][a-z0-9.-]*$/;
const ID = /^[1-9][0-9]{0,19}$/;
const MAX_KEY_BYTES = 64 * 1024;

/** Reads and checks a GitHub App private key (PKCS#1 as GitHub issues it, or PKCS#8). Throws a message that says what to fix. */
export function loadAppKey(path: string): KeyObject {
  if (!isAbsolute(path)) throw new Error(`private key path ${JSON.stringify(path)} must be absolute`);
  let pem: Buffer;
  try {
    pem = readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "error";
    throw new Error(`cannot read the private key file ${path} (${code}); check the path and its permissions`);
  }
  if (pem.length > MAX_KEY_BYTES) throw new Error(`private key file ${path} is over ${MAX_KEY_BYTES} bytes`);
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch {
    throw new Error(`private key file ${path} is not a PEM private key; download the app's .pem from GitHub`);
  }
  if (key.asymmetricKeyType !== "rsa")
    throw new Error(`private key file ${path} must hold an RSA key (GitHub App keys are)`);
  return key;
}

/** Parses `upstream=appId:installationId:/path/key.pem,…` (NEARHUB_GIT_GITHUB_APPS). */
export const githubAppsEnv = z
  .string()
  .max(64 * 1024, "must be at most 64 KiB")
  .default("")
  .transform((value, ctx) => {
    const map = new Map<string, GitHubApp>();
    for (const { part, eq, name: upstream, value: app } of listEntries(value)) {
      const [appId = "", installationId = "", ...rest] = app.split(":");
      const keyPath = rest.join(":").trim();
      const shape =
        "must be upstream=appId:installationId:/path/to/key.pem, e.g. github.com=12345:67890:/etc/nearhub/app.pem";
      if (eq <= 0 || !UPSTREAM.test(upstream) || !keyPath) {
        ctx.addIssue({ code: "custom", message: `entry ${JSON.stringify(part.slice(0, 200))} ${shape}` });
        return z.NEVER;
      }
      if (!ID.test(appId.trim()) || !ID.test(installationId.trim())) {
        ctx.addIssue({
          code: "custom",
          message: `entry for ${upstream}: the app id and installation id must be positive whole numbers (${shape})`,
        });
        return z.NEVER;
      }
      if (map.has(upstream)) {
        ctx.addIssue({ code: "custom", message: `names upstream ${upstream} twice; give each upstream one app` });
        return z.NEVER;
      }
      try {
        map.set(upstream, {
          appId: appId.trim(),
          installationId: installationId.trim(),
          keyPath,
          privateKey: loadAppKey(keyPath),
        });
      } catch (error) {
        ctx.addIssue({ code: "custom", message: `entry for ${upstream}: ${(error as Error).message}` });
        return z.NEVER;
      }
    }
    return map;
  });

/** Parses `upstream=https://api.host,…` (NEARHUB_GIT_GITHUB_API_URLS). */
export const githubApiUrlsEnv = z
  .string()
  .default("")
  .transform((value, ctx) => {
    const map = new Map<string, string>();
    for (const { part, eq, name: upstream, value: url } of listEntries(value)) {
      if (eq <= 0 || !UPSTREAM.test(upstream) || !/^https?:\/\/[^\s/@]+(\/\S*)?$/.test(url)) {
        ctx.addIssue({
          code: "custom",
          message: `entry ${JSON.stringify(part.slice(0, 200))} must be upstream=url, e.g. github.com=https://api.github.com`,
        });
        return z.NEVER;
      }
      map.set(upstream, url.replace(/\/+$/, ""));
    }
    return map;
  });

/**
 * Checks the apps against the other git variables and gives each its API: the configured one,
 * https://api.github.com for https://github.com, else GitHub Enterprise Server's `<base>/api/v3`.
 * Throws one ConfigError naming every problem.
 */
export function resolveGitHubApps(config: {
  NEARHUB_GIT_UPSTREAMS: ReadonlyMap<string, string>;
  NEARHUB_GIT_TOKENS: ReadonlyMap<string, string>;
  NEARHUB_GIT_GITHUB_APPS: ReadonlyMap<string, GitHubApp>;
  NEARHUB_GIT_GITHUB_API_URLS: ReadonlyMap<string, string>;
}): Map<string, ResolvedGitHubApp> {
  const problems: string[] = [];
  const out = new Map<string, ResolvedGitHubApp>();
  const known = [...config.NEARHUB_GIT_UPSTREAMS.keys()].join(", ");
  for (const [upstream, app] of config.NEARHUB_GIT_GITHUB_APPS) {
    const base = config.NEARHUB_GIT_UPSTREAMS.get(upstream);
    if (!base) {
      problems.push(
        `NEARHUB_GIT_GITHUB_APPS names upstream ${upstream}, which NEARHUB_GIT_UPSTREAMS does not define (it has ${known})`,
      );
      continue;
    }
    if (config.NEARHUB_GIT_TOKENS.has(upstream)) {
      problems.push(`NEARHUB_GIT_GITHUB_APPS and NEARHUB_GIT_TOKENS both give credentials for ${upstream}; keep one`);
      continue;
    }
    const apiUrl =
      config.NEARHUB_GIT_GITHUB_API_URLS.get(upstream) ??
      (base === "https://github.com" ? "https://api.github.com" : `${base}/api/v3`);
    out.set(upstream, { ...app, apiUrl });
  }
  for (const upstream of config.NEARHUB_GIT_GITHUB_API_URLS.keys()) {
    if (!config.NEARHUB_GIT_GITHUB_APPS.has(upstream))
      problems.push(`NEARHUB_GIT_GITHUB_API_URLS names ${upstream}, which has no app in NEARHUB_GIT_GITHUB_APPS`);
  }
  if (problems.length > 0) throw new ConfigError("sync", problems);
  return out;
}

const accessTokenAnswer = z.object({ token: z.string().min(1).max(4096), expires_at: z.string().min(1) });
/** A cached installation token is replaced this long before GitHub's `expires_at`. */
const REFRESH_MARGIN_MS = 5 * 60_000;

/** Options of {@link GitHubAppTokens}. */
export interface GitHubAppTokensOptions {
  /** The clock, in ms since the epoch (tests move it). */
  now?: () => number;
  /** How long one exchange may take. */
  timeoutMs?: number;
}

/**
 * Installation access tokens of one GitHub App installation: a JWT signed with the app's key
 * (RS256, `iat` 60 s in the past against clock skew, 9 minutes of life) is exchanged at
 * `POST /app/installations/{id}/access_tokens`; the answer is cached until 5 minutes before it
 * expires, and concurrent callers share one exchange. Neither the JWT nor the token ever
 * appears in an error.
 */
export class GitHubAppTokens {
  private cached: { token: string; refreshAt: number } | undefined;
  private pending: Promise<string> | undefined;
  /** Exchanges done (for metrics and tests). */
  exchanges = 0;
  private readonly now: () => number;

  constructor(
    private readonly app: ResolvedGitHubApp,
    private readonly options: GitHubAppTokensOptions = {},
  ) {
    this.now = options.now ?? Date.now;
  }

  private get what(): string {
    return `GitHub App ${this.app.appId} (installation ${this.app.installationId})`;
  }

  /** A valid installation token, minted when none is cached or the cached one is near its expiry. */
  async token(signal?: AbortSignal): Promise<string> {
    if (this.cached && this.now() < this.cached.refreshAt) return this.cached.token;
    this.pending ??= this.exchange(signal).finally(() => {
      this.pending = undefined;
    });
    return this.pending;
  }

  /** Forgets the cached token (after upstream refused it). */
  invalidate(): void {
    this.cached = undefined;
  }

  private async jwt(): Promise<string> {
    const nowS = Math.floor(this.now() / 1000);
    return new SignJWT({})
      .setProtectedHeader({ alg: "RS256", typ: "JWT" })
      .setIssuer(this.app.appId)
      .setIssuedAt(nowS - 60)
      .setExpirationTime(nowS + 9 * 60)
      .sign(this.app.privateKey);
  }

  private async exchange(signal?: AbortSignal): Promise<string> {
    const url = `${this.app.apiUrl}/app/installations/${this.app.installationId}/access_tokens`;
    const timeout = AbortSignal.timeout(this.options.timeoutMs ?? 30_000);
    let res: Response;
    try {
      res = await fetch(url, {
        method: "POST",
        headers: {
          Accept: "application/vnd.github+json",
          Authorization: `Bearer ${await this.jwt()}`,
          "X-GitHub-Api-Version": "2022-11-28",
          "User-Agent": "nearhub-sync",
        },
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
        redirect: "error",
      });
    } catch (error) {
      if (signal?.aborted)
        throw new GitError("aborted", `${this.what}: token request stopped: the service is shutting down`, null);
      const why = timeout.aborted ? "timed out" : redact((error as Error).message);
      throw new GitError("other", `${this.what}: cannot reach ${url} for an installation token: ${why}`, null);
    }
    const text = (await res.text().catch(() => "")).slice(0, 64 * 1024);
    if (!res.ok) {
      let detail = "";
      try {
        const message = (JSON.parse(text) as { message?: unknown }).message;
        detail = typeof message === "string" ? message : "";
      } catch {
        // not JSON: no detail
      }
      detail = redact(detail)
        .replace(/eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*/g, "***")
        .slice(0, 200);
      const kind =
        res.status === 401 || res.status === 403 || res.status === 404
          ? "auth"
          : res.status === 429
            ? "rate-limited"
            : "other";
      const hint =
        res.status === 401
          ? "; check the app id and that the private key is the app's current one"
          : res.status === 404
            ? "; check the installation id (the app must be installed on the owner)"
            : "";
      throw new GitError(
        kind,
        `${this.what}: ${url} answered ${res.status}${detail ? ` (${detail})` : ""}${hint}`,
        null,
      );
    }
    let answer: z.infer<typeof accessTokenAnswer>;
    try {
      answer = accessTokenAnswer.parse(JSON.parse(text));
    } catch {
      throw new GitError("other", `${this.what}: ${url} answered ${res.status} without a token and expires_at`, null);
    }
    const expires = Date.parse(answer.expires_at);
    if (!Number.isFinite(expires))
      throw new GitError("other", `${this.what}: ${url} answered an expires_at that is not a date`, null);
    this.exchanges++;
    this.cached = { token: answer.token, refreshAt: expires - REFRESH_MARGIN_MS };
    return answer.token;
  }
}

/** Per-upstream credentials: configured tokens, and installation tokens of GitHub Apps. */
export class UpstreamCredentials implements CredentialSource {
  readonly apps = new Map<string, GitHubAppTokens>();

  constructor(
    private readonly tokens: ReadonlyMap<string, string>,
    apps: ReadonlyMap<string, ResolvedGitHubApp> = new Map(),
    options: GitHubAppTokensOptions = {},
  ) {
    for (const [upstream, app] of apps) this.apps.set(upstream, new GitHubAppTokens(app, options));
  }

  async token(upstream: string, signal?: AbortSignal): Promise<string | undefined> {
    const app = this.apps.get(upstream);
    if (app) return app.token(signal);
    return this.tokens.get(upstream);
  }

  /** Drops a cached app token that upstream refused, so that the next sync mints another. */
  refused(upstream: string): void {
    this.apps.get(upstream)?.invalidate();
  }
}
