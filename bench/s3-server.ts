/**
 * The storage bench's S3 server in a process of its own (s3rver, or whatever `s3()` of
 * @nearhub/testing finds: S3_ENDPOINT, a MinIO container), as an S3 server is deployed: not
 * sharing a thread with the load it measures. s3rver is JavaScript, so in the bench's own
 * process it took turns with the client it served, and the minio client and nearhub's gRPC
 * client put unequal load on that thread. Sends `{type: "ready", …}` over IPC; `stop` ends it.
 */
import { s3 } from "@nearhub/testing";

export type S3ServerMessage =
  { type: "ready"; endpoint: string; accessKey: string; secretKey: string; region: string } | { type: "stopped" };

const server = await s3();
process.on("message", (m: { type: string }) => {
  if (m.type !== "stop") return;
  void server
    .stop()
    .finally(() => process.send?.({ type: "stopped" } satisfies S3ServerMessage, () => process.exit(0)));
});
process.send?.({
  type: "ready",
  endpoint: server.endpoint,
  accessKey: server.accessKey,
  secretKey: server.secretKey,
  region: server.region,
} satisfies S3ServerMessage);
