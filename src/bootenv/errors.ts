import { ImgcastError } from '../errors.ts';

/**
 * Why the imaging environment (kernel + initramfs, or its ISO) could not be built. Nothing is
 * half-written when one is thrown: the bootenv directory keeps what it had.
 */
export const BOOTENV_ERROR_CODES = [
  /** apt-get could not download a package (no mirror in the apt sources, no network). */
  'E_BOOTENV_APT',
  /** A tool the build runs, or one the environment must carry, is not installed here. */
  'E_BOOTENV_TOOL',
  /** A shared library a carried tool needs was not found (ldd said "not found"). */
  'E_BOOTENV_LIBRARY',
  /** A kernel module the environment needs is not in the kernel package. */
  'E_BOOTENV_MODULE',
  /** The production files of imgcast (package-lock.json, node_modules) are not as expected. */
  'E_BOOTENV_FILES',
  /** The ISO asks for a built environment, and there is none in the bootenv directory. */
  'E_BOOTENV_MISSING',
  /** A step of the build (dpkg-deb, depmod, grub-mkrescue, ...) failed. */
  'E_BOOTENV_STEP',
] as const;
export type BootenvErrorCode = (typeof BOOTENV_ERROR_CODES)[number];

export class BootenvError extends ImgcastError {
  declare readonly code: BootenvErrorCode;
  constructor(code: BootenvErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(code, message, details);
  }
}
