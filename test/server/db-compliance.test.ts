/**
 * The server's modules that own tables, through their public methods, against each database
 * openDatabase opens (a SQLite file, a PostgreSQL URL): what one server writes, a server opening
 * the same database afterwards reads back the same. The workstation registry, the settings, and
 * the network boot's record of decisions. PostgreSQL runs as a throwaway cluster.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';

import type { Inventory } from '../../src/api/schemas.ts';
import type { AutoSessions } from '../../src/server/auto-sessions.ts';
import { openDatabase, type Db } from '../../src/server/db.ts';
import { NetBoot } from '../../src/server/netboot.ts';
import type { Choice } from '../../src/server/participation.ts';
import type { SessionManager } from '../../src/server/sessions.ts';
import { SETTING_DEFAULTS, Settings } from '../../src/server/settings.ts';
import { Workstations } from '../../src/server/workstations.ts';
import { tempDir } from '../helpers/env.ts';
import { postgresPerFile } from '../helpers/postgres.ts';

const pg = postgresPerFile();

const makers: Array<{ name: string; location(t: TestContext): Promise<string | undefined> }> = [
  { name: 'SQLite', location: async (t) => join(await tempDir(t), 'imgcast.db') },
  { name: 'PostgreSQL', location: (t) => pg.database(t) },
];

/** Opens the database as a server would, closing it when the test ends (or earlier, by close()). */
async function opener(t: TestContext, where: string) {
  const open: Db[] = [];
  t.after(() => Promise.all(open.splice(0).map((db) => db.destroy())));
  return {
    async open(): Promise<Db> {
      const db = await openDatabase(where);
      open.push(db);
      return db;
    },
    async close(db: Db): Promise<void> {
      open.splice(open.indexOf(db), 1);
      await db.destroy();
    },
  };
}

function inventory(mac: string, hostname: string): Inventory {
  return {
    hostname,
    mac,
    addresses: ['198.18.0.7'],
    disks: [{ path: '/dev/sda', sizeBytes: 512_110_190_592, model: 'SSD' }],
    memoryBytes: 17_179_869_184,
    cpu: { model: 'Test CPU', cores: 8 },
    dmi: { vendor: 'Lab', product: 'PC-1', serial: 'S1' },
  };
}

/** A clock the test moves: a timestamp of today's size, so BIGINT columns hold what they do in use. */
function clock(start = 1_800_000_000_000) {
  let now = start;
  return { now: () => now, tick: (ms = 1000) => (now += ms) };
}

