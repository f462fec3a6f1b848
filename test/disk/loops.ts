import type { TestContext } from 'node:test';
import { attachLoop, detachLoop, type LoopOptions } from '../../src/disk/device.ts';

/**
 * Loop devices attached by one test, each detached exactly once. Detaching a device a
 * second time could hit a loop device that another test attached meanwhile under the
 * same number, so cleanup only touches devices this test still holds.
 */
export function trackedLoops(t: TestContext) {
  const held = new Set<string>();
  t.after(async () => {
    for (const dev of held) await detachLoop(dev).catch(() => {});
    held.clear();
  });
  return {
    async attach(path: string, opts: LoopOptions = {}): Promise<string> {
      const dev = await attachLoop(path, opts);
      held.add(dev);
      return dev;
    },
    async detach(dev: string): Promise<void> {
      if (!held.delete(dev)) return;
      await detachLoop(dev);
    },
  };
}
