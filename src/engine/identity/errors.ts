import { ImgcastError } from '../../errors.ts';

/** Stable codes of identity and post-imaging scripts (src/engine/identity). */
export const IDENTITY_ERROR_CODES = [
  /** The name is not a host name (RFC 1123 label): nothing was mounted or changed. */
  'E_IDENTITY_NAME',
  /** A tool identity needs (ssh-keygen) is missing: that system was left unchanged. */
  'E_IDENTITY_TOOL',
  /** A volume of the restored target cannot be found or reached (partition missing, not mountable). */
  'E_IDENTITY_TARGET',
  /** A post-imaging script cannot be read. */
  'E_SCRIPT_UNREADABLE',
  /** A post-imaging script ended with a non-zero status or a signal; details.output holds its output. */
  'E_SCRIPT_FAILED',
  /** A post-imaging script ran past its time limit and was killed; details.output holds its output. */
  'E_SCRIPT_TIMEOUT',
] as const;

export type IdentityErrorCode = (typeof IDENTITY_ERROR_CODES)[number];

export class IdentityError extends ImgcastError {
  declare readonly code: IdentityErrorCode;

  constructor(
    code: IdentityErrorCode,
    message: string,
    details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(code, message, details, options);
  }
}
