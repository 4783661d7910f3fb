import { setFlagsFromString } from "node:v8";

/**
 * Lets V8's old generation grow to four times its live size before a major collection, for a
 * process that streams blobs (the storage service; `nearhub upload` and `download`).
 *
 * Every gRPC message and every socket read is a new ArrayBuffer outside the heap: gigabytes of
 * them per gigabyte moved. With V8's default growth, the small old generation of such a
 * process sits close enough to its limit that this churn keeps starting major collections
 * (about sixty per GiB measured, each marking the whole heap), which cost more CPU than the
 * transfer itself. Measured on the storage bench: 1 GiB uploaded, the storage process's user
 * CPU went from 3.8 to 2.9 s, the client's from 3.7 to 1.6 s. Memory: the heap may reach four
 * times what is live (tens of MB here) before it is collected.
 */
export function tuneHeapForStreaming(): void {
  setFlagsFromString("--heap-growing-percent=300");
}

/**
 * glibc malloc settings for a process that streams blobs, as `GLIBC_TUNABLES` (read when a
 * process starts, so set by whoever starts it: `nearhub up`, compose, Kubernetes, the bench).
 *
 * Every received gRPC message is a new 4 MiB buffer. Above glibc's mmap threshold (128 KiB,
 * raised on the fly only up to the largest freed block) each one is a fresh mapping, whose pages
 * the kernel must fault in and zero and then unmap: a gigabyte of page faults per gigabyte
 * moved. With the threshold at 32 MiB the buffers come from the heap and are reused, and the
 * trim threshold keeps freed heap memory for the next ones. Measured on the storage bench
 * (alternating runs): 1 GiB upload 182 / 174 → 223 / 251 MB/s, storage CPU 5.5 / 5.9 → 4.8 /
 * 4.2 s per GiB. Memory: up to 256 MiB of freed heap may stay mapped. Ignored where the C library
 * is not glibc (Alpine's musl).
 */
export const STREAMING_MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456";

/** `GLIBC_TUNABLES` with {@link STREAMING_MALLOC_TUNABLES} added, keeping any tunables already set. */
export function streamingMallocEnv(current: string | undefined): string {
  if (!current) return STREAMING_MALLOC_TUNABLES;
  const names = new Set(current.split(":").map((t) => t.split("=")[0]));
  const added = STREAMING_MALLOC_TUNABLES.split(":").filter((t) => !names.has(t.split("=")[0]));
  return [current, ...added].join(":");
}
