import { AuditEventSchema } from "./gen/nearhub/audit/v1/audit_pb.js";
import {
  ModelFailedEventSchema,
  ModelLoadedEventSchema,
  ModelUnloadedEventSchema,
} from "./gen/nearhub/inference/v1/events_pb.js";
import {
  RefUpdatedEventSchema,
  RepoDeletedEventSchema,
  RevisionPublishedEventSchema,
} from "./gen/nearhub/storage/v1/registry_pb.js";
import { BlobCorruptEventSchema, BlobStoredEventSchema } from "./gen/nearhub/storage/v1/storage_pb.js";
import {
  MirrorAddedEventSchema,
  MirrorFailedEventSchema,
  MirrorPausedEventSchema,
  MirrorRemovedEventSchema,
  MirrorSyncedEventSchema,
} from "./gen/nearhub/sync/v1/sync_pb.js";
import { ModelMirrorFailedEventSchema, ModelMirrorSyncedEventSchema } from "./gen/nearhub/sync/v1/model_mirror_pb.js";
import { defineEvent } from "./event-def.js";

export { defineEvent } from "./event-def.js";
export type { EventDef } from "./event-def.js";

// The catalogue of public events: downstream automation subscribes to these subjects, so
// names and bodies only change compatibly.

/** `nearhub.events.mirror.git.added`: a git mirror was defined or its settings changed. */
export const mirrorAdded = defineEvent("mirror", "git.added", MirrorAddedEventSchema);
/** `nearhub.events.mirror.git.removed`: a git mirror definition was removed. */
export const mirrorRemoved = defineEvent("mirror", "git.removed", MirrorRemovedEventSchema);
/** `nearhub.events.mirror.git.synced`: a sync changed served refs (each with old and new sha). */
export const mirrorSynced = defineEvent("mirror", "git.synced", MirrorSyncedEventSchema);
/** `nearhub.events.mirror.git.failed`: a sync failed; the mirror keeps serving what it had. */
export const mirrorFailed = defineEvent("mirror", "git.failed", MirrorFailedEventSchema);
/** `nearhub.events.mirror.git.paused`: a mirror was paused by a user or by an upstream answer. */
export const mirrorPaused = defineEvent("mirror", "git.paused", MirrorPausedEventSchema);
/** `nearhub.events.mirror.git.resumed`: a paused mirror was resumed. */
export const mirrorResumed = defineEvent("mirror", "git.resumed", MirrorPausedEventSchema);
/** `nearhub.events.mirror.model.synced`: a scheduled model mirror snapshotted a (new) commit. */
export const modelMirrorSynced = defineEvent("mirror", "model.synced", ModelMirrorSyncedEventSchema);
/** `nearhub.events.mirror.model.failed`: a model mirror snapshot failed; the last commit keeps serving. */
export const modelMirrorFailed = defineEvent("mirror", "model.failed", ModelMirrorFailedEventSchema);
/** `nearhub.events.storage.blob.stored`: a new blob became visible in storage. */
export const blobStored = defineEvent("storage", "blob.stored", BlobStoredEventSchema);
/** `nearhub.events.storage.blob.corrupt`: a scrub found a blob whose bytes do not hash to its name. */
export const blobCorrupt = defineEvent("storage", "blob.corrupt", BlobCorruptEventSchema);
/** `nearhub.events.registry.revision.published`: a model/dataset/space revision was published. */
export const revisionPublished = defineEvent("registry", "revision.published", RevisionPublishedEventSchema);
/** `nearhub.events.registry.ref.updated`: a branch or tag was created, moved or deleted. */
export const refUpdated = defineEvent("registry", "ref.updated", RefUpdatedEventSchema);
/** `nearhub.events.registry.repo.deleted`: a repo and its revisions were deleted. */
export const repoDeleted = defineEvent("registry", "repo.deleted", RepoDeletedEventSchema);
/** `nearhub.events.inference.model.loaded`: a model version became ready on a gateway. */
export const modelLoaded = defineEvent("inference", "model.loaded", ModelLoadedEventSchema);
/** `nearhub.events.inference.model.unloaded`: a model version was unloaded and its memory freed. */
export const modelUnloaded = defineEvent("inference", "model.unloaded", ModelUnloadedEventSchema);
/** `nearhub.events.inference.model.failed`: a model version could not be loaded. */
export const modelFailed = defineEvent("inference", "model.failed", ModelFailedEventSchema);
/** The body of every `nearhub.audit.<service>.<action>` message (not under `events.`). */
export const auditSchema = AuditEventSchema;
