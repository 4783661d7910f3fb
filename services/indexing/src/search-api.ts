import { basename } from "node:path";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, type ServiceImpl } from "@nearhub/platform";
import { DocumentKind, SortDirection, SortField, type SearchService } from "@nearhub/proto/search";
import { newQuery, type IndexHit, type SearchIndex } from "./document.js";
import type { LiveIndex, Replay } from "./live-index.js";

/** Longer text is refused; anything up to it is searched by its first 32 words. */
export const MAX_QUERY_CHARS = 16 * 1024;
const MAX_PAGE = 100;
/** Deeper pages cost a scan each; past this, narrow the query (Elasticsearch's own default). */
const MAX_OFFSET = 10_000;
const MAX_SUGGEST = 20;
const MAX_FILTER_CHARS = 200;

/** Cursors are opaque to clients: base64url of `o:<next offset>`. */
function decodeCursor(cursor: string): number {
  if (!cursor) return 0;
  const text = Buffer.from(cursor, "base64url").toString("utf8");
  const offset = Number(text.slice(2));
  if (!text.startsWith("o:") || !/^\d+$/.test(text.slice(2)) || !Number.isSafeInteger(offset)) {
    throw new NearhubError(
      Code.InvalidArgument,
      "cursor is not one this server returned; start again without a cursor",
    );
  }
  return offset;
}

function encodeCursor(offset: number): string {
  return Buffer.from(`o:${offset}`).toString("base64url");
}

function checkEnum(value: number, valid: Record<number, string>, what: string): void {
  if (valid[value] === undefined) {
    throw new NearhubError(
      Code.InvalidArgument,
      `${what} ${value} is not one of ${Object.values(valid)
        .filter((v) => typeof v === "string")
        .join(", ")}`,
    );
  }
}

function checkFilter(name: string, value: string): string {
  if (value.length > MAX_FILTER_CHARS) {
    throw new NearhubError(
      Code.InvalidArgument,
      `filter ${name} is ${value.length} characters; the limit is ${MAX_FILTER_CHARS}`,
    );
  }
  return value.trim();
}

/** The hit as the wire carries it. */
export function toWireHit(h: IndexHit) {
  return {
    id: h.id,
    kind: h.kind,
    title: h.title,
    description: h.description,
    score: h.score,
    updatedAt: timestampFromMs(h.updatedAtMs),
    ...(h.createdAtMs ? { createdAt: timestampFromMs(h.createdAtMs) } : {}),
    author: h.author,
    tags: h.tags,
    pipelineTag: h.pipelineTag,
    libraryName: h.libraryName,
    license: h.license,
    downloads: BigInt(h.downloads),
    likes: BigInt(h.likes),
    upstream: h.upstream,
    state: h.state,
    refsCount: h.refsCount,
    defaultBranch: h.defaultBranch,
    sizeBytes: BigInt(h.sizeBytes),
    sha: h.sha,
    files: h.files.map((f) => ({ path: f.path, size: BigInt(f.size) })),
    private: h.private,
    gated: h.gated,
  };
}

