/**
 * The settings an administrator changes while the server runs (`imgcast settings`, the
 * console's Server page), kept in the database: the defaults of what is made without its own
 * value, and how long the history of runs is kept. Each is read where it is used, when it is
 * used, so a change takes effect at once for what is made next; nothing made before changes.
 *
 *   autoClients, autoWaitMinutes  the trigger of a new automatic session that gives none
 *                                 (the classic product's 5 clients or 15 minutes)
 *   names                         the naming template of a new session that gives none ('' none)
 *   level                         the compression of an upload or a live master that gives none
 *   historyDays                   runs that finished longer ago leave the history (0: kept forever)
 *
 * What the server was started with (addresses, folders, network boot) is not here: it is fixed
 * until the next start, and shown beside the settings (SettingsView.server).
 */
import type { TSchema } from 'typebox';
import { Value } from 'typebox/value';

import { ServerSettings, type EditSettings } from '../api/schemas.ts';
import type { Db } from './db.ts';
import { ServerError } from './errors.ts';
import { parseNameTemplate, TemplateError } from './naming.ts';

export type { ServerSettings };

export const SETTING_DEFAULTS: Readonly<ServerSettings> = Object.freeze({
  autoClients: 5,
  autoWaitMinutes: 15,
  names: '',
  level: 'balanced',
  historyDays: 0,
});

export const SETTING_NAMES = Object.keys(SETTING_DEFAULTS) as Array<keyof ServerSettings>;

const DAY_MS = 24 * 3600_000;

/** The newest finish time a run may have and leave the history, or null when history is kept forever. Pure. */
export function historyCutoff(historyDays: number, now: number): number | null {
  return historyDays > 0 ? now - historyDays * DAY_MS : null;
}

/**
 * Stored values over the defaults. A value that no longer fits its setting (written by another
 * version, or by hand) is passed over, with the reason, rather than stopping the server. Pure.
 */
export function mergeStored(rows: ReadonlyArray<{ name: string; value: string }>): {
  settings: ServerSettings;
  ignored: string[];
} {
  const settings: Record<string, unknown> = { ...SETTING_DEFAULTS };
  const ignored: string[] = [];
  const properties: Record<string, TSchema> = ServerSettings.properties;
  for (const row of rows) {
    const schema = properties[row.name];
    if (!schema) {
      ignored.push(`${row.name}: not a setting of this version`);
      continue;
    }
    let value: unknown;
    try {
      value = JSON.parse(row.value);
    } catch {
      ignored.push(`${row.name}: not JSON`);
      continue;
    }
    if (!Value.Check(schema, value)) {
      ignored.push(`${row.name}: ${JSON.stringify(value)} does not fit`);
      continue;
    }
    settings[row.name] = value;
  }
  return { settings: settings as ServerSettings, ignored };
}

/** Why `text` cannot be the default naming template, or null when it can ('' is none). Pure. */
export function namesProblem(text: string): string | null {
  if (text === '') return null;
  try {
    parseNameTemplate(text);
    return null;
  } catch (err) {
    if (err instanceof TemplateError) return err.message;
    throw err;
  }
}

export class Settings {
  #db: Db;
  #current: ServerSettings;
  #listeners = new Set<(s: ServerSettings) => void | Promise<void>>();
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(db: Db, current: ServerSettings) {
    this.#db = db;
    this.#current = current;
  }

  /** The stored settings; `warn` hears of each stored value passed over. */
  static async load(db: Db, warn: (message: string) => void = () => {}): Promise<Settings> {
    const rows = await db.selectFrom('settings').selectAll().execute();
    const { settings, ignored } = mergeStored(rows);
    for (const why of ignored) warn(`a stored server setting is passed over (its default holds): ${why}`);
    return new Settings(db, settings);
  }

  /** The settings now (a copy). */
  current(): ServerSettings {
    return { ...this.#current };
  }

  /**
   * Checks and stores a change (the values' types and ranges are the API schema's, checked
   * before this); a refused change stores nothing. Changes run one at a time.
   */
  change(patch: EditSettings): Promise<ServerSettings> {
    const run = this.#queue.then(async () => {
      const entries = Object.entries(patch).filter(([, v]) => v !== undefined) as Array<
        [keyof ServerSettings, ServerSettings[keyof ServerSettings]]
      >;
      if (entries.length === 0) throw new ServerError('E_BAD_REQUEST', 'nothing to change');
      if (patch.names !== undefined) {
        const problem = namesProblem(patch.names);
        if (problem !== null) {
          throw new ServerError('E_BAD_REQUEST', `naming template ${patch.names}: ${problem}`, {
            field: 'names',
            template: patch.names,
          });
        }
      }
      await this.#db.transaction().execute(async (tx) => {
        for (const [name, value] of entries) {
          await tx
            .insertInto('settings')
            .values({ name, value: JSON.stringify(value) })
            .onConflict((oc) => oc.column('name').doUpdateSet({ value: JSON.stringify(value) }))
            .execute();
        }
      });
      this.#current = { ...this.#current, ...Object.fromEntries(entries) };
      // Awaited: the answer to a change comes once it has taken effect (history trimmed, say).
      await Promise.allSettled([...this.#listeners].map(async (l) => l(this.current())));
      return this.current();
    });
    this.#queue = run.catch(() => {});
    return run;
  }

  /**
   * Reads the stored settings again: another server sharing the database may have changed them.
   * Listeners hear of it as of a change made here. Runs in turn with the changes made here.
   */
  reload(): Promise<void> {
    const run = this.#queue.then(async () => {
      const { settings } = mergeStored(await this.#db.selectFrom('settings').selectAll().execute());
      if (JSON.stringify(settings) === JSON.stringify(this.#current)) return;
      this.#current = settings;
      await Promise.allSettled([...this.#listeners].map(async (l) => l(this.current())));
    });
    this.#queue = run.catch(() => {});
    return run;
  }

  /**
   * Called after every stored change with the new settings, and awaited before the change
   * answers (a listener's failure is its own to report); returns the unsubscribe.
   */
  onChange(listener: (s: ServerSettings) => void | Promise<void>): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}
