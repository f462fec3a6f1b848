import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runTool } from '../../src/disk/exec.ts';

test('a tool that is not installed is named as such, not as spawn ENOENT', async () => {
  await assert.rejects(runTool('imgcast-no-such-tool', ['x']), {
    code: 'E_DISK_COMMAND',
    message: 'cannot run imgcast-no-such-tool: it is not installed (not found on PATH) (ENOENT)',
  });
});
