import type { IncomingMessage } from "node:http";
import { createGunzip } from "node:zlib";
import { Code } from "@nearhub/platform";
import { HttpError } from "./router.js";

/** The largest pkt-line git allows (4 length bytes included). */
export const MAX_PKT_LEN = 65520;

/**
 * Checks that a body is a well-formed sequence of pkt-lines (flush, delimiter, response-end
 * or 5…65520-byte data lines, ending on a boundary); returns a message saying what is wrong,
 * or undefined when it is fine.
 */
export function checkPktLines(body: Buffer): string | undefined {
  let at = 0;
  while (at < body.length) {
    if (at + 4 > body.length) return `the body ends inside a pkt-line length at byte ${at}`;
    const text = body.toString("latin1", at, at + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(text))
      return `pkt-line at byte ${at} has length ${JSON.stringify(text)}, not 4 hex digits`;
    const len = parseInt(text, 16);
    if (len <= 2) {
      at += 4;
      continue;
    }
    if (len < 4) return `pkt-line at byte ${at} declares length ${len}, which git does not allow`;
    if (len > MAX_PKT_LEN)
      return `pkt-line at byte ${at} declares length ${len}, above git's ${MAX_PKT_LEN}-byte limit`;
    if (at + len > body.length) return `pkt-line at byte ${at} declares ${len} bytes but the body ends first`;
    at += len;
  }
  return undefined;
}

/**
 * Reads a git request body (gzip-decoded when sent so) of at most `limit` bytes after
 * decoding; 413 when larger, 400 when the gzip stream is broken.
 */
export async function readGitBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const encoding = String(req.headers["content-encoding"] ?? "identity").toLowerCase();
  if (encoding !== "identity" && encoding !== "gzip" && encoding !== "x-gzip") {
    throw new HttpError(
      415,
      Code.InvalidArgument,
      `content-encoding ${JSON.stringify(encoding.slice(0, 30))} is not supported; send identity or gzip`,
    );
  }
  const source = encoding === "identity" ? req : req.pipe(createGunzip());
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of source) {
      size += (chunk as Buffer).length;
      if (size > limit) {
        req.resume();
        throw new HttpError(413, Code.ResourceExhausted, `the git request body is larger than ${limit} bytes`);
      }
      chunks.push(chunk as Buffer);
    }
  } catch (error) {
    if (error instanceof HttpError) throw error;
    throw new HttpError(400, Code.InvalidArgument, `the gzip body is malformed: ${(error as Error).message}`);
  }
  return Buffer.concat(chunks);
}
