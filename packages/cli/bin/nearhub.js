#!/usr/bin/env node
// The `nearhub` command as npm links it at install time, before the CLI is compiled: the CLI
// itself is dist/bin.js, built by `npm run build` (or `npm start`).
try {
  await import("../dist/bin.js");
} catch (error) {
  if (error?.code === "ERR_MODULE_NOT_FOUND" && String(error.message).includes("dist/bin.js")) {
    process.stderr.write("nearhub: the CLI is not built yet; run `npm run build` (or `npm start`) first\n");
    process.exit(1);
  }
  throw error;
}
