import { runServiceMain } from "@nearhub/platform";
import { storageEnv } from "./config.js";
import { startStorage } from "./service.js";

runServiceMain("storage", storageEnv, startStorage);
