import { createHash, randomBytes } from "node:crypto";
import { statSync } from "node:fs";
import { appendFile, mkdir, open, readFile, readdir, rename, rm, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { Code, NearhubError } from "@nearhub/platform";
import { readAll, syncDir, writeAll } from "./file-io.js";
import { GroupSync } from "./group-sync.js";

/** "NHPK": the first bytes of every record, so a scan recognises where a record starts. */
const MAGIC = 0x4e48_504b;
/** "NHPH": the first bytes of a hint file. */
const HINT_MAGIC = 0x4e48_5048;
const HINT_VERSION = 1;
/**
 * A record's header: magic u32 @0, kind u8 @4, size u32 @8, time f64 @16, raw sha256 @24,
 * and @56 the first 8 bytes of the sha256 of bytes 0..56 (a tombstone has no payload for the
 * blob's sha256 to vouch for, and a torn header must not be read as a size).
 */
const HEADER = 64;
const PUT = 1;
const TOMBSTONE = 2;
/** A hint entry: kind u8 @0, size u32 @4, offset f64 @8, time f64 @16, raw sha256 @24. */
const HINT_ENTRY = 56;
/** A hint's head: magic u32 @0, version u32 @4, covered bytes f64 @8, sealed u8 @16, count u32 @20. */
const HINT_HEAD = 32;
/** Bytes read per step of a scan; twice the largest record a scan accepts. */
const SCAN_WINDOW = 8 * 1024 * 1024;
/** The most bytes one group commit writes (the queue beyond waits for the next one). */
const BATCH_BYTES = 4 * 1024 * 1024;
const PACK_NAME = /^pack-[0-9a-f]{16}-\d{8}\.pack$/;
/**
 * How much later than its original a compacted copy of a record is timed: later, so that
 * whichever of the two an instance reads first the copy wins; by far less than a millisecond,
 * so that any tombstone written after the original (timed at least 1 ms after it) still wins.
 */
const COPY_STEP = 1 / 1024;
/** How long a removed pack's descriptor stays open for reads that were already under way. */
const CLOSE_AFTER_MS = 60_000;

/** A pack file: one writer's append-only log of records. */
interface Pack {
  name: string;
  path: string;
  /** Written by this instance (never rescanned: the index learns its records as they commit). */
  own: boolean;
  /** Kept open for positioned reads (and, for the active pack, writes). */
  file?: Promise<FileHandle>;
  /** Bytes from the start known to be whole, verified records. */
  valid: number;
  /** The file's size when last scanned: an unchanged size needs no new scan. */
  seen: number;
  /** Rolled over by its writer: it never grows again, so refreshes skip it. */
  sealed: boolean;
  /**
   * Its records, gathered for a hint: this instance's in its own active pack (for the hint
   * written when it is sealed), and while opening, those of another writer's unsealed pack.
   */
  records?: HintRecord[];
  /** How many bytes of it the hint read on opening covered. */
  hinted?: number;
}

interface HintRecord {
  kind: number;
  sha256: Buffer;
  offset: number;
  size: number;
  time: number;
}

/** Where a packed blob's bytes are. */
export interface PackedEntry {
  pack: Pack;
  /** Position of the blob's first byte in the pack. */
  offset: number;
  size: number;
  /** When it was written (ms since the epoch): GC's modifiedAt. */
  time: number;
}

interface Pending {
  kind: number;
  sha256: string;
  bytes?: Uint8Array;
  /** For compaction's copy of a record: the time it is written with (see {@link COPY_STEP}). */
  copy?: number;
  resolve: () => void;
  reject: (error: unknown) => void;
}

function checksum(header: Buffer): Buffer {
  return createHash("sha256").update(header.subarray(0, 56)).digest().subarray(0, 8);
}

function encodeHeader(kind: number, size: number, time: number, sha256: string): Buffer {
  const header = Buffer.alloc(HEADER);
  header.writeUInt32LE(MAGIC, 0);
  header.writeUInt8(kind, 4);
  header.writeUInt32LE(size, 8);
  header.writeDoubleLE(time, 16);
  header.write(sha256, 24, 32, "hex");
  checksum(header).copy(header, 56);
  return header;
}

/** The header at `at`, or undefined when it is not a whole, intact one. */
function decodeHeader(
  buffer: Buffer,
  at: number,
): { kind: number; size: number; time: number; sha256: string } | undefined {
  if (buffer.readUInt32LE(at) !== MAGIC) return undefined;
  const header = buffer.subarray(at, at + HEADER);
  if (!checksum(header).equals(header.subarray(56, 64))) return undefined;
  const kind = header.readUInt8(4);
  const size = header.readUInt32LE(8);
  if (kind !== PUT && kind !== TOMBSTONE) return undefined;
  if (kind === TOMBSTONE && size !== 0) return undefined;
  if (HEADER + size > SCAN_WINDOW / 2) return undefined;
  return { kind, size, time: header.readDoubleLE(16), sha256: header.toString("hex", 24, 56) };
}

/**
 * Small blobs as records appended to pack files (`<dir>/pack-<writer>-<seq>.pack`), so that
 * storing one costs a share of one write and one fdatasync instead of a file's creation, and
 * reading one a single positioned read on a descriptor kept open.
 *
 * Each instance appends only to packs named with its own random writer id, so several
 * processes on one folder never interleave writes. Concurrent puts are group-committed: one
 * writer writes every queued record with one write and one fdatasync, and only then are they
 * visible and answered, so an answered put survives a crash at any instant. A record carries
 * its blob's raw sha256 (which a scan checks against the bytes) and a checksum of its header,
 * so a torn or corrupt tail is recognised and ignored, and the records before it kept.
 *
 * The index (sha256 → pack, offset, size, time) is rebuilt on open by scanning every pack;
 * a sealed pack (rolled over at `sealAt` bytes, or closed) has a hint file listing its
 * records, with a checksum of its own, so it is not hashed again (an opener also writes a hint
 * covering what it hashed of a pack left unsealed). Other instances' packs grow under this one:
 * a lookup that misses rescans them (one rescan shared by concurrent misses) before saying
 * absent. Removal appends a tombstone; records order by their timestamps, and a put at the
 * same millisecond as a tombstone wins, so a blob is never lost to a tie. A removal also
 * appends a byte to `<dir>/removals`, which lookups that hit compare with the size they last
 * saw, so one replica's removal is not hidden by another's stale index.
 *
 * Space of removed blobs is reclaimed by {@link compact}, which rewrites mostly removed
 * sealed packs. Another instance's records are visible to this one once written, possibly a
 * moment before their writer's fdatasync returns (as a linked file was before its folder's).
 */
export class BlobPack {
  private readonly writer = randomBytes(8).toString("hex");
  private sequence = 0;
  private readonly packs = new Map<string, Pack>();
  private readonly index = new Map<string, PackedEntry>();
  /** The latest tombstone time per blob, to order records read out of order across packs. */
  private readonly removed = new Map<string, number>();
  private active: Pack | undefined;
  private queue: Pending[] = [];
  /** Puts queued or being written, by sha256: a second put of one blob waits for the first. */
  private readonly queued = new Map<string, Promise<void>>();
  private writing = false;
  /** The time of this instance's latest record: record times never go backwards. */
  private clock = 0;
  /** The size of `removals` when the last rescan began. */
  private removalsSeen = -1;
  private readonly rescans = new GroupSync(() => this.scan());
  private readonly removalsPath: string;
  private readonly sealAt: number;
  private readonly settleMs: number;
  private readonly hintAfter: number;
  private opened = false;

  /**
   * `sealAt`: the size at which the active pack is sealed and a new one begun. `settleMs`: how
   * old a pack with a torn tail must be for an opener to cut the tail off the file (a writer
   * never leaves one for longer than a write takes, so by then its writer is gone).
   * `hintAfter`: how many bytes of another writer's unsealed pack an opener must have had to
   * hash before it writes a hint covering them (such a pack is left by a writer that stopped
   * without closing; without a hint every later open would hash it again).
   */
  constructor(
    private readonly dir: string,
    options: { sealAt?: number; settleMs?: number; hintAfter?: number } = {},
  ) {
    this.sealAt = options.sealAt ?? 256 * 1024 * 1024;
    this.settleMs = options.settleMs ?? 60_000;
    this.hintAfter = options.hintAfter ?? 1024 * 1024;
    this.removalsPath = join(dir, "removals");
  }

  /** Makes the folder and builds the index from the packs in it. */
  async open(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await this.rescans.sync("");
    this.opened = true;
  }

  /** Seals the active pack (so later opens read its hint) and closes every descriptor. */
  async close(): Promise<void> {
    while (this.writing || this.queue.length > 0) await new Promise((resolve) => setImmediate(resolve));
    if (this.active) await this.seal(this.active);
    this.active = undefined;
    this.opened = false;
    await Promise.all(
      [...this.packs.values()].map(async (pack) => {
        const file = pack.file;
        pack.file = undefined;
        if (file) await (await file.catch(() => undefined))?.close();
      }),
    );
  }

  /**
   * Rewrites the live records of every sealed pack whose live bytes are under half of it into
   * the active pack (durably, timed a hair later than the originals: see {@link COPY_STEP}),
   * then deletes the old pack and its hint. Any instance may compact any sealed pack: a
   * sealed pack never grows, and two compacting one pack at once just copy it twice. A pack
   * with a record whose bytes no longer match its sha256 is left alone, for scrub to report.
   * Returns how many packs were removed.
   */
  async compact(): Promise<number> {
    this.assertOpen();
    await this.refresh();
    const live = new Map<Pack, Array<[string, PackedEntry]>>();
    for (const [sha256, entry] of this.index) {
      if (!entry.pack.sealed) continue;
      const entries = live.get(entry.pack) ?? [];
      entries.push([sha256, entry]);
      live.set(entry.pack, entries);
    }
    let removed = 0;
    // A snapshot: packs the copies fill meanwhile are not candidates.
    for (const pack of [...this.packs.values()]) {
      if (!pack.sealed) continue;
      const entries = live.get(pack) ?? [];
      const bytes = entries.reduce((n, [, e]) => n + HEADER + e.size, 0);
      if (bytes >= pack.valid / 2) continue;
      if (await this.compactPack(pack, entries)) removed++;
    }
    if (removed > 0) await this.announceRemovals();
    return removed;
  }

  private async compactPack(pack: Pack, entries: Array<[string, PackedEntry]>): Promise<boolean> {
    const copies: Array<Promise<void>> = [];
    for (const [sha256, entry] of entries) {
      const bytes = await this.read(entry, 0, entry.size);
      if (createHash("sha256").update(bytes).digest("hex") !== sha256) {
        await Promise.allSettled(copies);
        return false;
      }
      copies.push(this.enqueue({ kind: PUT, sha256, bytes, copy: entry.time + COPY_STEP }));
    }
    await Promise.all(copies);
    // Every live record is in another pack now (a put or removal since went elsewhere too).
    for (const entry of this.index.values()) if (entry.pack === pack) return false;
    await this.drop(pack);
    return true;
  }

  /** Deletes a pack (its hint first: a pack without a hint is still read whole). */
  private async drop(pack: Pack): Promise<void> {
    await rm(this.hintPath(pack), { force: true });
    await rm(pack.path, { force: true });
    await syncDir(this.dir);
    this.forget(pack);
  }

  /** Forgets a pack that is gone; reads already under way on its descriptor may finish. */
  private forget(pack: Pack): void {
    this.packs.delete(pack.name);
    for (const [sha256, entry] of this.index) if (entry.pack === pack) this.index.delete(sha256);
    const file = pack.file;
    pack.file = undefined;
    if (file) {
      setTimeout(() => void file.then((f) => f.close()).catch(() => undefined), CLOSE_AFTER_MS).unref();
    }
  }

  /**
   * The blob's entry if this instance knows it; rescans first when another instance removed
   * blobs since the last rescan. Does not rescan on a miss (see {@link find}).
   */
  async lookup(sha256: string): Promise<PackedEntry | undefined> {
    if (this.removalsChanged()) await this.refresh();
    return this.index.get(sha256);
  }

  /**
   * Whether the index is current enough to answer from without I/O (no removals by another
   * instance since the last rescan): then {@link entry} answers what {@link lookup} would.
   */
  current(): boolean {
    return !this.removalsChanged();
  }

  /** The blob's entry in the index as it is (see {@link current}). */
  entry(sha256: string): PackedEntry | undefined {
    return this.index.get(sha256);
  }

  /** The blob's entry; a miss rescans the packs (other instances may have added it) first. */
  async find(sha256: string): Promise<PackedEntry | undefined> {
    const entry = await this.lookup(sha256);
    if (entry) return entry;
    await this.refresh();
    return this.index.get(sha256);
  }

  /** Reads what other instances appended since the last rescan; concurrent callers share one. */
  refresh(): Promise<void> {
    return this.rescans.sync("");
  }

  /**
   * Stores a verified blob (the caller checked its sha256 and size). Answers once its record
   * is durable; `created` is false when it was already stored or being stored.
   */
  async put(sha256: string, bytes: Uint8Array): Promise<{ created: boolean }> {
    this.assertOpen();
    if (this.current() ? this.index.has(sha256) : await this.lookup(sha256)) return { created: false };
    const queued = this.queued.get(sha256);
    if (queued) {
      await queued;
      return { created: false };
    }
    const written = this.enqueue({ kind: PUT, sha256, bytes });
    this.queued.set(sha256, written);
    await written;
    return { created: true };
  }

  /** Removes a packed blob (a durable tombstone); false when it is not packed. */
  async remove(sha256: string): Promise<boolean> {
    this.assertOpen();
    if (!(await this.find(sha256))) return false;
    await this.enqueue({ kind: TOMBSTONE, sha256 });
    return true;
  }

  /** `length` bytes of a packed blob from `offset` (fewer at its end), in one positioned read. */
  async read(entry: PackedEntry, offset: number, length: number): Promise<Buffer> {
    const n = Math.max(0, Math.min(length, entry.size - offset));
    const buffer = Buffer.allocUnsafe(n);
    if (n === 0) return buffer;
    const read = await readAll(await this.fileOf(entry.pack), buffer, n, entry.offset + offset);
    if (read < n) {
      throw new NearhubError(
        Code.DataLoss,
        `pack ${entry.pack.path} ends before the blob at ${entry.offset} (${entry.size} bytes); the pack was truncated by hand`,
      );
    }
    return buffer;
  }

  /** Every packed blob, after a rescan. */
  async entries(): Promise<Array<{ sha256: string; size: number; modifiedAt: number }>> {
    this.assertOpen();
    await this.refresh();
    return [...this.index].map(([sha256, e]) => ({ sha256, size: e.size, modifiedAt: e.time }));
  }

  /** Whether `sha256` is in the index now, without I/O. */
  has(sha256: string): boolean {
    return this.index.has(sha256);
  }

  private assertOpen(): void {
    if (!this.opened) throw new NearhubError(Code.Internal, "BlobPack used before open(); call open() first");
  }

  /**
   * Whether another instance removed blobs since the last rescan. A synchronous stat of one
   * small file: a microsecond on the event loop, against a thread-pool round trip.
   */
  private removalsChanged(): boolean {
    return (statSync(this.removalsPath, { throwIfNoEntry: false })?.size ?? 0) !== this.removalsSeen;
  }

  private enqueue(item: Omit<Pending, "resolve" | "reject">): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ ...item, resolve, reject });
      if (!this.writing) {
        this.writing = true;
        // Puts whose messages arrived in the same turn of the event loop join the first write.
        setImmediate(() => void this.drain());
      }
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        let bytes = 0;
        let n = 0;
        while (n < this.queue.length && (n === 0 || bytes < BATCH_BYTES)) {
          bytes += HEADER + (this.queue[n]!.bytes?.byteLength ?? 0);
          n++;
        }
        await this.commit(this.queue.splice(0, n), bytes);
      }
    } finally {
      this.writing = false;
    }
  }

  /** Writes a batch with one write and one fdatasync, then makes it visible and answers it. */
  private async commit(batch: Pending[], total: number): Promise<void> {
    let pack: Pack | undefined;
    try {
      pack = await this.writable(total);
      const file = await pack.file!;
      const parts: Buffer[] = [];
      const records: HintRecord[] = [];
      let at = pack.valid;
      for (const item of batch) {
        const now = Math.max(Date.now(), this.clock);
        let time: number;
        if (item.copy !== undefined) {
          time = item.copy;
        } else if (item.kind === PUT) {
          // Not before a tombstone this instance knows of: the put must win over it.
          time = Math.max(now, this.removed.get(item.sha256) ?? 0);
        } else {
          // After every record this instance wrote and after the put it removes.
          const entry = this.index.get(item.sha256);
          time = Math.max(now, (entry?.time ?? 0) + 1, this.clock + 1);
        }
        if (item.copy === undefined) this.clock = time;
        const size = item.bytes?.byteLength ?? 0;
        const header = encodeHeader(item.kind, size, time, item.sha256);
        parts.push(header);
        if (item.bytes) parts.push(Buffer.from(item.bytes.buffer, item.bytes.byteOffset, size));
        records.push({ kind: item.kind, sha256: header.subarray(24, 56), offset: at + HEADER, size, time });
        at += HEADER + size;
      }
      await writeAll(file, Buffer.concat(parts, at - pack.valid), pack.valid);
      await file.datasync();
      if (batch.some((item) => item.kind === TOMBSTONE)) await this.announceRemovals();
      pack.valid = pack.seen = at;
      for (let i = 0; i < batch.length; i++) {
        const record = records[i]!;
        pack.records!.push(record);
        this.apply(record.kind, batch[i]!.sha256, record.time, pack, record.offset, record.size);
      }
    } catch (error) {
      // The pack may now end in a torn record: write no more to it (what it holds stays readable).
      if (pack && this.active === pack) this.active = undefined;
      for (const item of batch) {
        if (item.kind === PUT && item.copy === undefined) this.queued.delete(item.sha256);
        item.reject(error);
      }
      return;
    }
    for (const item of batch) {
      if (item.kind === PUT && item.copy === undefined) this.queued.delete(item.sha256);
      item.resolve();
    }
  }

  /** The pack to append `total` bytes to: the active one, or a new one when it is full. */
  private async writable(total: number): Promise<Pack> {
    if (this.active && this.active.valid > 0 && this.active.valid + total > this.sealAt) {
      const full = this.active;
      this.active = undefined;
      await this.seal(full);
    }
    if (this.active) return this.active;
    const name = `pack-${this.writer}-${String(this.sequence++).padStart(8, "0")}.pack`;
    const path = join(this.dir, name);
    const file = await open(path, "wx+");
    // The new name is durable before any record in it is answered.
    await syncDir(this.dir);
    const pack: Pack = {
      name,
      path,
      own: true,
      file: Promise.resolve(file),
      valid: 0,
      seen: 0,
      sealed: false,
      records: [],
    };
    this.packs.set(name, pack);
    this.active = pack;
    return pack;
  }

  /**
   * Tells other instances that blobs were removed. This instance's own append does not make
   * its next lookup rescan, unless another instance's append came in between.
   */
  private async announceRemovals(): Promise<void> {
    const before = statSync(this.removalsPath, { throwIfNoEntry: false })?.size ?? 0;
    await appendFile(this.removalsPath, "x");
    if (before === this.removalsSeen) this.removalsSeen = before + 1;
  }

  /** Writes the hint of an own pack that will not grow again. */
  private async seal(pack: Pack): Promise<void> {
    pack.sealed = true;
    await this.writeHint(pack, pack.records ?? [], pack.valid, true);
    pack.records = undefined;
  }

  private hintPath(pack: Pack): string {
    return pack.path.replace(/\.pack$/, ".hint");
  }

  /** A hint file: the records of the first `covered` bytes of `pack`, with a checksum. */
  private async writeHint(pack: Pack, records: HintRecord[], covered: number, sealed: boolean): Promise<void> {
    const body = Buffer.alloc(HINT_HEAD + records.length * HINT_ENTRY);
    body.writeUInt32LE(HINT_MAGIC, 0);
    body.writeUInt32LE(HINT_VERSION, 4);
    body.writeDoubleLE(covered, 8);
    body.writeUInt8(sealed ? 1 : 0, 16);
    body.writeUInt32LE(records.length, 20);
    records.forEach((r, i) => {
      const at = HINT_HEAD + i * HINT_ENTRY;
      body.writeUInt8(r.kind, at);
      body.writeUInt32LE(r.size, at + 4);
      body.writeDoubleLE(r.offset, at + 8);
      body.writeDoubleLE(r.time, at + 16);
      r.sha256.copy(body, at + 24);
    });
    const digest = createHash("sha256").update(body).digest();
    const path = this.hintPath(pack);
    const tmp = `${path}.${this.writer}.tmp`;
    const file = await open(tmp, "w");
    try {
      await writeAll(file, Buffer.concat([body, digest]), 0);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(tmp, path);
    await syncDir(this.dir);
  }

  /** Applies a pack's hint if it has a sound one; a missing or damaged hint is ignored. */
  private async loadHint(pack: Pack): Promise<void> {
    let bytes: Buffer;
    try {
      bytes = await readFile(this.hintPath(pack));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
      throw error;
    }
    if (bytes.byteLength < HINT_HEAD + 32) return;
    const body = bytes.subarray(0, bytes.byteLength - 32);
    if (!createHash("sha256").update(body).digest().equals(bytes.subarray(body.byteLength))) return;
    if (body.readUInt32LE(0) !== HINT_MAGIC || body.readUInt32LE(4) !== HINT_VERSION) return;
    const count = body.readUInt32LE(20);
    if (body.byteLength !== HINT_HEAD + count * HINT_ENTRY) return;
    // A pack cut shorter than its hint (by hand): the hint no longer describes it.
    if ((await (await this.fileOf(pack)).stat()).size < body.readDoubleLE(8)) return;
    for (let i = 0; i < count; i++) {
      const at = HINT_HEAD + i * HINT_ENTRY;
      const record = {
        kind: body.readUInt8(at),
        sha256: body.subarray(at + 24, at + 56),
        offset: body.readDoubleLE(at + 8),
        size: body.readUInt32LE(at + 4),
        time: body.readDoubleLE(at + 16),
      };
      pack.records?.push(record);
      this.apply(record.kind, record.sha256.toString("hex"), record.time, pack, record.offset, record.size);
    }
    pack.valid = pack.hinted = body.readDoubleLE(8);
    pack.sealed = body.readUInt8(16) === 1;
  }

  /** Learns new packs and what other instances appended to theirs. */
  private async scan(): Promise<void> {
    const removals = statSync(this.removalsPath, { throwIfNoEntry: false })?.size ?? 0;
    const opening = !this.opened;
    const fresh: Pack[] = [];
    const names = await readdir(this.dir);
    for (const name of names) {
      if (!PACK_NAME.test(name) || this.packs.has(name)) continue;
      const pack: Pack = { name, path: join(this.dir, name), own: false, valid: 0, seen: -1, sealed: false };
      if (opening) pack.records = [];
      this.packs.set(name, pack);
      fresh.push(pack);
    }
    await Promise.all(fresh.map((pack) => this.loadHint(pack)));
    const growing = [...this.packs.values()].filter((pack) => !pack.own && !pack.sealed);
    await Promise.all(growing.map((pack) => this.scanPack(pack)));
    // Packs compacted away by another instance: their records were copied (durably, before the
    // pack went) into a pack just scanned, where they won over the originals.
    const listed = new Set(names);
    for (const pack of [...this.packs.values()]) if (pack !== this.active && !listed.has(pack.name)) this.forget(pack);
    this.removalsSeen = removals;
    for (const pack of fresh) {
      const records = pack.records;
      pack.records = undefined;
      // Not sealed (its hint, if any, says how far it was read then): a hint for what was
      // hashed now, so the next open starts where this one stopped. Its writer may still append.
      if (records && !pack.sealed && pack.valid - (pack.hinted ?? 0) >= Math.max(1, this.hintAfter))
        await this.writeHint(pack, records, pack.valid, false);
    }
  }

  /** Reads a pack's records past what is known of it, verifying each, up to a torn tail. */
  private async scanPack(pack: Pack): Promise<void> {
    const file = await this.fileOf(pack);
    const { size, mtimeMs } = await file.stat();
    if (size === pack.seen) return;
    // Shorter than what was read of it: cut by hand (the records already read stay known).
    if (size < pack.valid) return;
    pack.seen = size;
    const window = Buffer.allocUnsafe(Math.min(SCAN_WINDOW, size - pack.valid));
    while (pack.valid < size) {
      const n = await readAll(file, window, Math.min(window.byteLength, size - pack.valid), pack.valid);
      let p = 0;
      let verified = 0;
      let torn = false;
      /** A whole record whose bytes do not match its sha256 (see below). */
      let damaged: { sha256: string; time: number; offset: number; size: number } | undefined;
      while (p + HEADER <= n) {
        const header = decodeHeader(window, p);
        if (!header) {
          torn = true;
          break;
        }
        if (p + HEADER + header.size > n) break;
        const offset = pack.valid + p + HEADER;
        if (damaged) {
          // An intact record follows it, so it was durable and answered before this one was
          // written: it is a stored blob whose bytes rotted. It stays listed, so scrub reports it.
          this.apply(PUT, damaged.sha256, damaged.time, pack, damaged.offset, damaged.size);
          pack.records?.push({ kind: PUT, ...damaged, sha256: Buffer.from(damaged.sha256, "hex") });
          damaged = undefined;
        }
        p += HEADER + header.size;
        if (header.kind === PUT) {
          const actual = createHash("sha256")
            .update(window.subarray(offset - pack.valid, offset - pack.valid + header.size))
            .digest("hex");
          if (actual !== header.sha256) {
            // At the tail, a write the crash cut short (never answered): dropped, unless an
            // intact record follows.
            damaged = { sha256: header.sha256, time: header.time, offset, size: header.size };
            continue;
          }
        }
        this.apply(header.kind, header.sha256, header.time, pack, offset, header.size);
        pack.records?.push({
          kind: header.kind,
          sha256: Buffer.from(header.sha256, "hex"),
          offset,
          size: header.size,
          time: header.time,
        });
        verified = p;
      }
      pack.valid += verified;
      if (torn || verified === 0) break;
    }
    if (pack.valid === size) return;
    if (Date.now() - mtimeMs < this.settleMs) {
      // Possibly a write in progress by its writer: look again at the next rescan.
      pack.seen = -1;
      return;
    }
    // A torn tail this old has no live writer behind it (a writer that fails a write leaves
    // that pack for good): cut it off, so no later record can follow it.
    const writable = await open(pack.path, "r+");
    try {
      await writable.truncate(pack.valid);
      await writable.sync();
    } finally {
      await writable.close();
    }
    pack.seen = pack.valid;
  }

  /** Orders a record against what is known: the newest time wins, a put wins a tie. */
  private apply(kind: number, sha256: string, time: number, pack: Pack, offset: number, size: number): void {
    if (kind === PUT) {
      const removedAt = this.removed.get(sha256);
      if (removedAt !== undefined && removedAt > time) return;
      const known = this.index.get(sha256);
      if (known && known.time >= time) return;
      this.index.set(sha256, { pack, offset, size, time });
      return;
    }
    if ((this.removed.get(sha256) ?? -Infinity) < time) this.removed.set(sha256, time);
    const known = this.index.get(sha256);
    if (known && known.time < time) this.index.delete(sha256);
  }

  private fileOf(pack: Pack): Promise<FileHandle> {
    if (!pack.file) {
      const opening = open(pack.path, "r");
      pack.file = opening;
      // A failed open is retried by the next reader.
      opening.catch(() => {
        if (pack.file === opening) pack.file = undefined;
      });
    }
    return pack.file;
  }
}
