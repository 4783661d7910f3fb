/**
 * Imported first by main.ts, before anything touches libuv's thread pool (which reads
 * UV_THREADPOOL_SIZE once, on first use). Storage does most of its work as fs calls on that
 * pool, and an fsync holds a thread for milliseconds: with the default 4 threads, 64 small
 * uploads at once queue behind a few fsyncs. An operator's own setting wins.
 */
export const STORAGE_THREADPOOL_SIZE = 32;

process.env["UV_THREADPOOL_SIZE"] ??= String(STORAGE_THREADPOOL_SIZE);
