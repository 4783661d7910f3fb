import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, type ServiceImpl } from "@nearhub/platform";
import { type SearchService } from "@nearhub/proto/search";
import type { SqliteSearchIndex } from "./sqlite-index.js";

const MAX_QUERY = 500;
const MAX_PAGE = 100;

/** Cursors are opaque to clients: base64url of the next offset. */
function decodeCursor(cursor: string): number {
  if (!cursor) return 0;
  const offset = Number(Buffer.from(cursor, "base64url").toString("utf8").replace(/^o:/, ""));
  if (
    !Number.isSafeInteger(offset) ||
    offset < 0 ||
    !Buffer.from(cursor, "base64url").toString("utf8").startsWith("o:")
  ) {
    throw new NearhubError(
      Code.InvalidArgument,
      "cursor is not one this server returned; start again without a cursor",
    );
  }
  return offset;
}

/** nearhub.search.v1.SearchService over the embedded index. */
export function searchApi(index: SqliteSearchIndex): ServiceImpl<typeof SearchService> {
  return {
    async search(request) {
      if (request.query.length > MAX_QUERY) {
        throw new NearhubError(
          Code.InvalidArgument,
          `query is ${request.query.length} characters; the limit is ${MAX_QUERY}`,
        );
      }
      if (request.pageSize > MAX_PAGE) {
        throw new NearhubError(
          Code.InvalidArgument,
          `page_size ${request.pageSize} is above the maximum of ${MAX_PAGE}`,
        );
      }
      const limit = request.pageSize || 20;
      const offset = decodeCursor(request.cursor);
      const { hits, total } = index.search({ text: request.query, kind: request.kind, limit, offset });
      const next = offset + hits.length < total ? Buffer.from(`o:${offset + hits.length}`).toString("base64url") : "";
      return {
        hits: hits.map((h) => ({
          id: h.id,
          kind: h.kind,
          title: h.title,
          description: h.description,
          score: h.score,
          updatedAt: timestampFromMs(h.updatedAtMs),
        })),
        nextCursor: next,
        total: BigInt(total),
      };
    },
  };
}
