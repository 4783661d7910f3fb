/** Runs every benchmark in turn; each prints its figures and its ratio against a baseline. */
import { main as rpcOverhead } from "./rpc-overhead.js";

const benches: Record<string, () => Promise<void>> = { "rpc-overhead": rpcOverhead };
const only = process.argv[2];
for (const [name, run] of Object.entries(benches)) {
  if (only && only !== name) continue;
  await run();
}
