import { AuditEventSchema } from "./gen/nearhub/audit/v1/audit_pb.js";
import { BlobStoredEventSchema } from "./gen/nearhub/storage/v1/storage_pb.js";
import { MirrorAddedEventSchema, MirrorRemovedEventSchema } from "./gen/nearhub/sync/v1/sync_pb.js";
import { defineEvent } from "./event-def.js";

export { defineEvent } from "./event-def.js";
export type { EventDef } from "./event-def.js";

// The catalogue of public events: downstream automation subscribes to these subjects, so
// names and bodies only change compatibly.

/** `nearhub.events.mirror.added`: a git mirror was defined or its settings changed. */
export const mirrorAdded = defineEvent("mirror", "added", MirrorAddedEventSchema);
/** `nearhub.events.mirror.removed`: a git mirror definition was removed. */
export const mirrorRemoved = defineEvent("mirror", "removed", MirrorRemovedEventSchema);
/** `nearhub.events.storage.blob.stored`: a new blob became visible in storage. */
export const blobStored = defineEvent("storage", "blob.stored", BlobStoredEventSchema);
/** The body of every `nearhub.audit.<service>.<action>` message (not under `events.`). */
export const auditSchema = AuditEventSchema;
