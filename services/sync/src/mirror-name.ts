import { Code, NearhubError } from "@nearhub/platform";

/** A parsed mirror name `<upstream>/<owner>/<repo>`. */
export interface MirrorName {
  upstream: string;
  owner: string;
  repo: string;
  /** The canonical form, without a `.git` suffix. */
  full: string;
}

// GitHub's own rule for owners and repositories, which GitLab and Gitea also satisfy.
const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$/;

/**
 * Parses and validates a mirror name against the configured upstreams. Rejects path
 * traversal, empty or over-long segments and unknown upstreams with a message that says the
 * accepted form.
 */
export function parseMirrorName(input: string, upstreams: ReadonlyMap<string, string>): MirrorName {
  const trimmed = input.trim().replace(/\/+$/, "");
  const parts = trimmed.split("/");
  if (parts.length !== 3) {
    throw new NearhubError(
      Code.InvalidArgument,
      `mirror name ${JSON.stringify(input.slice(0, 200))} must be <upstream>/<owner>/<repo>, e.g. github.com/pytorch/pytorch`,
    );
  }
  const [upstream = "", owner = "", rawRepo = ""] = parts;
  if (!upstreams.has(upstream)) {
    throw new NearhubError(
      Code.InvalidArgument,
      `unknown upstream ${JSON.stringify(upstream.slice(0, 100))}; configured upstreams: ${[...upstreams.keys()].join(", ")} (NEARHUB_GIT_UPSTREAMS)`,
    );
  }
  const repo = rawRepo.endsWith(".git") ? rawRepo.slice(0, -4) : rawRepo;
  for (const [label, segment] of [
    ["owner", owner],
    ["repository", repo],
  ] as const) {
    if (!SEGMENT.test(segment) || segment === "." || segment === ".." || segment.includes("..")) {
      throw new NearhubError(
        Code.InvalidArgument,
        `${label} ${JSON.stringify(segment.slice(0, 100))} is not a valid name: use letters, digits, '-', '_' and '.', at most 100 characters, not starting with '.' or containing '..'`,
      );
    }
  }
  return { upstream, owner, repo, full: `${upstream}/${owner}/${repo}` };
}

/** Validates a refs selection: `heads,tags` (default), `heads`, `tags` or `all`. */
export function parseRefs(input: string): string {
  const value = input.trim() || "heads,tags";
  if (value === "all") return value;
  const parts = [...new Set(value.split(",").map((p) => p.trim()))].sort();
  if (parts.length === 0 || parts.some((p) => p !== "heads" && p !== "tags")) {
    throw new NearhubError(
      Code.InvalidArgument,
      `refs ${JSON.stringify(input.slice(0, 100))} must be heads, tags, heads,tags or all`,
    );
  }
  return parts.join(",");
}

/** Interval bounds: at least every 24 h and at most once a minute. */
export const MIN_INTERVAL_S = 60;
export const MAX_INTERVAL_S = 86_400;
export const DEFAULT_INTERVAL_S = 300;

/** Validates an interval in seconds (0 means the default). */
export function parseInterval(seconds: number): number {
  if (seconds === 0) return DEFAULT_INTERVAL_S;
  if (seconds < MIN_INTERVAL_S) {
    throw new NearhubError(Code.InvalidArgument, `mirror interval ${seconds}s is below the ${MIN_INTERVAL_S}s minimum`);
  }
  if (seconds > MAX_INTERVAL_S) {
    throw new NearhubError(
      Code.InvalidArgument,
      `mirror interval ${seconds}s is above the ${MAX_INTERVAL_S}s (24 h) maximum`,
    );
  }
  return seconds;
}
