/**
 * `imgcast settings show | set NAME VALUE`: the server's settings (the defaults of what is made
 * without its own value, how long history is kept) beside how the server was started. The
 * server checks every value: the CLI sends what was typed and shows the server's reason.
 */
import type { Command } from 'commander';

import type { ServerSettings, SettingsView } from '../api/schemas.ts';
import { UsageError } from '../errors.ts';
import { run, withClient, type Common } from './admin.ts';
import { emit } from './output.ts';

/** What each setting means, for `settings show`. */
const MEANING: Record<keyof ServerSettings, string> = {
  autoClients: 'a new automatic session starts once this many clients joined',
  autoWaitMinutes: 'or this many minutes after its last new client',
  names: "naming template of a new session that gives none ('' none)",
  level: 'compression of uploads and live masters that give none',
  historyDays: 'days finished runs stay in the history (0: forever)',
};

function shown(v: unknown): string {
  return v === '' ? "''" : String(v);
}

export function describeSettings(v: SettingsView): string {
  const s = v.server;
  const m = s.multicast;
  const pxe = s.boot.pxe;
  const lines = [
    `imgcast server ${s.name}, version ${s.version}, started ${new Date(s.startedAt).toISOString()}`,
    'fixed until the server is started again:',
    `  listen        ${s.listen.host}:${s.listen.port}`,
    `  data          ${s.dataDir}`,
    `  images        ${s.imagesDir}`,
    `  database      ${s.database}`,
    `  multicast     groups ${m.firstGroup}-${m.lastGroup}, ports ${m.firstPort}-${m.lastPort} (${m.slots} sessions sending at once), from ${m.interface ?? 'the route to each group'}`,
    `  discovery     ${s.discovery ? `${s.discovery.group}:${s.discovery.port}` : 'off'}`,
    `  boot          environment ${s.boot.bootenvDir} (${s.boot.bootenvVersion ? `built for imgcast ${s.boot.bootenvVersion}` : 'not built'})${s.boot.kernelArgs ? `, kernel arguments ${s.boot.kernelArgs}` : ''}`,
    `  pxe           ${pxe ? `${pxe.mode === 'proxy' ? 'proxy DHCP' : `DHCP ${pxe.range ? `${pxe.range.start}-${pxe.range.end}` : ''}`} on ${pxe.interface ?? '?'}${pxe.address ? ` (${pxe.address})` : ''}` : 'off (the HTTP boot routes only)'}`,
    'settings (imgcast settings set NAME VALUE):',
  ];
  const names = Object.keys(v.settings) as Array<keyof ServerSettings>;
  const width = Math.max(...names.map((n) => n.length));
  const value = Math.max(...names.map((n) => shown(v.settings[n]).length));
  for (const n of names) {
    const changed = v.settings[n] !== v.defaults[n] ? ` (default ${shown(v.defaults[n])})` : '';
    lines.push(`  ${n.padEnd(width)}  ${shown(v.settings[n]).padEnd(value)}  ${MEANING[n] ?? ''}${changed}`);
  }
  return lines.join('\n');
}

export function addSettingsCommands(program: Command): void {
  const settings = program
    .command('settings')
    .description(
      "the server's settings (defaults of new sessions and uploads, history kept) and how it runs",
    );
  withClient(
    settings.command('show').description('the settings, and what is fixed until the server restarts'),
  ).action((o: Common) =>
    run(o, async (api) => {
      const v = await api.request<SettingsView>('GET', '/api/settings');
      emit(!!o.json, v, () => describeSettings(v));
    }),
  );
  withClient(
    settings
      .command('set')
      .description("change a setting; it applies to what is made from now on ('' clears the naming template)")
      .argument('<name>', 'autoClients, autoWaitMinutes, names, level or historyDays')
      .argument('<value>', 'the new value'),
  ).action((name: string, value: string, o: Common) =>
    run(o, async (api) => {
      const before = await api.request<SettingsView>('GET', '/api/settings');
      if (!Object.hasOwn(before.settings, name))
        throw new UsageError(
          `no setting ${name}; the settings are ${Object.keys(before.settings).join(', ')}`,
        );
      // Sent as typed: the server reads numbers from the text and says why a value does not fit.
      const v = await api.request<SettingsView>('PATCH', '/api/settings', { body: { [name]: value } });
      const key = name as keyof ServerSettings;
      emit(!!o.json, v, () => `${name}: ${shown(before.settings[key])} -> ${shown(v.settings[key])}`);
    }),
  );
}
