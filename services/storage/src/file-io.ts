import { open, type FileHandle } from "node:fs/promises";

/**
 * Writes `bytes` from index `from` on at file position `position` + `from`, looping over short
 * writes (a positioned write may take fewer bytes than asked).
 */
export async function writeAll(file: FileHandle, bytes: Uint8Array, position: number, from = 0): Promise<void> {
  for (let at = from; at < bytes.byteLength;) {
    at += (await file.write(bytes, at, bytes.byteLength - at, position + at)).bytesWritten;
  }
}

/**
 * Reads up to `length` bytes at `position` into the start of `buffer`, looping over short reads;
 * returns how many it read, fewer only at the end of the file.
 */
export async function readAll(file: FileHandle, buffer: Uint8Array, length: number, position: number): Promise<number> {
  let read = 0;
  for (let n = -1; read < length && n !== 0; read += n) {
    n = (await file.read(buffer, read, length - read, position + read)).bytesRead;
  }
  return read;
}

/** fsyncs a folder, so the entries created or removed in it survive a power cut. */
export async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
