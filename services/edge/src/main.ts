import { runServiceMain } from "@nearhub/platform";
import { edgeEnv } from "./config.js";
import { startEdge } from "./service.js";

runServiceMain("edge", edgeEnv, startEdge);
