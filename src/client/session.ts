/**
 * `img session NAME`: a workstation takes part in a server session. It finds the server (or is
 * told), picks the disk to write (or is told), registers its inventory, joins, waits for the
 * trigger, receives the image over multicast straight onto the disk, verifies it, and reports
 * the result to the server. Every refusal happens before anything is written; every failure
 * after is reported to the server too, when it still answers.
 *
 * `img auto` does the same with the session the server picks for this workstation among its
 * automatic sessions, or ends with nothing to do (and the server's reason). One that is sending
 * to others when asked takes its next run: an automatic session reopens by itself.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import { ApiClient, ApiError } from '../api/client.ts';
import type { AppliedIdentity, AutoChoice, JoinView, MasterView } from '../api/schemas.ts';
import { forgeHostKeys, postImaging, type PostImagingResult } from '../engine/identity/apply.ts';
import type { HostKeyForge } from '../engine/identity/linux.ts';
import { defaultJournal, imageDecoder, restoreConsumer, type ImageMeta } from '../engine/multicast.ts';
import type { Manifest } from '../image/types.ts';
import { ImgcastError } from '../errors.ts';
import { runReceiver } from '../transport/receiver.ts';
import type { ReceiverProgress, ReceiverResult, SenderProgress } from '../transport/types.ts';
import type { BootPlan } from './boot-entry.ts';
import { checkRebootTarget, prepareBootNext } from './boot.ts';
import { ClientError } from './errors.ts';
import { registration } from './registration.ts';
import { inBootEnvironment, phaseReporter, type PhaseReporter } from './phases.ts';
import { reportPace } from './report-pace.ts';
import { master, type LiveCapture, type MasterResult } from './master.ts';
import { chooseDisk, findServer, followReferrals, register } from './server-link.ts';

export interface SessionOptions {
  session: string;
  /** host[:port] or URL of the server; found by discovery when absent. */
  server?: string;
  /** Target disk (or disk-image file, partition, folder); picked when absent. */
  disk?: string;
  /** Local IPv4 address to use (discovery, multicast, the MAC that names this workstation). */
  interface?: string;
  /** Once written, verified and made this workstation's, boot the restored disk (the caller restarts). */
  reboot?: boolean;
  /** Ignore the resume journal. */
  restart?: boolean;
  /** Write into a non-empty folder target. */
  force?: boolean;
  /** Keep the image's partition sizes (RestoreOptions.keepSizes). */
  keepSizes?: boolean;
  tuneReassembly?: boolean;
  /** Each change while waiting (joined, needed, countdown). */
  onWaiting?: (v: JoinView) => void;
  /** Said once: which server, which disk. */
  onNote?: (line: string) => void;
  onProgress?: (p: ReceiverProgress) => void;
  log?: (line: string) => void;
  warn?: (line: string) => void;
  signal?: AbortSignal;
  /** How long to keep asking a server that went away while waiting (default 5 min). */
  serverRetryMs?: number;
  /** Each piece of output of a post-imaging script, as it comes. */
  onScriptOutput?: (script: string, text: string) => void;
  /** Report boot phases to the server (default: when IMGCAST_BOOTENV=1, the network-booted environment). */
  bootPhases?: boolean;
}

export interface SessionResult {
  session: string;
  run: number;
  server: string;
  disk: string;
  image: string;
  fileset: number;
  receive: ReceiverResult;
  /** What was made of the restored system (identity, post-imaging scripts), when the server asked for it. */
  postImaging?: PostImagingResult;
  /** With `reboot`: how the firmware boots the restored disk next. */
  boot?: BootPlan;
}

const ENDED = new Set(['done', 'failed', 'stopped', 'interrupted']);
/** How many times in a row a dropped workstation joins its run again without getting a chunk. */
const CATCH_UP_TRIES = 3;

export async function runSession(o: SessionOptions): Promise<SessionResult> {
  const server = o.server ?? (await findServer(o));
  const inventory = await registration({ interface: o.interface });
  // Refused before this workstation is registered, as every refusal comes before any change.
  const disk = o.disk ?? (await chooseDisk(inventory.disks));
  if (o.reboot) checkRebootTarget(disk);
  const first = await register(server, inventory, o.signal);
  return followReferrals(first, inventory, o, ({ api, reg }) => {
    o.onNote?.(`server ${api.baseUrl}, this workstation is ${reg.name} (${inventory.mac}), target ${disk}`);
    const phases = phaseReporter(api, o.bootPhases ?? inBootEnvironment(), o.warn);
    phases.report('environment');
    return takePart(api, o.session, disk, whoIs(inventory, o), o, true, phases);
  });
}

