import { runServiceMain } from "@nearhub/platform";
import { inferenceEnv } from "./config.js";
import { startInferenceGateway } from "./service.js";

runServiceMain("inference-gateway", inferenceEnv, startInferenceGateway);
