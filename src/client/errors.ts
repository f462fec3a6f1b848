import { ImgcastError } from '../errors.ts';

/** Stable codes of the workstation client (`img session`), one per refusal it makes on its own. */
export const CLIENT_ERROR_CODES = [
  /** No imgcast server answered discovery; give --server. */
  'E_NO_SERVER',
  /** The caller stopped discovery (AbortSignal) with no reason of its own to report. */
  'E_ABORTED',
  /** No internal disk to write to (only removable ones, or none at all). */
  'E_NO_DISK',
  /** The only internal disk holds the running system. */
  'E_SYSTEM_DISK',
  /** More than one internal disk could be the target; give --disk. */
  'E_DISK_AMBIGUOUS',
  /** The session ended (stopped, failed, interrupted) before or while this workstation took part. */
  'E_SESSION_ENDED',
  /** The administrator stopped the session. */
  'E_STOPPED',
  /** The sender and the server went away mid-session (the server stopped): the session is interrupted. */
  'E_SERVER_LOST',
  /** `img session start NAME` where no master of NAME runs on this workstation. */
  'E_NOT_MASTER',
  /** --reboot with a target that is not a disk of this machine. */
  'E_REBOOT_TARGET',
  /** efibootmgr made no boot entry for the restored disk. */
  'E_BOOT_ENTRY',
  /** The machine could not be restarted. */
  'E_REBOOT',
] as const;

export type ClientErrorCode = (typeof CLIENT_ERROR_CODES)[number];

export class ClientError extends ImgcastError {
  declare readonly code: ClientErrorCode;

  constructor(
    code: ClientErrorCode,
    message: string,
    details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(code, message, details, options);
  }
}
