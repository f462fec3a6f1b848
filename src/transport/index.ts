/** The multicast transport: programmatic API used by the CLI, the lab tests and the benchmark. */
export { runSender, DEFAULT_PORT, DEFAULT_GROUP } from './sender.ts';
export { runReceiver } from './receiver.ts';
export { fileConsumer, flatFileProvider, FLAT_CHUNK_SIZE, type FlatMeta } from './files.ts';
export { TransportError } from './errors.ts';
export { DATA_PORTS } from './packet.ts';
export { rawDecoder, CODEC_NONE } from './chunkwire.ts';
export type * from './types.ts';