export interface AutoOptions extends Omit<SessionOptions, 'session'> {
  /** How the master of an automatic session captures its disk (img session NAME master's). */
  capture: LiveCapture;
  /** What the master sees while it sends (who joined, each client's end). */
  onMasterView?: (v: MasterView) => void;
  onMasterProgress?: (p: SenderProgress) => void;
  /** Each answer of the server (which session, and why). */
  onChoice?: (c: AutoChoice) => void;
  /** How often to ask again while the chosen session is sending to others (default 10 s). */
  retryMs?: number;
}

export type AutoResult =
  | { session: null; why: string; server: string; workstation: string }
  | (SessionResult & { role: 'client'; why: string; workstation: string })
  | (MasterResult & { role: 'master'; why: string; workstation: string });

export async function runAuto(o: AutoOptions): Promise<AutoResult> {
  const server = o.server ?? (await findServer(o));
  const inventory = await registration({ interface: o.interface });
  const { api, reg } = await register(server, inventory, o.signal);
  o.onNote?.(`server ${api.baseUrl}, this workstation is ${reg.name} (${inventory.mac})`);
  const phases = phaseReporter(api, o.bootPhases ?? inBootEnvironment(), o.warn);
  phases.report('environment');
  let disk = o.disk;
  if (o.reboot && disk !== undefined) checkRebootTarget(disk);
  let waited = '';
  for (;;) {
    const choice = await api.request<AutoChoice>('GET', '/api/auto', { signal: o.signal });
    o.onChoice?.(choice);
    if (choice.session === null)
      return { session: null, why: choice.why, server: api.baseUrl, workstation: reg.name };
    // The disk is looked for only once there is something to write to it (or to send).
    if (choice.role === 'master') {
      disk ??= await chooseDisk(inventory.disks);
      o.onNote?.(`this workstation is the master of ${choice.session}: sending ${disk}`);
      const r = await master(api, choice.session, disk, {
        ...o,
        onView: o.onMasterView,
        onProgress: o.onMasterProgress,
      });
      return { ...r, role: 'master', why: choice.why, workstation: reg.name };
    }
    if (disk === undefined) {
      disk = await chooseDisk(inventory.disks);
      if (o.reboot) checkRebootTarget(disk);
      o.onNote?.(`target ${disk}`);
    }
    try {
      const r = await takePart(api, choice.session, disk, whoIs(inventory, o), o, false, phases);
      return { ...r, role: 'client', why: choice.why, workstation: reg.name };
    } catch (err) {
      const sending =
        err instanceof ApiError &&
        err.code === 'E_SESSION_STATE' &&
        err.details.state === 'sending' &&
        err.details.auto === true;
      if (!sending) throw err;
      if (waited !== choice.session) {
        o.onNote?.(`session ${choice.session} is sending to other workstations; this one takes its next run`);
        waited = choice.session;
      }
      await sleep(o.retryMs ?? 10_000, undefined, { signal: o.signal }).catch(() => {
        throw o.signal?.reason;
      });
    }
  }
}

/** What post-imaging scripts learn of this workstation. */
interface Whois {
  mac: string;
  address?: string;
}

function whoIs(inventory: Awaited<ReturnType<typeof registration>>, o: { interface?: string }): Whois {
  const address = o.interface ?? inventory.addresses[0];
  return { mac: inventory.mac, ...(address ? { address } : {}) };
}

/** The identity as the report carries it (within the API's bounds). */
function reported(r: PostImagingResult['identity']): AppliedIdentity | undefined {
  if (!r) return undefined;
  return {
    name: r.name,
    machineId: r.machineId,
    sshHostKeys: r.sshHostKeys.slice(0, 16),
    windowsName: r.windows?.computerName ?? null,
    notes: r.notes.slice(0, 50).map((n) => (n.length > 1000 ? `${n.slice(0, 999)}…` : n)),
  };
}

