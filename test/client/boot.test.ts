/** How img restarts the machine (src/client/boot.ts): the commands, by environment. */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { rebootCommands } from '../../src/client/boot.ts';

test('rebootCommands: systemd then plain reboot on an installed system; reboot -f in the imaging environment', () => {
  assert.deepEqual(rebootCommands({}), [
    ['systemctl', ['reboot']],
    ['reboot', []],
  ]);
  // PID 1 there is a shell script: a reboot without -f would only signal it, and nothing happens.
  assert.deepEqual(rebootCommands({ IMGCAST_BOOTENV: '1' }), [['reboot', ['-f']]]);
  assert.deepEqual(rebootCommands({ IMGCAST_BOOTENV: '0' }), rebootCommands({}));
});