/** nearhub.search.v1.SearchService over the live index; `replay` feeds rebuilds. */
export function searchApi(index: LiveIndex | SearchIndex, replay?: Replay): ServiceImpl<typeof SearchService> {
  return {
    async search(request, ctx) {
      if (request.query.length > MAX_QUERY_CHARS) {
        throw new NearhubError(
          Code.InvalidArgument,
          `query is ${request.query.length} characters; the limit is ${MAX_QUERY_CHARS}`,
        );
      }
      if (request.pageSize > MAX_PAGE) {
        throw new NearhubError(
          Code.InvalidArgument,
          `page_size ${request.pageSize} is above the maximum of ${MAX_PAGE}`,
        );
      }
      checkEnum(request.kind, DocumentKind, "kind");
      checkEnum(request.sort, SortField, "sort");
      checkEnum(request.direction, SortDirection, "direction");
      const limit = request.pageSize || 20;
      const offset = decodeCursor(request.cursor);
      if (offset > MAX_OFFSET) {
        throw new NearhubError(
          Code.InvalidArgument,
          `pages past the first ${MAX_OFFSET} results are not served; narrow the query with filters`,
        );
      }
      const f = request.filters;
      if ((f?.tags.length ?? 0) > 20) {
        throw new NearhubError(Code.InvalidArgument, `${f?.tags.length ?? 0} tag filters given; the limit is 20`);
      }
      const query = newQuery({
        text: request.query,
        kind: request.kind,
        sort: request.sort,
        direction: request.direction,
        limit,
        offset,
        includeFiles: request.includeFiles,
        filters: {
          author: checkFilter("author", f?.author ?? ""),
          tags: (f?.tags ?? []).map((t) => checkFilter("tags", t)).filter(Boolean),
          pipelineTag: checkFilter("pipeline_tag", f?.pipelineTag ?? ""),
          library: checkFilter("library", f?.library ?? ""),
          license: checkFilter("license", f?.license ?? ""),
          upstream: checkFilter("upstream", f?.upstream ?? ""),
          state: checkFilter("state", f?.state ?? ""),
        },
      });
      const { hits, total, totalIsLowerBound } = await index.search(query);
      // A lower bound is counted past the end of this page: more results follow.
      const more = totalIsLowerBound || offset + hits.length < total;
      const next = more && hits.length > 0 ? encodeCursor(offset + hits.length) : "";
      // Only what the caller may read; a reader of everything skips the per-hit check.
      if (ctx.can("read", "*")) {
        return { hits: hits.map(toWireHit), nextCursor: next, total: BigInt(total), totalIsLowerBound };
      }
      const readable = hits.filter((h) => ctx.can("read", resourceOfDocument(h.kind, h.id)));
      return {
        hits: readable.map(toWireHit),
        nextCursor: next,
        total: BigInt(Math.max(readable.length, total - (hits.length - readable.length))),
        totalIsLowerBound,
      };
    },

    async suggest(request, ctx) {
      if (request.prefix.length > 200) {
        throw new NearhubError(Code.InvalidArgument, `prefix is ${request.prefix.length} characters; the limit is 200`);
      }
      if (request.limit > MAX_SUGGEST) {
        throw new NearhubError(Code.InvalidArgument, `limit ${request.limit} is above the maximum of ${MAX_SUGGEST}`);
      }
      checkEnum(request.kind, DocumentKind, "kind");
      const suggestions = await index.suggest(request.prefix, request.kind, request.limit || 10);
      if (ctx.can("read", "*")) return { suggestions };
      return { suggestions: suggestions.filter((s) => ctx.can("read", resourceOfDocument(s.kind, s.id))) };
    },

    async *rebuildIndex(_request, ctx) {
      // Rebuilding touches every document: maintainers of everything only.
      await ctx.authorize("mirror", "*");
      if (!replay || !("rebuild" in index)) {
        throw new NearhubError(Code.Unimplemented, "this index cannot be rebuilt: it has no event source");
      }
      ctx.logger.info("index rebuild started", { index: index.name });
      for await (const p of index.rebuild(replay, ctx.signal)) {
        if (p.done)
          ctx.logger.info("index rebuild finished", {
            index: p.indexName,
            documents: p.documents,
            duration_ms: p.durationMs,
          });
        yield {
          eventsReplayed: BigInt(p.eventsReplayed),
          eventsTotal: BigInt(p.eventsTotal),
          documents: BigInt(p.documents),
          done: p.done,
          // A file name or an Elasticsearch index name, never a server path.
          indexName: basename(p.indexName),
          durationMs: BigInt(p.durationMs),
        };
      }
    },
  };
}

/** The RBAC resource of a search document: the mirror name, or `models/<id>`, `datasets/<id>`. */
export function resourceOfDocument(kind: DocumentKind, id: string): string {
  switch (kind) {
    case DocumentKind.MODEL:
      return `models/${id}`;
    case DocumentKind.DATASET:
      return `datasets/${id}`;
    default:
      return id;
  }
}
