/** Public surface of the image format. */
export { CODEC_NONE, CODEC_ZSTD, LEVEL_PARAMS, chunkId, decodeChunk, encodeChunk } from './codec.ts';
export { compactImage, type CompactResult } from './compact.ts';
export { ImageError } from './errors.ts';
export { ImageReader, type ChunkInfo } from './reader.ts';
export { repairImage, type RepairResult } from './repair.ts';
export { chunkUsage, chunkUsages, describeUsage, type ChunkUse } from './usage.ts';
export { verifyImage, type VerifyProblem, type VerifyReport } from './verify.ts';
export { ImageWriter, MAX_IN_FLIGHT_BYTES } from './writer.ts';
export * from './types.ts';
export * from './fileset.ts';
