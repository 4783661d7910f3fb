export { indexingEnv } from "./config.js";
export type { IndexingConfig } from "./config.js";
export { startIndexing } from "./service.js";
export { SqliteSearchIndex, toFtsQuery } from "./sqlite-index.js";
export type { IndexHit, IndexQuery, SearchDocument } from "./sqlite-index.js";