/** Joins the session, waits for its start, receives onto the disk and reports the result. */
async function takePart(
  api: ApiClient,
  session: string,
  disk: string,
  who: Whois,
  o: Omit<SessionOptions, 'session'>,
  open: boolean,
  phases: PhaseReporter,
): Promise<SessionResult> {
  const path = `/api/sessions/${encodeURIComponent(session)}`;
  // img session NAME opens a session nobody named yet, to wait there for its master.
  let view = await api.request<JoinView>('POST', `${path}/join${open ? '?open=true' : ''}`, {
    signal: o.signal,
  });
  phases.report('joined');
  view = await waitForStart(api, path, view, o);
  phases.report('imaging');
  const receiver = view.receiver!;
  const journalPath = await defaultJournal(disk);
  const pace = reportPace(Date.now());
  const report = (body: Record<string, unknown>) =>
    api.request('POST', `${path}/report`, { body: { run: view.run, ...body }, timeoutMs: 10_000 });
  let manifest: Manifest | undefined;
  // The identity's SSH host keys are made while the disk is written (see HostKeyForge).
  let hostKeys: HostKeyForge | undefined;
  const receive = (from: NonNullable<JoinView['receiver']>, resume: boolean) =>
    runReceiver({
      from: from.from,
      key: from.key,
      name: from.name,
      interface: o.interface,
      decode: imageDecoder,
      journalPath,
      tuneKernel: true,
      tuneReassembly: o.tuneReassembly,
      log: o.log,
      warn: o.warn,
      signal: o.signal,
      onProgress: (p) => {
        o.onProgress?.(p);
        // Everything has arrived: what is left is the restore's own checks of the written disk.
        if (p.totalChunks > 0 && p.chunks >= p.totalChunks) phases.report('verifying');
        if (pace.due(Date.now())) {
          void report({ state: 'receiving', bytes: p.bytes, totalBytes: p.totalBytes }).catch(() => {});
        }
      },
      makeConsumer: async (s) => {
        manifest = (s.meta as Partial<ImageMeta> | null)?.manifest;
        const name = view.identity?.name;
        if (!hostKeys && manifest && name != null) hostKeys = forgeHostKeys(manifest, receiver.fileset, name);
        const consumer = await restoreConsumer(s, disk, {
          force: o.force,
          keepSizes: o.keepSizes,
          onWarning: o.warn ?? o.log,
          journalPath,
          // Catching up resumes what this run wrote, whatever the first attempt was told.
          restart: resume ? false : o.restart,
        });
        // A live session's manifest comes whole only with its seal; identity needs it.
        const seal = consumer.seal?.bind(consumer);
        if (seal) {
          consumer.seal = async (meta: unknown) => {
            await seal(meta);
            manifest = (meta as Partial<ImageMeta> | null)?.manifest ?? manifest;
          };
        }
        return consumer;
      },
    });
  try {
    let result = await receive(receiver, false);
    // Dropped for falling behind while the run goes on: it catches up, as the sender takes a
    // workstation that joins again as the same receiver and the journal keeps what it wrote, so
    // only what it lacks comes again. Once the others are done it is alone, and nobody is
    // dropped for being slower than the rest.
    // It goes on while each attempt gets chunks it lacked; one that got none is not catching up.
    let stalled = 0;
    for (let tries = 1; !result.ok && result.code === 'E_DROPPED' && stalled < CATCH_UP_TRIES; tries++) {
      if (o.signal?.aborted) break;
      const again = await api
        .request<JoinView>('POST', `${path}/join`, { signal: o.signal, timeoutMs: 10_000 })
        .catch(() => undefined);
      if (!again || again.run !== view.run || again.state !== 'sending' || !again.receiver) break;
      o.onNote?.(`${result.message ?? 'dropped by the sender'}; joining again to catch up (${tries})`);
      const before = result.chunks;
      result = await receive(again.receiver, true);
      stalled = result.chunks > before ? 0 : stalled + 1;
    }
    const outcome = {
      session: view.session,
      run: view.run,
      server: api.baseUrl,
      disk,
      image: receiver.image,
      fileset: receiver.fileset,
    };
    if (result.ok) {
      let after: PostImagingResult | undefined;
      if (view.identity && manifest) {
        phases.report('identity');
        try {
          after = await postImaging(disk, manifest, {
            identity: {
              ...(view.identity.name !== null ? { name: view.identity.name } : {}),
              ...who,
              session: view.session,
              image: receiver.image,
            },
            scripts: view.identity.scripts ?? [],
            fileset: receiver.fileset,
            ...(o.signal ? { signal: o.signal } : {}),
            ...(o.warn ? { onWarning: o.warn } : {}),
            ...(o.onScriptOutput ? { onScriptOutput: o.onScriptOutput } : {}),
            ...(hostKeys ? { hostKeys } : {}),
          });
          if (view.identity.why) after.identity?.notes.unshift(`no name: ${view.identity.why}`);
        } catch (err) {
          // The disk is written and verified, but the system on it is not this workstation yet (or a script failed).
          const applied =
            err instanceof ImgcastError ? (err.details.identity as PostImagingResult['identity']) : undefined;
          const code = err instanceof ImgcastError ? err.code : 'E_IDENTITY';
          const message = `the image was written and verified, but ${(err as Error).message}`;
          await report({
            state: 'failed',
            bytes: result.bytes,
            totalBytes: result.bytes,
            code,
            message: message.length > 4096 ? `${message.slice(0, 4095)}…` : message,
            ...(applied ? { identity: reported(applied) } : {}),
          }).catch(() => {});
          throw err;
        }
      }
      const identity = reported(after?.identity ?? null);
      await report({
        state: 'ok',
        bytes: result.bytes,
        totalBytes: result.bytes,
        ...(identity ? { identity } : {}),
      }).catch((err: unknown) =>
        o.warn?.(
          `the disk is written and verified, but the server did not take the result: ${(err as Error).message}`,
        ),
      );
      // Only a disk written, verified and made this workstation's is booted into.
      const boot =
        o.reboot && manifest ? await prepareBootNext(disk, manifest, `imgcast ${view.session}`) : undefined;
      if (boot) {
        phases.report('rebooting');
        await phases.flush();
      }
      return {
        ...outcome,
        receive: result,
        ...(after ? { postImaging: after } : {}),
        ...(boot ? { boot } : {}),
      };
    }
    if (o.signal?.aborted && o.signal.reason instanceof ImgcastError) {
      await report({ state: 'failed', code: o.signal.reason.code, message: o.signal.reason.message }).catch(
        () => {},
      );
      throw o.signal.reason;
    }
    throw await failure(api, path, view, result, session, report);
  } finally {
    // Keys made ahead that identity did not take (or never ran to take) go, and their ssh-keygen with them.
    await hostKeys?.discard();
  }
}

