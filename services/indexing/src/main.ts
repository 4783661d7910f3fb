import { runServiceMain } from "@nearhub/platform";
import { indexingEnv } from "./config.js";
import { startIndexing } from "./service.js";

runServiceMain("indexing", indexingEnv, startIndexing);
