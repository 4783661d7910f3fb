// The harness lives in @nearhub/testing so unit tests beside the code can use it too.
export {
  adminAuth,
  adminToken,
  deleteNamespace,
  dockerAvailable,
  elasticsearch,
  eventually,
  nats,
  s3,
  serviceEnv,
  startNatsServer,
  tempDir,
  uniqueNamespace,
} from "@nearhub/testing";
export type { NatsHandle, S3Handle } from "@nearhub/testing";
