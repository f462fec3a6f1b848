import { ImgcastError } from '../errors.ts';

/**
 * Stable codes of the multicast transport:
 * E_PACKET_INVALID     a data packet is too short, of another protocol/version, or its fields disagree
 * E_CONTROL_INVALID    a control message is too large, not JSON, or does not match its schema
 * E_AUTH               the pre-shared key proof failed (wrong --key on one side, or a key on one side only)
 * E_VERSION            the peer speaks another transport protocol version
 * E_CONNECT            the control connection to the sender could not be made or was lost before the session
 * E_SENDER_LOST        the sender stopped answering or closed the control connection mid-session
 * E_DROPPED            the sender dropped this receiver (the reason says why: unresponsive, too slow, stopped)
 * E_CHUNK_REJECTED     a received chunk failed its hash/authentication check (counted, re-requested, never written)
 * E_CONSUMER           the consumer (restore target / output file) failed to prepare, write or finish
 * E_ABORTED            the caller aborted the session (AbortSignal)
 * E_NO_RECEIVERS       the sender ended because no receiver joined or every receiver was dropped
 * E_TUNING             kernel-tuning state could not be kept (state directory unusable, its lock held too
 *                      long, a malformed want); a setting that may not be changed here is a refusal, not this
 */
export class TransportError extends ImgcastError {}
