import { ImgcastError } from '../errors.ts';

/**
 * Stable codes of the image format and explorer:
 * E_IMAGE_MAGIC      not an imgcast image
 * E_IMAGE_VERSION    written by a newer format version
 * E_IMAGE_TRUNCATED  file ends before its trailer or a record it points to
 * E_IMAGE_CORRUPT    a structure (header, trailer, index, manifest) fails its checksum or does not parse
 * E_CHUNK_CORRUPT    a chunk's content does not match its hash or does not decompress
 * E_CHUNK_MISSING    the manifest references a chunk the index does not hold
 * E_FILESET          file set number outside 1..10
 * E_PATH_NOT_FOUND   no such path in the image
 * E_PATH_ESCAPE      a path would leave the extraction/restore target
 * E_PATH_EXISTS      adding over an existing path
 * E_IMAGE_EXISTS     refusing to overwrite an existing image
 * E_IMAGE_IO         the image file could not be read or written
 * E_CHUNK_SIZE       a chunk handed to the writer is larger than CHUNK_SIZE
 * E_MANIFEST_INVALID a manifest handed to the writer is malformed
 * E_EXTENT_RANGE     a manifest extent reaches past the end of its chunk
 * E_IMAGE_BUSY       another process is appending to the image
 */
export class ImageError extends ImgcastError {}
