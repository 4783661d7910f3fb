import { runServiceMain } from "@nearhub/platform";
import { storageEnv } from "./config.js";
import { tuneHeapForStreaming } from "./heap-tuning.js";
import { startStorage } from "./service.js";

tuneHeapForStreaming();
runServiceMain("storage", storageEnv, startStorage);
