/**
 * The Node options for a worker thread started from a file (new Worker(new URL(...))).
 *
 * A worker inherits its parent's options, and in a process started as
 * `node --input-type=module -e <script>` (tests, one-off scripts) that includes --input-type,
 * with which Node refuses a file as an entry point (ERR_INPUT_TYPE_NOT_ALLOWED): the worker
 * never starts. Such a process's workers start with no options of their own instead (they are
 * that flag and the script; V8's flags are the process's and stay). Anywhere else: undefined,
 * the parent's options as they are (the worker's option list cannot name V8 flags, such as the
 * launchers' --max-semi-space-size, so it cannot be the parent's less --input-type).
 */
export function workerExecArgv(): string[] | undefined {
  return process.execArgv.some((a) => a === '--input-type' || a.startsWith('--input-type=')) ? [] : undefined;
}
