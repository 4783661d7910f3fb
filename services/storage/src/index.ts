export { SHA256 } from "./blob-store.js";
export type { BlobStat, BlobStore } from "./blob-store.js";
export { storageEnv } from "./config.js";
export type { StorageConfig } from "./config.js";
export { FsBlobStore } from "./fs-blob-store.js";
export { blobStoreFor, startStorage } from "./service.js";
