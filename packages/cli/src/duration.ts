const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 };

/** Parses `90`, `90s`, `5m`, `6h`, `1d` (or combinations such as `1h30m`) into seconds. */
export function parseDuration(input: string): number {
  const text = input.trim();
  if (/^\d+$/.test(text)) return Number(text);
  const parts = [...text.matchAll(/(\d+)([smhd])/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join("") !== text) {
    throw new Error(`duration ${JSON.stringify(input)} must look like 90s, 5m, 6h or 1d`);
  }
  return parts.reduce((total, [, n, unit]) => total + Number(n) * (UNITS[unit ?? "s"] ?? 1), 0);
}