for (const maker of makers) {
  describe(maker.name, () => {
    test('workstations: created, registered, renamed and removed, as read back by a server opening the database anew', async (t) => {
      const where = await maker.location(t);
      if (where === undefined) return;
      const dbs = await opener(t, where);
      const c = clock();
      let db = await dbs.open();
      let ws = new Workstations(db, c.now);
      await ws.load();
      const created = await ws.add({ name: 'pc01', mac: '02-00-00-00-00-01', ip: '198.18.0.11' });
      c.tick();
      const { token } = await ws.register(inventory('02:00:00:00:00:01', 'debian'), '198.18.0.7');
      c.tick();
      await ws.register(inventory('02:00:00:00:00:02', 'pc-two'), '198.18.0.8');
      c.tick();
      await ws.edit('pc-two', { name: 'pc02' });
      await ws.setPhase(created.id, 'joined');
      await ws.import('name,mac,ip\npc03,02:00:00:00:00:03,198.18.0.13\npc04,020000000004\n');
      await ws.remove(ws.resolve('pc04'));
      const before = ws.list();
      await dbs.close(db);

      db = await dbs.open();
      ws = new Workstations(db, c.now);
      await ws.load();
      assert.deepEqual(ws.list(), before);
      assert.deepEqual(
        ws.list().map((w) => [w.name, w.named, w.mac, w.ip]),
        [
          ['pc01', true, '02:00:00:00:00:01', '198.18.0.11'],
          ['pc02', true, '02:00:00:00:00:02', null],
          ['pc03', true, '02:00:00:00:00:03', '198.18.0.13'],
        ],
      );
      const pc01 = ws.get('pc01');
      // Registering kept the administrator's name, and the times are numbers (BIGINT), not text.
      assert.equal(pc01.hostname, 'debian');
      assert.strictEqual(pc01.createdAt, 1_800_000_000_000);
      assert.strictEqual(pc01.registeredAt, 1_800_000_001_000);
      assert.deepEqual(pc01.inventory, inventory('02:00:00:00:00:01', 'debian'));
      assert.deepEqual([pc01.phase, pc01.phaseAt], ['joined', 1_800_000_003_000]);
      assert.equal(ws.get('pc03').registeredAt, null);
      // The token registering gave still names the workstation.
      assert.equal(ws.byToken(token, '198.18.0.7')?.name, 'pc01');
      assert.throws(() => ws.resolve('pc04'), { code: 'E_WORKSTATION_UNKNOWN' });
      await assert.rejects(ws.add({ name: 'pc05', mac: '02:00:00:00:00:03' }), {
        code: 'E_WORKSTATION_EXISTS',
      });
    });

    test('workstations: a name a session gives, an identity reported and the last seen time outlive the server', async (t) => {
      const where = await maker.location(t);
      if (where === undefined) return;
      const dbs = await opener(t, where);
      const c = clock();
      let db = await dbs.open();
      let ws = new Workstations(db, c.now);
      await ws.load();
      const { id, token } = await ws.register(inventory('02:00:00:00:00:21', 'debian'), '198.18.0.21');
      assert.equal(await ws.assignName(id, 'room4-{nn}'), 'room4-01');
      await ws.recordIdentity(
        id,
        { name: 'room4-01', machineId: 'a'.repeat(32), sshHostKeys: [], windowsName: null, notes: ['kept'] },
        'lab',
        'lab.imgc',
      );
      c.tick(60_000);
      ws.byToken(token, '198.18.0.99');
      await ws.flush();
      await dbs.close(db);

      db = await dbs.open();
      ws = new Workstations(db, c.now);
      await ws.load();
      const w = ws.get(id);
      assert.deepEqual([w.name, w.named, w.lastAddress], ['room4-01', true, '198.18.0.99']);
      assert.strictEqual(w.lastSeenAt, 1_800_000_060_000);
      assert.deepEqual(w.identity, {
        name: 'room4-01',
        machineId: 'a'.repeat(32),
        sshHostKeys: [],
        windowsName: null,
        notes: ['kept'],
        session: 'lab',
        image: 'lab.imgc',
        reportedAt: 1_800_000_000_000,
      });
      assert.deepEqual(ws.identityOrder(id), { name: 'room4-01' });
    });

    test('settings: a change is stored, changed again, and loaded by the next server; a refused one stores nothing', async (t) => {
      const where = await maker.location(t);
      if (where === undefined) return;
      const dbs = await opener(t, where);
      let db = await dbs.open();
      let settings = await Settings.load(db);
      assert.deepEqual(settings.current(), SETTING_DEFAULTS);
      await settings.change({ autoClients: 12, level: 'size' });
      // The same names again: the stored rows are updated in place (ON CONFLICT), not added.
      await settings.change({ autoClients: 30, autoWaitMinutes: 2.5, names: 'room4-{nn}', historyDays: 30 });
      await assert.rejects(settings.change({ autoClients: 99, names: 'lab-{x}' }), { code: 'E_BAD_REQUEST' });
      await dbs.close(db);

      db = await dbs.open();
      const warnings: string[] = [];
      settings = await Settings.load(db, (m) => warnings.push(m));
      assert.deepEqual(settings.current(), {
        autoClients: 30,
        autoWaitMinutes: 2.5,
        names: 'room4-{nn}',
        level: 'size',
        historyDays: 30,
      });
      assert.deepEqual(warnings, []);
      assert.equal((await db.selectFrom('settings').selectAll().execute()).length, 5);
    });

    test('boot decisions: each is recorded and listed newest first, for every MAC or one', async (t) => {
      const where = await maker.location(t);
      if (where === undefined) return;
      const dbs = await opener(t, where);
      const c = clock();
      const db = await dbs.open();
      const ws = new Workstations(db, c.now);
      await ws.load();
      const known = await ws.add({ name: 'pc01', mac: '02:00:00:00:00:31' });
      // Only what NetBoot asks of the session scheduler, for a lab with one automatic session
      // that takes pc01: the decision itself is boot-decision.test.ts's.
      const sessions: Pick<SessionManager, 'imagedAt' | 'definedAt' | 'joinedWaiting'> = {
        imagedAt: () => null,
        definedAt: () => null,
        joinedWaiting: () => 0,
      };
      const auto: Pick<AutoSessions, 'chooseFor'> = {
        chooseFor: (w): Choice =>
          w.id === known.id
            ? { session: 'lab', role: 'client', why: 'listed explicitly' }
            : { session: null, why: 'no session takes it' },
      };
      const boot = new NetBoot({
        db,
        sessions: sessions as SessionManager,
        auto: auto as AutoSessions,
        workstations: ws,
        log: { info: () => {} },
        now: c.now,
      });
      const d1 = await boot.decide('02:00:00:00:00:31', 'efi', '198.18.0.31', true);
      c.tick();
      const d2 = await boot.decide('02:00:00:00:00:99', 'bios', null, true);
      c.tick();
      const d3 = await boot.decide('02:00:00:00:00:31', 'efi', '198.18.0.31', false);
      assert.deepEqual(
        [d1, d2, d3].map((d) => [d.action, d.name]),
        [
          ['image', 'pc01'],
          ['local', null],
          ['local', 'pc01'],
        ],
      );
      await dbs.close(db);

      // Another server of the site, or this one restarted, lists what was decided.
      const other = await dbs.open();
      const otherBoot = new NetBoot({
        db: other,
        sessions: sessions as SessionManager,
        auto: auto as AutoSessions,
        workstations: ws,
        log: { info: () => {} },
      });
      const all = await otherBoot.recent(10);
      assert.deepEqual(
        all.map((r) => [r.at, r.mac, r.workstation, r.platform, r.decision, r.session]),
        [
          [1_800_000_002_000, '02:00:00:00:00:31', 'pc01', 'efi', 'local', null],
          [1_800_000_001_000, '02:00:00:00:00:99', null, 'bios', 'local', null],
          [1_800_000_000_000, '02:00:00:00:00:31', 'pc01', 'efi', 'image', 'lab'],
        ],
      );
      assert.match(all[0]!.why, /imaging environment is not built/);
      assert.deepEqual(
        (await otherBoot.recent(1, '02:00:00:00:00:31')).map((r) => r.at),
        [1_800_000_002_000],
      );
      assert.deepEqual(
        (await otherBoot.recent(10, '02:00:00:00:00:31')).map((r) => r.decision),
        ['local', 'image'],
      );
      assert.deepEqual(await otherBoot.recent(10, '02:00:00:00:00:77'), []);
      // The image decision marked the known workstation's boot phase.
      const reread = new Workstations(other);
      await reread.load();
      assert.deepEqual(
        [reread.get('pc01').phase, reread.get('pc01').phaseAt],
        ['netboot', 1_800_000_000_000],
      );
    });
  });
}