/** Why the receive failed, as the server sees it when it still answers; the failure is reported to it. */
async function failure(
  api: ApiClient,
  path: string,
  view: JoinView,
  result: ReceiverResult,
  session: string,
  report: (b: Record<string, unknown>) => Promise<unknown>,
): Promise<ImgcastError> {
  const message = result.message ?? 'the receive failed';
  let now: JoinView | undefined;
  try {
    now = await api.request<JoinView>('GET', `${path}/wait?since=0&timeoutMs=0`, { timeoutMs: 5000 });
  } catch (err) {
    if (err instanceof ApiError && err.code === 'E_SESSION_UNKNOWN') {
      return new ClientError('E_STOPPED', `session ${session} was stopped and deleted by the administrator`, {
        session,
      });
    }
    now = undefined;
  }
  if (!now) {
    return new ClientError(
      'E_SERVER_LOST',
      `the sender stopped mid-session and the imaging server at ${api.baseUrl} does not answer (${message}): ` +
        `session ${session} is interrupted. Once the administrator restarts it (imgcast session restart ${session}), ` +
        `run img session ${session} again: only what this disk still lacks is sent`,
      { session, receive: result },
    );
  }
  if (now.state === 'stopped' || now.run !== view.run) {
    return new ClientError('E_STOPPED', `session ${session} was stopped by the administrator`, {
      session,
      receive: result,
    });
  }
  await report({ state: 'failed', code: result.code ?? 'E_RECEIVE', message }).catch(() => {});
  return new ImgcastError(result.code ?? 'E_RECEIVE', message, { session, receive: result });
}

/** Waits (long polls) until the session sends; a server that restarts meanwhile is asked again. */
async function waitForStart(
  api: ApiClient,
  path: string,
  first: JoinView,
  o: Omit<SessionOptions, 'session'>,
): Promise<JoinView> {
  let view = first;
  let lostSince = 0;
  for (;;) {
    if (view.state === 'sending' && view.receiver) return view;
    // Sending without a place to receive from: the master is still starting its capture.
    if (ENDED.has(view.state)) {
      const stopped = view.state === 'stopped';
      throw new ClientError(
        stopped ? 'E_STOPPED' : 'E_SESSION_ENDED',
        stopped
          ? `session ${view.session} was stopped by the administrator`
          : `session ${view.session} is ${view.state}${view.message ? `: ${view.message}` : ''}`,
        { session: view.session, state: view.state },
      );
    }
    o.onWaiting?.(view);
    try {
      view = await api.request<JoinView>('GET', `${path}/wait?since=${view.version}&timeoutMs=20000`, {
        signal: o.signal,
        timeoutMs: 30_000,
      });
      lostSince = 0;
    } catch (err) {
      if (!(err instanceof ApiError) || err.code !== 'E_SERVER_UNREACHABLE') throw err;
      lostSince ||= Date.now();
      if (Date.now() - lostSince > (o.serverRetryMs ?? 300_000)) throw err;
      o.warn?.(`${err.message}; asking again`);
      await new Promise((r) => setTimeout(r, 2000));
      if (o.signal?.aborted) throw o.signal.reason;
    }
  }
}
