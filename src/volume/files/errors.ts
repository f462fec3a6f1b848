import { ImgcastError } from '../../errors.ts';

/**
 * Stable codes of file-volume capture and restore (path problems use ImageError
 * E_PATH_ESCAPE / E_PATH_NOT_FOUND from src/image/errors.ts):
 * E_CAPTURE_IO        a file or directory of the source tree could not be read
 * E_RESTORE_IO        a file, directory, link or node could not be created or written in the target
 * E_RESTORE_INCOMPLETE finish() was called before every needed chunk arrived
 * E_XATTR             getfattr/setfattr is missing or failed
 * E_INODE_FLAGS       lsattr/chattr (or xargs, which runs them) is missing or failed
 * E_NAME_INVALID      an image path holds a lone UTF-16 surrogate that stands for no byte of
 *                     a file name (names.ts): the image was damaged or not made by a capture
 */
export class FileVolumeError extends ImgcastError {}
