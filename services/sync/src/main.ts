import { runServiceMain } from "@nearhub/platform";
import { syncEnv } from "./config.js";
import { startSync } from "./service.js";

runServiceMain("sync", syncEnv, startSync);
