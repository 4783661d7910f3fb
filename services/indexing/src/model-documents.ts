import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, type Client } from "@nearhub/platform";
import { refUpdated, repoDeleted } from "@nearhub/proto/events";
import { RefKind, RepoKind, type RegistryService, type Revision } from "@nearhub/proto/registry";
import { DocumentKind } from "@nearhub/proto/search";
import type { StorageService } from "@nearhub/proto/storage";
import { parse as parseYaml } from "yaml";
import { newDocument, type SearchDocument } from "./document.js";
import { eventTime, type EventHandler } from "./projector.js";

/** Model cards larger than this are indexed by their first 256 KiB. */
const MAX_CARD_BYTES = 256 * 1024;
const CALL_TIMEOUT_MS = 15_000;

/** The storage service's registry and blobs, which model documents are read from. */
export interface RegistryClients {
  registry: Client<typeof RegistryService>;
  storage: Client<typeof StorageService>;
}

/** What a model card's YAML front matter says, as the Hub reads it. */
export interface CardData {
  tags: string[];
  pipelineTag: string;
  libraryName: string;
  license: string;
  /** The card without its front matter. */
  text: string;
}

const strings = (value: unknown): string[] =>
  Array.isArray(value)
    ? value.filter((v): v is string | number => typeof v === "string" || typeof v === "number").map(String)
    : typeof value === "string" || typeof value === "number"
      ? [String(value)]
      : [];

/**
 * Splits a README.md into its YAML front matter (`---` … `---`) and text. A card whose front
 * matter is not valid YAML is still indexed, by its text.
 */
export function parseCard(readme: string): CardData {
  const match = /^---[ \t]*\r?\n([\s\S]*?)\r?\n---[ \t]*(?:\r?\n|$)/.exec(readme);
  let data: Record<string, unknown> = {};
  if (match) {
    try {
      const parsed: unknown = parseYaml(match[1] ?? "", { maxAliasCount: 100 });
      if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) data = parsed as Record<string, unknown>;
    } catch {
      // Invalid front matter: the card text is still worth indexing.
    }
  }
  const languages = strings(data["language"]);
  return {
    tags: [...new Set([...strings(data["tags"]), ...languages])],
    pipelineTag: strings(data["pipeline_tag"])[0] ?? "",
    libraryName: strings(data["library_name"])[0] ?? "",
    license: strings(data["license"])[0] ?? "",
    text: match ? readme.slice(match[0].length) : readme,
  };
}

/** The first heading or paragraph of a card: a one-line description. */
function describe(text: string): string {
  for (const line of text.split(/\r?\n/)) {
    const clean = line.replace(/^#+\s*/, "").trim();
    if (clean && !clean.startsWith("<") && !clean.startsWith("!") && !clean.startsWith("|")) return clean.slice(0, 300);
  }
  return "";
}

/** The index id of a model (`owner/name`) or dataset (`datasets/owner/name`). */
export function documentId(kind: DocumentKind, id: string): string {
  return kind === DocumentKind.DATASET ? `datasets/${id}` : id;
}

/** The document of a model or dataset at one revision. */
export function modelDocument(
  kind: DocumentKind,
  id: string,
  revision: Revision,
  card: CardData,
  version: bigint,
): SearchDocument {
  const slash = id.indexOf("/");
  // Models and datasets share owner/name spaces on the Hub: datasets are kept as
  // `datasets/<id>`, as in the Hub's own paths, so the two never collide.
  const key = documentId(kind, id);
  const files = revision.entries.map((e) => ({ path: e.path, size: Number(e.size) }));
  const created = revision.createdAt ? timestampMs(revision.createdAt) : 0;
  return newDocument({
    id: key,
    kind,
    version,
    title: id,
    description: describe(card.text),
    body: card.text,
    author: slash > 0 ? id.slice(0, slash) : "",
    tags: card.tags,
    pipelineTag: card.pipelineTag,
    libraryName: card.libraryName,
    license: card.license,
    files,
    sizeBytes: files.reduce((sum, f) => sum + f.size, 0),
    sha: revision.commit,
    createdAtMs: created,
    updatedAtMs: created,
  });
}

function documentKind(kind: RepoKind): DocumentKind | undefined {
  if (kind === RepoKind.MODEL) return DocumentKind.MODEL;
  if (kind === RepoKind.DATASET) return DocumentKind.DATASET;
  return undefined;
}

async function readCard(storage: RegistryClients["storage"], sha256: string): Promise<string> {
  const chunks: Uint8Array[] = [];
  for await (const part of storage.getBlob(
    { sha256, offset: 0n, length: BigInt(MAX_CARD_BYTES) },
    { timeoutMs: CALL_TIMEOUT_MS },
  )) {
    chunks.push(part.chunk);
  }
  return new TextDecoder().decode(Buffer.concat(chunks));
}

const notFound = (error: unknown) => NearhubError.from(error).code === Code.NotFound;

/**
 * Model and dataset documents from the registry's events. The document follows the default
 * branch: a `ref.updated` on it reads the revision's manifest (file names, sizes) and its
 * README.md (card text and front matter) from storage. These events carry no generation, so
 * the event's time is the document's version: a late or replayed older update never wins,
 * and `repo.deleted` leaves a tombstone that only a later re-creation passes.
 */
export function registryHandlers(clients: RegistryClients): Record<string, EventHandler> {
  return {
    [refUpdated.type]: async (message) => {
      const event = message.decode(refUpdated);
      const kind = documentKind(event.repo?.kind ?? RepoKind.UNSPECIFIED);
      if (!event.repo?.id || kind === undefined || event.kind !== RefKind.BRANCH) return [];
      const version = BigInt(eventTime(message));
      const repo = { kind: event.repo.kind, id: event.repo.id };
      let defaultBranch: string;
      try {
        defaultBranch =
          (await clients.registry.getRepo({ repo }, { timeoutMs: CALL_TIMEOUT_MS })).repo?.defaultBranch || "main";
      } catch (error) {
        // Deleted since: its repo.deleted event removes the document.
        if (notFound(error)) return [];
        throw error;
      }
      if (event.name !== defaultBranch) return [];
      if (!event.newCommit) return [{ remove: { id: documentId(kind, event.repo.id), version } }];
      let revision: Revision | undefined;
      try {
        revision = (
          await clients.registry.getRevision({ repo, revision: event.newCommit }, { timeoutMs: CALL_TIMEOUT_MS })
        ).revision;
      } catch (error) {
        if (notFound(error)) return [];
        throw error;
      }
      if (!revision) return [];
      const readme = revision.entries.find((e) => e.path.toLowerCase() === "readme.md");
      const card = parseCard(readme ? await readCard(clients.storage, readme.sha256) : "");
      return [{ upsert: modelDocument(kind, event.repo.id, revision, card, version) }];
    },
    [repoDeleted.type]: async (message) => {
      const event = message.decode(repoDeleted);
      const kind = documentKind(event.repo?.kind ?? RepoKind.UNSPECIFIED);
      if (!event.repo?.id || kind === undefined) return [];
      return [{ remove: { id: documentId(kind, event.repo.id), version: BigInt(eventTime(message)) } }];
    },
  };
}
