/** Bytes as `12.3 MB`. */
export function formatBytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let v = n;
  let u = 0;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u] ?? "B"}`;
}

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h > 0
    ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}`
    : `${m}:${String(r).padStart(2, "0")}`;
}

/**
 * A progress bar with speed and ETA. On a terminal it redraws one line with `\r` ten times a
 * second; otherwise (a log, a pipe) it prints a plain line every few seconds.
 */
export class Progress {
  private done = 0;
  private readonly started = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private lastLine = 0;
  /** Recent (time, bytes) samples for the speed: the last few seconds, not the whole run. */
  private samples: Array<[number, number]> = [];
  private readonly tty: boolean;

  constructor(
    private readonly label: string,
    private total: number,
    private readonly out: NodeJS.WriteStream = process.stderr,
    private readonly quiet = false,
  ) {
    this.tty = Boolean(out.isTTY);
    if (!quiet) {
      this.timer = setInterval(() => this.render(false), this.tty ? 100 : 1000);
      this.timer.unref();
    }
  }

  /** Adds bytes to the total (more work found). */
  grow(bytes: number): void {
    this.total += bytes;
  }

  add(bytes: number): void {
    this.done += bytes;
  }

  private speed(now: number): number {
    this.samples.push([now, this.done]);
    while (this.samples.length > 2 && now - this.samples[0]![0] > 5_000) this.samples.shift();
    const [t0, b0] = this.samples[0]!;
    const seconds = (now - t0) / 1000;
    return seconds > 0 ? (this.done - b0) / seconds : 0;
  }

  private line(now: number): string {
    const speed = this.speed(now);
    const fraction = this.total > 0 ? Math.min(1, this.done / this.total) : 1;
    const eta = speed > 0 ? (this.total - this.done) / speed : Infinity;
    const width = 24;
    const filled = Math.round(fraction * width);
    return `${this.label} [${"#".repeat(filled)}${".".repeat(width - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}% ${formatBytes(this.done)}/${formatBytes(this.total)} ${formatBytes(speed)}/s ETA ${formatEta(eta)}`;
  }

  private render(final: boolean): void {
    if (this.quiet) return;
    const now = Date.now();
    if (this.tty) {
      this.out.write(`\r${this.line(now)}\x1b[K${final ? "\n" : ""}`);
    } else if (final || now - this.lastLine >= 5_000) {
      this.lastLine = now;
      this.out.write(`${this.line(now)}\n`);
    }
  }

  /** Stops redrawing and prints the final line with the average speed. */
  finish(): { seconds: number; bytesPerSecond: number } {
    if (this.timer) clearInterval(this.timer);
    const seconds = (Date.now() - this.started) / 1000;
    this.samples = [[this.started, 0]];
    this.render(true);
    return { seconds, bytesPerSecond: seconds > 0 ? this.done / seconds : 0 };
  }
}
