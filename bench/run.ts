/** Runs every benchmark in turn; each prints its figures and its ratio against a baseline. */
import { main as git } from "./git.js";
import { main as hf } from "./hf.js";
import { main as inference } from "./inference.js";
import { main as rpcOverhead } from "./rpc-overhead.js";
import { main as search } from "./search.js";
import { main as storage } from "./storage.js";

const benches: Record<string, () => Promise<void>> = {
  "rpc-overhead": rpcOverhead,
  search,
  git,
  inference,
  hf,
  storage,
};
const only = process.argv[2];
for (const [name, run] of Object.entries(benches)) {
  if (only && only !== name) continue;
  await run();
}
