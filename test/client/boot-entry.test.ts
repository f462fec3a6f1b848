/** The --reboot plan: efibootmgr's listing read, the loaders of an image's EFI partition, and what is done where. */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { efiLoaders, espOf, parseEfibootmgr, planBootEntry } from '../../src/client/boot-entry.ts';
import type { Manifest } from '../../src/image/types.ts';

const ESP_GUID = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
const LISTING = [
  'BootCurrent: 0003',
  'Timeout: 0 seconds',
  'BootOrder: 0003,0001,0000',
  'Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)',
  `Boot0001* debian\tHD(1,GPT,${ESP_GUID},0x800,0x32000)/File(\\EFI\\debian\\shimx64.efi)`,
  'Boot0003* UEFI PXEv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,1)/IPv4(0.0.0.0,0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)',
].join('\n');

function manifest(espFiles: string[]): Manifest {
  return {
    formatVersion: 1,
    imageId: 'x',
    createdAt: '2026-12-05T00:00:00Z',
    generation: 1,
    level: 'speed',
    source: { kind: 'disk', path: '/dev/sda' },
    disk: {
      sizeBytes: 3 << 30,
      sectorSize: 512,
      table: 'gpt',
      partitions: [
        {
          number: 1,
          startBytes: 1 << 20,
          sizeBytes: 1 << 20,
          type: '21686148-6449-6e6f-744e-656564454649',
          volume: 0,
        },
        {
          number: 2,
          startBytes: 2 << 20,
          sizeBytes: 100 << 20,
          type: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
          uuid: ESP_GUID,
          volume: 1,
        },
      ],
      bootAreas: [],
    },
    volumes: [
      { kind: 'raw', index: 0, partition: 1, sizeBytes: 1 << 20, extents: [] },
      {
        kind: 'files',
        index: 1,
        partition: 2,
        fs: { type: 'vfat' },
        entries: espFiles.map((path) => ({
          path,
          type: 'file' as const,
          mode: 0o644,
          uid: 0,
          gid: 0,
          mtimeNs: '0',
          atimeNs: '0',
          size: 1,
        })),
      },
    ],
    filesets: [],
  };
}

test('efibootmgr -v: boot order, next and each entry with its device path', () => {
  const l = parseEfibootmgr(LISTING);
  assert.deepEqual(l.order, ['0003', '0001', '0000']);
  assert.equal(l.bootNext, null);
  assert.deepEqual(
    l.entries.map((e) => [e.number, e.label]),
    [
      ['0000', 'UiApp'],
      ['0001', 'debian'],
      ['0003', 'UEFI PXEv4 (MAC:525400123456)'],
    ],
  );
  assert.match(l.entries[1]!.path, /shimx64\.efi/);
  assert.equal(parseEfibootmgr('BootNext: 0004\nBootOrder: 0004').bootNext, '0004');
});

test("the image's EFI partition and its loaders, the distribution's before the fallback", () => {
  const m = manifest([
    'EFI/BOOT/BOOTX64.EFI',
    'EFI/BOOT/grubx64.efi',
    'EFI/debian/grubx64.efi',
    'EFI/debian/shimx64.efi',
  ]);
  assert.deepEqual(espOf(m.disk!), { number: 2, uuid: ESP_GUID });
  assert.deepEqual(efiLoaders(m, 2), [
    '\\EFI\\debian\\shimx64.efi',
    '\\EFI\\debian\\grubx64.efi',
    '\\EFI\\BOOT\\BOOTX64.EFI',
  ]);
  assert.deepEqual(efiLoaders(manifest(['EFI/BOOT/BOOTX64.EFI']), 2), ['\\EFI\\BOOT\\BOOTX64.EFI']);
  assert.deepEqual(efiLoaders(manifest(['README']), 2), []);
});

test('the plan: nothing under BIOS; an entry reused or made outside the boot order, added at its end, and booted next unless network-booted; the fallback said plainly', () => {
  const base = {
    uefi: true,
    efibootmgr: true,
    list: parseEfibootmgr(LISTING),
    disk: '/dev/sda',
    esp: { number: 2, uuid: ESP_GUID },
    loaders: ['\\EFI\\debian\\shimx64.efi'],
    label: 'imgcast lab1',
  };
  assert.equal(planBootEntry({ ...base, uefi: false }).kind, 'bios');
  assert.equal(planBootEntry({ ...base, netboot: true, uefi: false }).kind, 'bios');
  const reuse = planBootEntry(base);
  assert.ok(reuse.kind === 'uefi');
  assert.deepEqual(
    [reuse.entry, reuse.create, reuse.appendToOrder, reuse.bootNext],
    ['0001', null, false, true],
  );
  assert.doesNotMatch(
    reuse.note,
    /end of the boot order/,
    'an entry already in the boot order keeps its place',
  );
  const fresh = planBootEntry({ ...base, loaders: ['\\EFI\\BOOT\\BOOTX64.EFI'] });
  assert.ok(fresh.kind === 'uefi');
  assert.deepEqual(fresh.create, [
    '--create-only',
    '--disk',
    '/dev/sda',
    '--part',
    '2',
    '--label',
    'imgcast lab1',
    '--loader',
    '\\EFI\\BOOT\\BOOTX64.EFI',
  ]);
  assert.deepEqual([fresh.appendToOrder, fresh.bootNext], [true, true]);
  assert.match(fresh.note, /is made, put at the end of the boot order, and booted next \(BootNext\)/);
  // Network-booted by the server: the entry is made and ordered the same, but not booted next.
  const netboot = planBootEntry({ ...base, netboot: true, loaders: ['\\EFI\\BOOT\\BOOTX64.EFI'] });
  assert.ok(netboot.kind === 'uefi');
  assert.deepEqual(
    [netboot.create?.[0], netboot.appendToOrder, netboot.bootNext],
    ['--create-only', true, false],
  );
  assert.match(netboot.note, /when the server sends this machine to its disk at its next network boot/);
  // An entry outside the boot order is added at its end.
  const unordered = planBootEntry({ ...base, list: { ...base.list, order: ['0003', '0000'] } });
  assert.ok(unordered.kind === 'uefi' && unordered.entry === '0001' && unordered.appendToOrder);
  assert.match(unordered.note, /put at the end of the boot order/);
  const other = planBootEntry({ ...base, esp: { number: 2, uuid: '11111111-2222-3333-4444-555555555555' } });
  assert.ok(other.kind === 'uefi' && other.create !== null, 'an entry of another disk is not this one');
  assert.match(planBootEntry({ ...base, efibootmgr: false, list: null }).note, /efibootmgr is missing/);
  assert.match(planBootEntry({ ...base, loaders: [] }).note, /no loader/);
  assert.match(planBootEntry({ ...base, esp: null }).note, /no EFI system partition/);
});
