import { spawn } from "node:child_process";
import { Code, NearhubError } from "@nearhub/platform";

/** Why a git command failed, as far as the sync engine needs to tell. */
export type GitFailureKind = "auth" | "not-found" | "rate-limited" | "timeout" | "aborted" | "other";

/** A failed git command: its kind, exit code and the tail of its stderr (credentials removed). */
export class GitError extends NearhubError {
  constructor(
    readonly kind: GitFailureKind,
    message: string,
    readonly exitCode: number | null,
  ) {
    super(kind === "not-found" ? Code.NotFound : kind === "auth" ? Code.PermissionDenied : Code.Unavailable, message);
  }
}

/** Options of {@link runGit}. */
export interface RunGitOptions {
  cwd?: string;
  /** Kill the whole process group after this long. */
  timeoutMs: number;
  env?: Record<string, string>;
  input?: Buffer | string;
  signal?: AbortSignal;
  /** Called with every stderr chunk (git's progress). */
  onStderr?: (chunk: Buffer) => void;
  /** Cap on captured stdout; beyond it the command fails (protects memory). */
  maxStdoutBytes?: number;
}

/** What a finished git command printed. */
export interface GitResult {
  stdout: string;
  stderr: string;
}

// Never let git ask for a password on a terminal, read the user's config, or run hooks.
const BASE_ENV: Record<string, string> = {
  GIT_TERMINAL_PROMPT: "0",
  GIT_ASKPASS: "/bin/false",
  SSH_ASKPASS: "/bin/false",
  GIT_CONFIG_NOSYSTEM: "1",
  GIT_CONFIG_GLOBAL: "/dev/null",
  LC_ALL: "C",
};

/** Removes credentials a URL or header might have carried from text shown to people. */
export function redact(text: string): string {
  return text
    .replace(/(https?:\/\/)[^/@\s]+@/g, "$1***@")
    .replace(/(authorization:\s*)(\S+\s+)?\S+/gi, "$1***")
    .replace(/\b(gh[pousr]_[A-Za-z0-9]{20,}|glpat-[A-Za-z0-9_-]{20,})\b/g, "***");
}

/** Sorts git's complaint into what the engine does about it (pause, back off, retry). */
export function classifyGitFailure(stderr: string): GitFailureKind {
  if (/returned error: 429|too many requests|rate limit/i.test(stderr)) return "rate-limited";
  if (/returned error: 40[13]|authentication failed|could not read username|permission denied/i.test(stderr))
    return "auth";
  if (/returned error: 404|repository .* not found|not found|does not appear to be a git repository/i.test(stderr))
    return "not-found";
  return "other";
}

/**
 * Runs `git` in its own process group, so a timeout or an abort kills git and every helper it
 * started (git-remote-https, index-pack) at once.
 */
export function runGit(args: string[], options: RunGitOptions): Promise<GitResult> {
  return new Promise((resolve, reject) => {
    const child = spawn("git", args, {
      cwd: options.cwd,
      env: { ...process.env, ...BASE_ENV, ...options.env },
      detached: true,
      stdio: ["pipe", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    let outBytes = 0;
    let err = "";
    let killedFor: "timeout" | "aborted" | "output" | undefined;
    const kill = (why: "timeout" | "aborted" | "output") => {
      killedFor ??= why;
      try {
        if (child.pid) process.kill(-child.pid, "SIGKILL");
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => kill("timeout"), options.timeoutMs);
    const onAbort = () => kill("aborted");
    options.signal?.addEventListener("abort", onAbort, { once: true });
    child.stdout.on("data", (chunk: Buffer) => {
      outBytes += chunk.length;
      if (options.maxStdoutBytes !== undefined && outBytes > options.maxStdoutBytes) kill("output");
      else out.push(chunk);
    });
    child.stderr.on("data", (chunk: Buffer) => {
      options.onStderr?.(chunk);
      err = (err + chunk.toString("utf8")).slice(-8000);
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(options.input ?? "");
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(new GitError("other", `cannot run git: ${error.message}; install git 2.30 or newer`, null));
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      const stderr = redact(err);
      const what = `git ${args.find((a) => !a.startsWith("-") && !a.includes("=")) ?? ""}`.trim();
      if (killedFor === "timeout") {
        reject(
          new GitError(
            "timeout",
            `${what} took longer than ${Math.round(options.timeoutMs / 1000)}s and was stopped`,
            code,
          ),
        );
      } else if (killedFor === "aborted") {
        reject(new GitError("aborted", `${what} was stopped: the service is shutting down`, code));
      } else if (killedFor === "output") {
        reject(new GitError("other", `${what} printed more than ${String(options.maxStdoutBytes)} bytes`, code));
      } else if (code !== 0) {
        const tail = stderr.trim().split("\n").slice(-3).join("; ");
        reject(
          new GitError(
            classifyGitFailure(stderr),
            `${what} failed (exit ${String(code)}): ${tail || "no message"}`,
            code,
          ),
        );
      } else {
        resolve({ stdout: Buffer.concat(out).toString("utf8"), stderr });
      }
    });
  });
}
