/**
 * Every failure imgcast reports on purpose is an ImgcastError with a stable `code`,
 * so the CLI, the HTTP API and scripts can branch on the code rather than on prose.
 * Each part subclasses it (ImageError, DiskError, TransportError, …) and keeps its
 * codes in one exported list so they stay stable and greppable.
 */
export class ImgcastError extends Error {
  readonly code: string;
  /** Extra structured facts (volume, file, chunk, path, …) for --json output. */
  readonly details: Record<string, unknown>;

  constructor(code: string, message: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }

  toJSON(): Record<string, unknown> {
    return { error: this.code, message: this.message, ...this.details };
  }
}

/** Bad arguments to a command or API call: nothing was changed. */
export class UsageError extends ImgcastError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('E_USAGE', message, details);
  }
}

/** The operator stopped the command (Ctrl-C, SIGTERM): what it had begun was undone. */
export class InterruptedError extends ImgcastError {
  /** `left`: what the stopped operation leaves behind, for the message. */
  constructor(signal: string, left?: string) {
    super('E_INTERRUPTED', `interrupted by ${signal}${left ? `; ${left}` : ''}`, {
      signal,
      ...(left ? { left } : {}),
    });
  }
}

export function isImgcastError(err: unknown): err is ImgcastError {
  return err instanceof ImgcastError;
}
