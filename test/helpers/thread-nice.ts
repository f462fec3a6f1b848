/**
 * A thread's nice value as /proc shows it: the tests read it there, apart from the getpriority
 * call the product uses, so a wrong thread id or a process-wide change would show.
 */
import { readFileSync } from 'node:fs';

/** The nice value of thread `tid` of this process, from /proc (null when it cannot be read). */
export function threadNice(tid: number): number | null {
  try {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    // Fields after the command name (in parentheses, which may hold spaces): nice is field 19.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const nice = Number(rest[19 - 3]);
    return Number.isInteger(nice) ? nice : null;
  } catch {
    return null;
  }
}
