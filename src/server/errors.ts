/** The server's typed errors: each code has one HTTP status, and the API answers `{ error, message }`. */
import { ImgcastError } from '../errors.ts';

export const SERVER_ERROR_STATUS = {
  E_BAD_REQUEST: 400,
  E_BAD_JSON: 400,
  E_IMAGE_OUTSIDE: 400,
  E_IMAGE_UNREADABLE: 400,
  E_RULE_INVALID: 400,
  // A path sent to the server would put a file outside where it belongs (.., absolute, a symlink).
  E_PATH_ESCAPE: 400,
  E_UNAUTHORIZED: 401,
  E_FORBIDDEN: 403,
  E_NOT_FOUND: 404,
  E_SESSION_UNKNOWN: 404,
  E_IMAGE_UNKNOWN: 404,
  E_WORKSTATION_UNKNOWN: 404,
  E_UPLOAD_UNKNOWN: 404,
  E_SESSION_EXISTS: 409,
  E_IMAGE_EXISTS: 409,
  E_IMAGE_IN_USE: 409,
  E_UPLOAD_STATE: 409,
  E_SESSION_STATE: 409,
  E_NOT_JOINED: 409,
  E_MASTER_CONFLICT: 409,
  // A workstation asked for what its role in the session is not (a master joining, a client starting it).
  E_SESSION_ROLE: 409,
  E_WORKSTATION_EXISTS: 409,
  E_WORKSTATION_IN_USE: 409,
  // The workstation is not among those an automatic session takes (or the session is disabled).
  E_NOT_QUALIFIED: 409,
  // Another server of the site (same database) already runs under this name.
  E_SERVER_NAME_TAKEN: 409,
  // The session runs on another server of the site: details.url says where (a client referral).
  // Not 421 Misdirected Request, which HTTP clients (undici) retry on their own.
  E_REFERRED: 409,
  E_TOO_LARGE: 413,
  E_UNSUPPORTED_MEDIA: 415,
  E_CHUNK_INVALID: 422,
  E_UPLOAD_INVALID: 422,
  E_NO_ADDRESSES: 503,
  E_UPLOAD_BUSY: 503,
  // The image writer's: the server's disk failed (full, I/O error) under an upload.
  E_IMAGE_IO: 500,
  E_DATABASE: 500,
  E_INTERNAL: 500,
} as const;

export type ServerErrorCode = keyof typeof SERVER_ERROR_STATUS;

export class ServerError extends ImgcastError {
  declare readonly code: ServerErrorCode;
  constructor(
    code: ServerErrorCode,
    message: string,
    details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(code, message, details, options);
  }
  get status(): number {
    return SERVER_ERROR_STATUS[this.code];
  }
}
