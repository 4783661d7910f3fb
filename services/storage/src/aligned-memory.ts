/** The part of the WebAssembly global used here (the compiler's libraries here do not declare it). */
const { Memory } = (
  globalThis as unknown as {
    WebAssembly: {
      Memory: new (descriptor: { initial: number; maximum: number; shared?: boolean }) => { buffer: ArrayBufferLike };
    };
  }
).WebAssembly;

/** WebAssembly's page: the unit in which its memories are sized. */
const WASM_PAGE = 64 * 1024;
/** The most pages a WebAssembly memory may have (4 GiB). */
const WASM_MAX_PAGES = 65536;

/**
 * A buffer of `size` bytes that starts on a page boundary, so it can be written to or read from
 * disk with O_DIRECT: a WebAssembly memory is page-aligned, where Buffer's and
 * SharedArrayBuffer's memory (from malloc) is not. `shared` gives shared memory, which a worker
 * thread can read in place. Where such a memory cannot be had (address space refused by a
 * `ulimit -v`), an ordinary unaligned one: direct I/O then falls back to the page cache.
 */
export function alignedBuffer(size: number, shared: boolean): Buffer {
  const pages = Math.max(1, Math.ceil(size / WASM_PAGE));
  if (pages <= WASM_MAX_PAGES) {
    try {
      return Buffer.from(new Memory({ initial: pages, maximum: pages, shared }).buffer, 0, size);
    } catch {
      // Fall through to ordinary memory.
    }
  }
  return shared ? Buffer.from(new SharedArrayBuffer(size)) : Buffer.allocUnsafeSlow(size);
}
