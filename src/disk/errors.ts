import { ImgcastError } from '../errors.ts';

/**
 * Stable codes of the disk layer (partition tables, devices, filesystems, raw volumes)
 * and of whole-disk capture/restore:
 * E_DISK_NO_TABLE       no MBR or GPT where one was required
 * E_DISK_TABLE_CORRUPT  a partition table is damaged (bad CRC, entries out of range, overlaps)
 * E_DISK_IO             reading or writing a device or file failed
 * E_DISK_WRITE          restored data did not reach the target: a write, or its write-back (found by syncfs/fsync), failed; names the target and, when that is why, the full filesystem under it
 * E_DISK_COMMAND        an external tool (losetup, mount, mkfs, sgdisk, …) failed; its stderr is in the message
 * E_DISK_MOUNTED        the source or target (or one of its partitions) is mounted
 * E_DISK_TOO_SMALL      the target is smaller than the image needs
 * E_DISK_SOURCE         the capture source is not something imgcast can image
 * E_DISK_TARGET         the restore target does not fit the image (kind, volume count, not empty)
 * E_DISK_NOT_EMPTY      the restore target holds a partition table, filesystems or other signatures, and no consent (--force) was given
 * E_DISK_NO_TARGET      the restore target does not exist and is not to be created (no --create, under /dev, no parent folder)
 * E_DISK_VERIFY         reading a restored target back (--verify-after) found it different from the image; details.differences lists where
 * E_DISK_INCOMPLETE     a restore was finished before every needed chunk arrived
 * E_DISK_RESUME         an interrupted restore cannot be resumed on this target (it is gone)
 * E_FS_UNSUPPORTED      a filesystem type imgcast cannot recreate or mount
 */
export class DiskError extends ImgcastError {}
