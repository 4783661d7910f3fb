import { commonEnv, port } from "@nearhub/platform";
import type { z } from "zod";

/** The inference gateway's environment. */
export const inferenceEnv = {
  ...commonEnv,
  // Triton's and KServe's default gRPC port, so existing clients need no flag.
  NEARHUB_GRPC_PORT: port(8001),
};

/** The parsed configuration of the inference gateway. */
export type InferenceConfig = z.infer<z.ZodObject<typeof inferenceEnv>>;
