/** The upstream's refs as `git ls-remote --symref` shows them, in the mirror's selection. */
export interface UpstreamRefs {
  /** Ref → sha, HEAD included when the upstream shows it. */
  refs: Map<string, string>;
  /** Tag → the sha it peels to, for annotated tags. */
  peeled: Map<string, string>;
  /** HEAD's target branch, when the upstream shows it. */
  head: string | undefined;
}

/** A protocol v2 request: its command, capabilities and arguments. */
export interface V2Request {
  command: string;
  capabilities: string[];
  args: string[];
}

/** Parses a v2 request body (`command=…`, capabilities, delim, arguments, flush); undefined when malformed. */
export function parseV2Request(body: Buffer): V2Request | undefined {
  let at = 0;
  let section: "caps" | "args" = "caps";
  let command = "";
  const capabilities: string[] = [];
  const args: string[] = [];
  while (at + 4 <= body.length) {
    const len = parseInt(body.toString("latin1", at, at + 4), 16);
    if (!Number.isFinite(len)) return undefined;
    if (len === 0) return command ? { command, capabilities, args } : undefined;
    if (len === 1) {
      section = "args";
      at += 4;
      continue;
    }
    if (len < 4 || at + len > body.length) return undefined;
    const line = body.toString("utf8", at + 4, at + len).replace(/\n$/, "");
    at += len;
    if (section === "caps") {
      if (line.startsWith("command=")) command = line.slice(8);
      else capabilities.push(line);
    } else args.push(line);
  }
  return undefined;
}

/** Parses `git ls-remote --symref` output into {@link UpstreamRefs}, keeping refs `keep` accepts. */
export function parseUpstreamRefs(text: string, keep: (ref: string) => boolean): UpstreamRefs {
  const refs = new Map<string, string>();
  const peeled = new Map<string, string>();
  let head: string | undefined;
  for (const line of text.split("\n")) {
    const symref = /^ref: (\S+)\tHEAD$/.exec(line);
    if (symref) {
      head = symref[1];
      continue;
    }
    const m = /^([0-9a-f]{40}(?:[0-9a-f]{24})?)\t(\S+)$/.exec(line);
    if (!m) continue;
    const [, sha = "", ref = ""] = m;
    if (ref.endsWith("^{}")) {
      if (keep(ref.slice(0, -3))) peeled.set(ref.slice(0, -3), sha);
    } else if (ref === "HEAD" || keep(ref)) refs.set(ref, sha);
  }
  return { refs, peeled, head };
}

const pkt = (s: string) => `${(Buffer.byteLength(s) + 4).toString(16).padStart(4, "0")}${s}`;

/**
 * The v2 `ls-refs` answer git upload-pack would give for these refs (`ref-prefix`, `symrefs`,
 * `peel` honoured), ending with a flush.
 */
export function lsRefsResponse(upstream: UpstreamRefs, args: string[]): Buffer {
  const prefixes = args.filter((a) => a.startsWith("ref-prefix ")).map((a) => a.slice(11));
  const symrefs = args.includes("symrefs");
  const peel = args.includes("peel");
  const wanted = (ref: string) => prefixes.length === 0 || prefixes.some((p) => ref.startsWith(p));
  const names = [...upstream.refs.keys()].filter((r) => r !== "HEAD").sort();
  let out = "";
  const headSha = upstream.head ? upstream.refs.get(upstream.head) : upstream.refs.get("HEAD");
  if (headSha && wanted("HEAD")) {
    out += pkt(`${headSha} HEAD${symrefs && upstream.head ? ` symref-target:${upstream.head}` : ""}\n`);
  }
  for (const ref of names) {
    if (!wanted(ref)) continue;
    const peeledTo = upstream.peeled.get(ref);
    out += pkt(`${upstream.refs.get(ref) ?? ""} ${ref}${peel && peeledTo ? ` peeled:${peeledTo}` : ""}\n`);
  }
  return Buffer.from(out + "0000");
}
