// Runs node's test runner over the test files of a suite. Node 20's `--test` does not expand
// glob patterns, so the files are collected here. Usage: node scripts/run-tests.mjs unit|integration
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";

const suites = {
  unit: { roots: ["packages", "services"], under: "src", also: ["bench"], concurrency: 2 },
  integration: { roots: ["tests"], under: "", also: [], concurrency: 1 },
};
const suite = suites[process.argv[2] ?? ""];
if (!suite) {
  console.error("usage: node scripts/run-tests.mjs unit|integration");
  process.exit(2);
}

function walk(dir, out) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name === "node_modules" || entry.name === "dist") continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) walk(path, out);
    else if (entry.name.endsWith(".test.ts")) out.push(path);
  }
  return out;
}

const files = [];
for (const root of suite.roots) {
  if (!suite.under) {
    walk(root, files);
    continue;
  }
  for (const pkg of readdirSync(root, { withFileTypes: true })) {
    if (pkg.isDirectory()) {
      try {
        walk(join(root, pkg.name, suite.under), files);
      } catch {
        // a package without src/
      }
    }
  }
}
// Folders whose every test file belongs to the suite (the benchmarks' own helpers).
for (const dir of suite.also) walk(dir, files);
files.sort();
const child = spawn(
  process.execPath,
  [
    "--conditions=development",
    "--import",
    "tsx",
    "--test",
    "--test-timeout=300000",
    `--test-concurrency=${suite.concurrency}`,
    ...files,
  ],
  { stdio: "inherit" },
);
child.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
