/**
 * Group commit of an operation per key (a folder's fsync, a rescan): a caller waits for a run
 * that starts after its call, and every caller that arrives while one is running shares the
 * next one.
 */
export class GroupSync {
  private readonly state = new Map<string, { running: Promise<void>; queued?: Promise<void> }>();

  constructor(private readonly syncOnce: (key: string) => Promise<void>) {}

  sync(key: string): Promise<void> {
    const entry = this.state.get(key);
    if (!entry) return this.start(key);
    // The running sync may have begun before the caller's change: wait for the next one.
    entry.queued ??= entry.running.then(
      () => this.start(key),
      () => this.start(key),
    );
    return entry.queued;
  }

  private start(key: string): Promise<void> {
    const entry: { running: Promise<void>; queued?: Promise<void> } = { running: Promise.resolve() };
    entry.running = this.syncOnce(key).finally(() => {
      if (this.state.get(key) === entry && entry.queued === undefined) this.state.delete(key);
    });
    this.state.set(key, entry);
    return entry.running;
  }
}
