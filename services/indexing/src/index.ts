export { indexingEnv } from "./config.js";
export type { IndexingConfig } from "./config.js";
export { startIndexing } from "./service.js";
export { SqliteSearchIndex, toFtsQuery } from "./sqlite-index.js";
export { ElasticsearchBackend, ElasticsearchIndex } from "./elasticsearch-index.js";
export { LiveIndex, SqliteBackend } from "./live-index.js";
export type { IndexBackend, RebuildProgress, Replay } from "./live-index.js";
export { newDocument, newQuery, remove, upsert } from "./document.js";
export type {
  DocumentFile,
  IndexFilters,
  IndexHit,
  IndexOp,
  IndexQuery,
  IndexSuggestion,
  SearchDocument,
  SearchIndex,
  SearchResult,
} from "./document.js";
export { mirrorDocument, projector } from "./projector.js";
export { searchApi } from "./search-api.js";
