/**
 * The HTTP API's contract: every request and response body, as TypeBox schemas. The server
 * validates against them (and publishes them in its OpenAPI document); the CLI and the
 * workstation client type their calls with them. Sizes are bytes, times milliseconds since
 * the epoch, durations milliseconds.
 */
import { Type, type Static } from 'typebox';

export const API_VERSION = 1;

export const ErrorBody = Type.Object(
  {
    error: Type.String({ description: 'stable error code, e.g. E_SESSION_UNKNOWN' }),
    message: Type.String(),
  },
  { additionalProperties: true },
);
export type ErrorBody = Static<typeof ErrorBody>;

export const SessionName = Type.String({
  minLength: 1,
  maxLength: 64,
  pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$',
});
export const Fileset = Type.Integer({ minimum: 1, maximum: 10 });

export const SessionState = Type.Union([
  Type.Literal('waiting'),
  Type.Literal('sending'),
  Type.Literal('done'),
  Type.Literal('failed'),
  Type.Literal('stopped'),
  Type.Literal('interrupted'),
]);
export type SessionState = Static<typeof SessionState>;

export const ClientState = Type.Union([
  Type.Literal('joined'),
  Type.Literal('receiving'),
  Type.Literal('writing'),
  Type.Literal('ok'),
  Type.Literal('failed'),
  Type.Literal('dropped'),
]);
export type ClientState = Static<typeof ClientState>;

export const SessionClient = Type.Object({
  workstation: Type.String(),
  name: Type.String(),
  mac: Type.String(),
  address: Type.String(),
  joinedAt: Type.Number(),
  state: ClientState,
  bytes: Type.Number(),
  totalBytes: Type.Number(),
  rateMbit: Type.Number(),
  etaMs: Type.Union([Type.Number(), Type.Null()]),
  code: Type.Union([Type.String(), Type.Null()]),
  reason: Type.Union([Type.String(), Type.Null()]),
  finishedAt: Type.Union([Type.Number(), Type.Null()]),
});
export type SessionClient = Static<typeof SessionClient>;

/** A workstation as a session's definition names it. */
export const WorkstationBrief = Type.Object({ id: Type.String(), name: Type.String(), mac: Type.String() });
export type WorkstationBrief = Static<typeof WorkstationBrief>;

export const AutoRule = Type.Object({
  text: Type.String({ description: 'the rule as the administrator wrote it' }),
  description: Type.String({ description: 'how the server reads it (canonical form), or why it cannot' }),
  valid: Type.Boolean(),
});
export type AutoRule = Static<typeof AutoRule>;

export const AutoDefinition = Type.Object({
  enabled: Type.Boolean({ description: 'a disabled session takes no workstation' }),
  position: Type.Integer({ description: 'place in the ordered list of automatic sessions, from 1' }),
  master: Type.Union([WorkstationBrief, Type.Null()], {
    description: 'the workstation whose disk is sent (live master); null when an image is sent',
  }),
  deleteWhenDone: Type.Boolean({ description: 'the session is deleted once a run has finished' }),
  members: Type.Array(WorkstationBrief, { description: 'workstations listed explicitly' }),
  rules: Type.Array(AutoRule, { description: 'any rule that matches includes a workstation' }),
});
export type AutoDefinition = Static<typeof AutoDefinition>;

export const CompressionLevel = Type.Union([
  Type.Literal('none'),
  Type.Literal('speed'),
  Type.Literal('balanced'),
  Type.Literal('size'),
]);

export const StartBy = Type.Union(
  [Type.Literal('count-or-time'), Type.Literal('count'), Type.Literal('time'), Type.Literal('command')],
  { description: 'which triggers start the session; command: only a start command (img session start)' },
);

/** The workstation whose disk a session sends, read as it is sent. */
export const SessionMaster = Type.Object({
  workstation: Type.String(),
  name: Type.String(),
  mac: Type.String(),
  present: Type.Boolean({ description: 'its img session NAME master is connected to the server now' }),
  address: Type.Union([Type.String(), Type.Null()], { description: 'where its sender listens' }),
  level: CompressionLevel,
});
export type SessionMaster = Static<typeof SessionMaster>;

export const Session = Type.Object({
  name: Type.String(),
  origin: Type.Union([Type.Literal('server'), Type.Literal('workstation'), Type.Literal('task')], {
    description:
      'server: imgcast mcast or an automatic session; workstation: opened by img session NAME; task: a one-off task (imgcast task add)',
  }),
  startBy: StartBy,
  master: Type.Union([SessionMaster, Type.Null()]),
  names: Type.Union([Type.String(), Type.Null()], {
    description: 'the naming template for workstations the administrator has not named',
  }),
  scripts: Type.Array(Type.String(), { description: 'the post-imaging scripts it carries, by name' }),
  image: Type.String({
    description: 'path of the image inside the image directory; empty when a master workstation sends',
  }),
  fileset: Type.Integer(),
  clientCount: Type.Integer({ description: 'start once this many clients have joined' }),
  waitMs: Type.Number({ description: 'start this long after the last new client joined' }),
  state: SessionState,
  run: Type.Integer({ description: 'how many times the session was (re)opened' }),
  joined: Type.Integer(),
  needed: Type.Integer({ description: 'clients still needed before the count trigger fires' }),
  startsInMs: Type.Union([Type.Number(), Type.Null()], {
    description: 'time left before the time trigger fires; null until a client joined',
  }),
  group: Type.Union([Type.String(), Type.Null()]),
  port: Type.Union([Type.Integer(), Type.Null()]),
  createdAt: Type.Number(),
  startedAt: Type.Union([Type.Number(), Type.Null()]),
  firstDataAt: Type.Union([Type.Number(), Type.Null()], {
    description: 'when the first data of this run was sent',
  }),
  finishedAt: Type.Union([Type.Number(), Type.Null()]),
  message: Type.Union([Type.String(), Type.Null()]),
  rateMbit: Type.Number(),
  clients: Type.Array(SessionClient),
  auto: Type.Union([AutoDefinition, Type.Null()], {
    description: 'the definition of an automatic session; null for a session made with imgcast mcast',
  }),
});
export type Session = Static<typeof Session>;

/** A post-imaging script as a session carries it: its file name and its text. */
export const PostImagingScript = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 255 }),
    content: Type.String({ maxLength: 65_536 }),
  },
  { additionalProperties: false },
);
export type PostImagingScript = Static<typeof PostImagingScript>;

/** How a session names the workstations the administrator has not named: lab1-{nn}, pc-{mac}. */
export const NameTemplate = Type.String({ minLength: 1, maxLength: 63 });
const SessionScripts = Type.Array(PostImagingScript, { maxItems: 16 });

export const CreateSession = Type.Object(
  {
    name: SessionName,
    image: Type.String({ minLength: 1, maxLength: 4096 }),
    fileset: Type.Optional(Fileset),
    clientCount: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })),
    waitMinutes: Type.Optional(Type.Number({ minimum: 0, maximum: 10080 })),
    waitSeconds: Type.Optional(Type.Number({ minimum: 0, maximum: 604800 })),
    names: Type.Optional(NameTemplate),
    scripts: Type.Optional(SessionScripts),
  },
  { additionalProperties: false },
);
export type CreateSession = Static<typeof CreateSession>;

/** A workstation as the administrator names it: its name on the server, its MAC or its id. */
export const WorkstationRef = Type.String({ minLength: 1, maxLength: 255 });
/** Longer than a rule may be, so that the rule parser says where an over-long rule goes past it. */
export const RuleText = Type.String({ minLength: 1, maxLength: 8000 });

export const EditSession = Type.Object(
  {
    clientCount: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })),
    waitMinutes: Type.Optional(Type.Number({ minimum: 0, maximum: 10080 })),
    waitSeconds: Type.Optional(Type.Number({ minimum: 0, maximum: 604800 })),
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
    fileset: Type.Optional(Fileset),
    master: Type.Optional(WorkstationRef),
    deleteWhenDone: Type.Optional(Type.Boolean()),
    names: Type.Optional(Type.String({ maxLength: 63, description: "'' for none" })),
    scripts: Type.Optional(SessionScripts),
  },
  { additionalProperties: false },
);
export type EditSession = Static<typeof EditSession>;

export const CreateAutoSession = Type.Object(
  {
    name: SessionName,
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
    fileset: Type.Optional(Fileset),
    master: Type.Optional(WorkstationRef),
    clientCount: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })),
    waitMinutes: Type.Optional(Type.Number({ minimum: 0, maximum: 10080 })),
    waitSeconds: Type.Optional(Type.Number({ minimum: 0, maximum: 604800 })),
    deleteWhenDone: Type.Optional(Type.Boolean()),
    enabled: Type.Optional(Type.Boolean()),
    include: Type.Optional(Type.Array(WorkstationRef, { maxItems: 10000 })),
    rules: Type.Optional(Type.Array(RuleText, { maxItems: 1000 })),
    names: Type.Optional(NameTemplate),
    scripts: Type.Optional(SessionScripts),
  },
  { additionalProperties: false },
);
export type CreateAutoSession = Static<typeof CreateAutoSession>;

export const SessionMembers = Type.Object(
  { workstations: Type.Array(WorkstationRef, { minItems: 1, maxItems: 10000 }) },
  { additionalProperties: false },
);
export type SessionMembers = Static<typeof SessionMembers>;

export const AddRule = Type.Object({ rule: RuleText }, { additionalProperties: false });

/** Which automatic session a workstation joins, and why (or why none). */
export const AutoChoice = Type.Union([
  Type.Object({
    session: Type.String(),
    role: Type.Union([Type.Literal('master'), Type.Literal('client')]),
    why: Type.String(),
  }),
  Type.Object({ session: Type.Null(), why: Type.String() }),
]);
export type AutoChoice = Static<typeof AutoChoice>;

export const StopSession = Type.Object(
  { delete: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);

export const Counters = Type.Object({
  requestsReceived: Type.Number({ description: 'requests from workstations (register, join, report)' }),
  imagesSent: Type.Number({ description: 'images put down on a workstation and verified there' }),
  imagesReceived: Type.Number({ description: 'images uploaded to the server (img make --server)' }),
  clientReferrals: Type.Number({ description: 'workstations sent on to another imaging server' }),
  errors: Type.Number({ description: 'failed client results and server errors' }),
});
export type Counters = Static<typeof Counters>;

/** A long change or check of an image under way on the server (verify, compact, add), for progress bars. */
export const ImageJob = Type.Object({
  id: Type.String(),
  kind: Type.Union([Type.Literal('verify'), Type.Literal('compact'), Type.Literal('add')]),
  image: Type.String({ description: 'path inside the image directory' }),
  done: Type.Number(),
  total: Type.Number(),
  unit: Type.Union([Type.Literal('chunks'), Type.Literal('bytes')]),
  startedAt: Type.Number(),
});
export type ImageJob = Static<typeof ImageJob>;

export const SiteServer = Type.Object({
  name: Type.String(),
  url: Type.String({ description: 'where workstations reach it; what a referral sends them to' }),
  version: Type.String(),
  startedAt: Type.Number(),
  seenAt: Type.Number({ description: 'its last heartbeat (every 10 s while it runs)' }),
  state: Type.Union([Type.Literal('up'), Type.Literal('stopped'), Type.Literal('down')], {
    description: 'down: no heartbeat for 30 s and it did not say it stopped (crashed or cut off)',
  }),
  self: Type.Boolean({ description: 'the server that answered' }),
});
export type SiteServer = Static<typeof SiteServer>;

export const Status = Type.Object({
  server: Type.Object({
    name: Type.String(),
    version: Type.String(),
    startedAt: Type.Number(),
    warnings: Type.Array(Type.String(), {
      description:
        'what the administrator should fix in the server’s setup (an imaging environment built for another imgcast version)',
    }),
  }),
  counters: Counters,
  sessions: Type.Array(Session),
  jobs: Type.Array(ImageJob, { description: 'verify, compact and add of images under way' }),
  servers: Type.Array(SiteServer, {
    description: 'the imaging servers sharing this database, this one first (one entry when it is alone)',
  }),
});
export type Status = Static<typeof Status>;

export const HistoryEntry = Type.Object({
  session: Type.String(),
  run: Type.Integer(),
  image: Type.String(),
  fileset: Type.Integer(),
  state: SessionState,
  startedAt: Type.Union([Type.Number(), Type.Null()]),
  finishedAt: Type.Number(),
  message: Type.Union([Type.String(), Type.Null()]),
  clients: Type.Array(SessionClient),
});
export type HistoryEntry = Static<typeof HistoryEntry>;

export const Image = Type.Object({
  name: Type.String({ description: 'path inside the image directory' }),
  sizeBytes: Type.Number(),
  modifiedAt: Type.Number(),
  imageId: Type.Union([Type.String(), Type.Null()]),
  source: Type.Union([Type.String(), Type.Null()]),
  volumes: Type.Union([Type.Integer(), Type.Null()]),
  rawBytes: Type.Union([Type.Number(), Type.Null()]),
  problem: Type.Union([Type.String(), Type.Null()], {
    description: 'why the file cannot be read as an image',
  }),
});
export type Image = Static<typeof Image>;

export const Inventory = Type.Object(
  {
    hostname: Type.String({ minLength: 1, maxLength: 255 }),
    mac: Type.String({ pattern: '^[0-9a-f]{2}(:[0-9a-f]{2}){5}$' }),
    addresses: Type.Array(Type.String({ maxLength: 64 }), { maxItems: 64 }),
    disks: Type.Array(
      Type.Object(
        {
          path: Type.String({ maxLength: 255 }),
          sizeBytes: Type.Number({ minimum: 0 }),
          model: Type.Optional(Type.String({ maxLength: 255 })),
          serial: Type.Optional(Type.String({ maxLength: 255 })),
          removable: Type.Optional(Type.Boolean()),
          rotational: Type.Optional(Type.Boolean()),
        },
        { additionalProperties: false },
      ),
      { maxItems: 64 },
    ),
    memoryBytes: Type.Number({ minimum: 0 }),
    cpu: Type.Object({ model: Type.String({ maxLength: 255 }), cores: Type.Integer({ minimum: 0 }) }),
    dmi: Type.Object(
      {
        vendor: Type.Optional(Type.String({ maxLength: 255 })),
        product: Type.Optional(Type.String({ maxLength: 255 })),
        serial: Type.Optional(Type.String({ maxLength: 255 })),
        uuid: Type.Optional(Type.String({ maxLength: 255 })),
      },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false },
);
export type Inventory = Static<typeof Inventory>;

export const Registered = Type.Object({ id: Type.String(), name: Type.String(), token: Type.String() });
export type Registered = Static<typeof Registered>;

/** An SSH host key a workstation made for its restored system (engine/identity). */
export const SshHostKey = Type.Object(
  {
    type: Type.String({
      minLength: 1,
      maxLength: 32,
      description: 'as in the file name: rsa, ecdsa, ed25519',
    }),
    bits: Type.Integer({ minimum: 0, maximum: 65536 }),
    fingerprint: Type.String({
      pattern: '^SHA256:[A-Za-z0-9+/]+=*$',
      maxLength: 128,
      description: 'as ssh-keygen -l and ssh itself show it',
    }),
    publicKey: Type.String({ minLength: 1, maxLength: 16384, description: 'the .pub line, for known_hosts' }),
  },
  { additionalProperties: false },
);
export type SshHostKey = Static<typeof SshHostKey>;

/**
 * What a workstation applied to its restored system after a verified receive, as it reports it.
 * Null comes first in each union: the request validator coerces types and would make a null
 * an empty string if a string were tried first.
 */
export const AppliedIdentity = Type.Object(
  {
    name: Type.Union([Type.Null(), Type.String({ maxLength: 63 })], {
      description: "the host name given; null when the image's was kept",
    }),
    machineId: Type.Union([Type.Null(), Type.String({ pattern: '^[0-9a-f]{32}$' })], {
      description:
        'the new /etc/machine-id; null when none was written (kept empty or uninitialized, or no Linux)',
    }),
    sshHostKeys: Type.Array(SshHostKey, { maxItems: 16 }),
    windowsName: Type.Union([Type.Null(), Type.String({ maxLength: 15 })], {
      description: 'the computer name set in the Windows answer file; null when none was set',
    }),
    notes: Type.Array(Type.String({ maxLength: 1000 }), { maxItems: 50 }),
  },
  { additionalProperties: false },
);
export type AppliedIdentity = Static<typeof AppliedIdentity>;

/** A workstation's identity as the server keeps it: the last one reported, with where and when. */
export const ReportedIdentity = Type.Object({
  ...AppliedIdentity.properties,
  session: Type.String({ description: 'the session it was imaged in' }),
  image: Type.String(),
  reportedAt: Type.Number(),
});
export type ReportedIdentity = Static<typeof ReportedIdentity>;

/** Where a workstation is in a network boot (docs/netboot contract): set by the server or reported by the environment. */
export const BootPhase = Type.Union(
  [
    Type.Literal('netboot'),
    Type.Literal('environment'),
    Type.Literal('joined'),
    Type.Literal('imaging'),
    Type.Literal('verifying'),
    Type.Literal('identity'),
    Type.Literal('rebooting'),
    Type.Literal('up'),
  ],
  {
    description:
      'netboot: told to boot the imaging environment; environment … rebooting: reported from it; up: booted its disk after a success',
  },
);
export type BootPhase = Static<typeof BootPhase>;

/** The phases a workstation reports itself (the server sets netboot and up). */
export const ReportedPhase = Type.Union([
  Type.Literal('environment'),
  Type.Literal('joined'),
  Type.Literal('imaging'),
  Type.Literal('verifying'),
  Type.Literal('identity'),
  Type.Literal('rebooting'),
]);
export type ReportedPhase = Static<typeof ReportedPhase>;

export const PhaseReport = Type.Object({ phase: ReportedPhase }, { additionalProperties: false });
export type PhaseReport = Static<typeof PhaseReport>;

export const Workstation = Type.Object({
  id: Type.String({ description: "the MAC's hex digits" }),
  name: Type.String(),
  named: Type.Boolean({ description: 'the administrator gave the name; registering keeps it' }),
  mac: Type.String(),
  ip: Type.Union([Type.String(), Type.Null()], { description: 'the address the administrator gave' }),
  hostname: Type.Union([Type.String(), Type.Null()], { description: 'null until it registers' }),
  addresses: Type.Array(Type.String()),
  lastAddress: Type.Union([Type.String(), Type.Null()]),
  createdAt: Type.Number(),
  registeredAt: Type.Union([Type.Number(), Type.Null()], { description: 'null until it registers' }),
  lastSeenAt: Type.Union([Type.Number(), Type.Null()]),
  inventory: Type.Union([Inventory, Type.Null()], { description: 'null until it registers' }),
  identity: Type.Union([ReportedIdentity, Type.Null()], {
    description:
      'what it applied to its restored system after its last imaging (host name, machine id, SSH host key fingerprints); null until then',
  }),
  phase: Type.Union([BootPhase, Type.Null()], { description: 'its last boot phase; null until one' }),
  phaseAt: Type.Union([Type.Number(), Type.Null()]),
});
export type Workstation = Static<typeof Workstation>;

/** One answer to a network boot request. */
export const BootDecision = Type.Object({
  at: Type.Number(),
  mac: Type.String(),
  workstation: Type.Union([Type.String(), Type.Null()], { description: 'its name when the server knows it' }),
  platform: Type.String({ description: "iPXE's ${platform}: pcbios or efi" }),
  decision: Type.Union([Type.Literal('image'), Type.Literal('local')]),
  session: Type.Union([Type.String(), Type.Null()], { description: 'the session or task it images in' }),
  why: Type.String(),
});
export type BootDecision = Static<typeof BootDecision>;

/** A one-off task: image this workstation with this image (a session of its own, clients 1). */
export const Task = Type.Object({
  workstation: WorkstationBrief,
  session: Type.String({ description: 'the session that carries it out' }),
  image: Type.String(),
  fileset: Type.Integer(),
  scripts: Type.Array(Type.String()),
  state: SessionState,
  createdAt: Type.Number(),
  message: Type.Union([Type.String(), Type.Null()], {
    description: 'why its last run failed (it stays queued), or what it waits for',
  }),
});
export type Task = Static<typeof Task>;

export const CreateTask = Type.Object(
  {
    workstation: WorkstationRef,
    image: Type.String({ minLength: 1, maxLength: 4096 }),
    fileset: Type.Optional(Fileset),
    scripts: Type.Optional(SessionScripts),
  },
  { additionalProperties: false },
);
export type CreateTask = Static<typeof CreateTask>;

export const WorkstationDetail = Type.Intersect([Workstation, Type.Object({ auto: AutoChoice })]);
export type WorkstationDetail = Static<typeof WorkstationDetail>;

const WorkstationName = Type.String({
  minLength: 1,
  maxLength: 64,
  pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$',
  description: 'letters, digits, ".", "_" and "-"',
});

export const CreateWorkstation = Type.Object(
  {
    name: WorkstationName,
    mac: Type.String({ minLength: 1, maxLength: 64 }),
    ip: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  },
  { additionalProperties: false },
);
export type CreateWorkstation = Static<typeof CreateWorkstation>;

export const EditWorkstation = Type.Object(
  {
    name: Type.Optional(WorkstationName),
    ip: Type.Optional(Type.Union([Type.String({ minLength: 1, maxLength: 64 }), Type.Null()])),
  },
  { additionalProperties: false },
);
export type EditWorkstation = Static<typeof EditWorkstation>;

export const ImportWorkstations = Type.Object(
  { csv: Type.String({ maxLength: 900_000, description: 'name,mac[,ip] rows; a header row is allowed' }) },
  { additionalProperties: false },
);

export const Imported = Type.Object({
  added: Type.Integer(),
  updated: Type.Integer(),
  unchanged: Type.Integer(),
  workstations: Type.Array(Workstation, { description: 'the rows of the file, in its order' }),
});
export type Imported = Static<typeof Imported>;

/** A post-imaging script a session carries: run on each workstation after identity (engine/identity/scripts.ts). */

/**
 * What a workstation makes of its restored system once the receive is verified, sent with the
 * receiver. Absent (an older server): the workstation applies no identity and runs no script.
 */
export const IdentityOrder = Type.Object({
  name: Type.Union([Type.String(), Type.Null()], {
    description:
      "host name (and Windows computer name) to give the restored system; null: keep the image's (machine id, SSH host keys and the rest are renewed all the same)",
  }),
  /** Why `name` is null, for the workstation's result. */
  why: Type.Optional(Type.String()),
  scripts: Type.Optional(Type.Array(PostImagingScript)),
});
export type IdentityOrder = Static<typeof IdentityOrder>;

/** What a workstation that joined sees while it waits, and where to receive once the session sends. */
export const JoinView = Type.Object({
  session: Type.String(),
  run: Type.Integer(),
  state: SessionState,
  joined: Type.Integer(),
  needed: Type.Integer(),
  startsInMs: Type.Union([Type.Number(), Type.Null()]),
  message: Type.Union([Type.String(), Type.Null()]),
  /** Bumped on every change; the wait call returns as soon as it differs from `since`. */
  version: Type.Integer(),
  receiver: Type.Union([
    Type.Object({
      from: Type.String({ description: 'the sender control address, host:port' }),
      key: Type.String(),
      name: Type.String({ description: 'the name to give the sender' }),
      image: Type.String(),
      fileset: Type.Integer(),
    }),
    Type.Null(),
  ]),
  identity: Type.Optional(IdentityOrder),
});
export type JoinView = Static<typeof JoinView>;

/** img session NAME master: the master's trigger (none given: it starts on img session start). */
export const MasterClaim = Type.Object(
  {
    clients: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })),
    waitMinutes: Type.Optional(Type.Number({ minimum: 0, maximum: 10080 })),
    level: Type.Optional(CompressionLevel),
    address: Type.Optional(
      Type.String({
        maxLength: 64,
        description: 'the address its sender listens on; default: the one it calls from',
      }),
    ),
  },
  { additionalProperties: false },
);
export type MasterClaim = Static<typeof MasterClaim>;

/** What the master of a session sees: who joined, and once started, where and how to send. */
export const MasterView = Type.Object({
  session: Type.String(),
  run: Type.Integer(),
  state: SessionState,
  startBy: StartBy,
  clientCount: Type.Integer(),
  waitMs: Type.Number(),
  joined: Type.Integer(),
  needed: Type.Integer(),
  startsInMs: Type.Union([Type.Number(), Type.Null()]),
  level: CompressionLevel,
  message: Type.Union([Type.String(), Type.Null()]),
  version: Type.Integer(),
  clients: Type.Array(SessionClient),
  send: Type.Union([
    Type.Object({
      group: Type.String(),
      port: Type.Integer(),
      key: Type.String(),
      clients: Type.Integer({ description: 'how many receivers to wait for' }),
    }),
    Type.Null(),
  ]),
});
export type MasterView = Static<typeof MasterView>;

const ReceiverBrief = Type.Object({
  name: Type.String({ maxLength: 512 }),
  state: Type.Union([
    Type.Literal('joining'),
    Type.Literal('waiting'),
    Type.Literal('receiving'),
    Type.Literal('ok'),
    Type.Literal('dropped'),
    Type.Literal('failed'),
  ]),
  // Whole numbers: what the database keeps them in (BIGINT) takes no fractions on PostgreSQL.
  bytes: Type.Integer({ minimum: 0 }),
  totalBytes: Type.Integer({ minimum: 0 }),
  rateMbit: Type.Optional(Type.Number({ minimum: 0 })),
  code: Type.Optional(Type.Union([Type.String({ maxLength: 64 }), Type.Null()])),
  reason: Type.Optional(Type.Union([Type.String({ maxLength: 4096 }), Type.Null()])),
});

/** The master's sender, as it goes: listening, progress, and its end. */
export const MasterReport = Type.Object(
  {
    run: Type.Integer({ minimum: 1 }),
    phase: Type.Union([
      Type.Literal('listening'),
      Type.Literal('waiting'),
      Type.Literal('sending'),
      Type.Literal('repairing'),
      Type.Literal('done'),
      Type.Literal('failed'),
    ]),
    bytesSent: Type.Optional(Type.Integer({ minimum: 0 })),
    receivers: Type.Optional(Type.Array(ReceiverBrief, { maxItems: 10000 })),
    code: Type.Optional(Type.String({ maxLength: 64 })),
    message: Type.Optional(Type.String({ maxLength: 4096 })),
  },
  { additionalProperties: false },
);
export type MasterReport = Static<typeof MasterReport>;

/** img session NAME as a client (?open=true): a session nobody opened yet is opened, to wait for its master. */
export const JoinRequest = Type.Object(
  { open: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);
export type JoinRequest = Static<typeof JoinRequest>;

export const ClientReport = Type.Object(
  {
    run: Type.Integer({ minimum: 1 }),
    state: Type.Union([
      Type.Literal('receiving'),
      Type.Literal('writing'),
      Type.Literal('ok'),
      Type.Literal('failed'),
    ]),
    bytes: Type.Optional(Type.Integer({ minimum: 0 })),
    totalBytes: Type.Optional(Type.Integer({ minimum: 0 })),
    code: Type.Optional(Type.String({ maxLength: 64 })),
    message: Type.Optional(Type.String({ maxLength: 4096 })),
    identity: Type.Optional(AppliedIdentity),
  },
  { additionalProperties: false },
);
export type ClientReport = Static<typeof ClientReport>;

export const Login = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 64 }),
    password: Type.String({ minLength: 1, maxLength: 1024 }),
  },
  { additionalProperties: false },
);
export const LoginResult = Type.Object({ token: Type.String(), expiresAt: Type.Number() });
export type LoginResult = Static<typeof LoginResult>;

export const Health = Type.Object({
  ok: Type.Boolean(),
  name: Type.String(),
  version: Type.String(),
  api: Type.Integer(),
});
export type Health = Static<typeof Health>;

// --- uploads (img make --server)

/** Headers of a chunk PUT: how its body (the stored bytes) is coded, and the chunk's raw length. */
export const UPLOAD_CODEC_HEADER = 'x-imgcast-codec';
export const UPLOAD_RAW_LENGTH_HEADER = 'x-imgcast-raw-length';

export const CreateUpload = Type.Object(
  {
    name: Type.String({
      minLength: 1,
      maxLength: 1024,
      description: 'image path inside the image directory; .imgc is appended when missing',
    }),
    level: Type.Optional(CompressionLevel),
  },
  { additionalProperties: false },
);
export type CreateUpload = Static<typeof CreateUpload>;

export const Upload = Type.Object({
  id: Type.String(),
  name: Type.String({ description: 'the image it becomes, inside the image directory' }),
  level: CompressionLevel,
  owner: Type.String(),
  createdAt: Type.Number(),
  lastActivityAt: Type.Number(),
  idleMs: Type.Number({ description: 'the upload is aborted after this long without a request' }),
  chunks: Type.Integer({ description: 'distinct chunks stored so far' }),
  rawBytes: Type.Number(),
  storedBytes: Type.Number(),
  state: Type.Union([Type.Literal('open'), Type.Literal('committing')]),
});
export type Upload = Static<typeof Upload>;

export const UploadChunkResult = Type.Object({
  chunk: Type.String(),
  stored: Type.Boolean({ description: 'false when the upload held the chunk already' }),
});
export type UploadChunkResult = Static<typeof UploadChunkResult>;

export const UploadHave = Type.Object(
  { ids: Type.Array(Type.String({ pattern: '^[0-9a-f]{64}$' }), { maxItems: 4096 }) },
  { additionalProperties: false },
);
export const UploadHaveResult = Type.Object({
  have: Type.Array(Type.String(), { description: 'the asked ids the upload holds already' }),
});
export type UploadHaveResult = Static<typeof UploadHaveResult>;

export const CommitUpload = Type.Object(
  { manifest: Type.Object({}, { additionalProperties: true, description: 'the image manifest' }) },
  { additionalProperties: false },
);

export const UploadCommitted = Type.Object({
  image: Image,
  chunks: Type.Integer(),
  rawBytes: Type.Number(),
  storedBytes: Type.Number(),
});
export type UploadCommitted = Static<typeof UploadCommitted>;

// --- console

/** A participation rule to check as it is typed: how the server reads it and whom it takes. */
export const RuleCheck = Type.Object({ rule: RuleText }, { additionalProperties: false });

export const RuleMatch = Type.Object({
  id: Type.String(),
  name: Type.String(),
  mac: Type.String(),
  joins: Type.Union([Type.String(), Type.Null()], {
    description: 'the automatic session this workstation joins now (the first enabled one that takes it)',
  }),
});
export type RuleMatch = Static<typeof RuleMatch>;

export const RuleCheckResult = Type.Union([
  Type.Object({
    ok: Type.Literal(true),
    rule: Type.String({ description: 'how the server reads it (canonical form)' }),
    matches: Type.Array(RuleMatch, { description: 'the workstations of the inventory it matches' }),
  }),
  Type.Object({
    ok: Type.Literal(false),
    error: Type.String(),
    message: Type.String({ description: 'what is wrong and where, with the rule and a caret' }),
    position: Type.Union([Type.Integer(), Type.Null()], {
      description: 'UTF-16 offset of the trouble in the text',
    }),
    column: Type.Union([Type.Integer(), Type.Null()]),
  }),
]);
export type RuleCheckResult = Static<typeof RuleCheckResult>;

/** What an image holds (img info): source, disk layout, volumes, file sets, sizes. */
export const ImageDetails = Type.Object(
  {
    name: Type.String({ description: 'path inside the image directory' }),
    imageId: Type.String(),
    formatVersion: Type.Integer(),
    createdAt: Type.String(),
    generation: Type.Integer({ description: 'bumped by every edit (add, rm, exclude, include)' }),
    level: Type.String({ description: 'compression level' }),
    source: Type.Object({}, { additionalProperties: true }),
    fileBytes: Type.Number(),
    chunks: Type.Integer(),
    chunkRawBytes: Type.Number(),
    chunkStoredBytes: Type.Number(),
    disk: Type.Optional(
      Type.Object({}, { additionalProperties: true, description: 'layout of a disk image' }),
    ),
    volumes: Type.Array(Type.Object({}, { additionalProperties: true })),
    filesets: Type.Array(
      Type.Object({
        number: Type.Integer(),
        excludedEntries: Type.Integer(),
        bytes: Type.Number({ description: 'bytes of the files it leaves out' }),
        description: Type.String(),
        isDefault: Type.Boolean(),
      }),
    ),
  },
  { additionalProperties: true },
);
export type ImageDetails = Static<typeof ImageDetails>;

export const ImageEntry = Type.Object({
  name: Type.String(),
  path: Type.String({ description: 'explorer path: "etc/hosts", or "p2/etc/hosts" in a disk image' }),
  type: Type.String({ description: 'file, dir, symlink, … or volume (a partition of a disk image)' }),
  size: Type.Number(),
  mode: Type.Optional(Type.Integer()),
  uid: Type.Optional(Type.Integer()),
  gid: Type.Optional(Type.Integer()),
  mtime: Type.Optional(Type.String()),
  linkTarget: Type.Optional(Type.String()),
  excludedFrom: Type.Array(Type.Integer(), { description: 'the file sets that leave it out' }),
  filesystem: Type.Optional(Type.String()),
  label: Type.Optional(Type.String()),
});
export type ImageEntry = Static<typeof ImageEntry>;

export const ImageTree = Type.Object({ dir: Type.String(), entries: Type.Array(ImageEntry) });
export type ImageTree = Static<typeof ImageTree>;

export const ImageExclude = Type.Object(
  {
    path: Type.String({ minLength: 1, maxLength: 4096, description: 'the image' }),
    fileset: Fileset,
    paths: Type.Array(Type.String({ minLength: 1, maxLength: 4096 }), { minItems: 1, maxItems: 1000 }),
    excluded: Type.Boolean({ description: 'true: leave them out of the file set; false: put them back' }),
  },
  { additionalProperties: false },
);
export type ImageExclude = Static<typeof ImageExclude>;

export const ImageVerifyReport = Type.Object({
  name: Type.String(),
  ok: Type.Boolean(),
  generation: Type.Optional(Type.Integer()),
  chunksTotal: Type.Integer(),
  chunksChecked: Type.Integer(),
  bytesChecked: Type.Number(),
  unreferencedChunks: Type.Integer({ description: 'chunks compact would reclaim' }),
  problems: Type.Array(
    Type.Object({ code: Type.String(), message: Type.String(), chunk: Type.Optional(Type.String()) }),
  ),
});
export type ImageVerifyReport = Static<typeof ImageVerifyReport>;

export const ImageCompacted = Type.Object({
  name: Type.String(),
  bytesBefore: Type.Number(),
  bytesAfter: Type.Number(),
  chunksDropped: Type.Integer(),
  chunksRepacked: Type.Integer(),
  packsWritten: Type.Integer(),
});
export type ImageCompacted = Static<typeof ImageCompacted>;

/** A folder added from the browser: every file's path inside it, and what the image holds now. */
export const ImageFilesAdded = Type.Object({
  added: Type.Integer({ description: 'entries added to the image (files and folders)' }),
  bytes: Type.Number(),
  path: Type.String({ description: 'where the folder landed in the image' }),
  files: Type.Integer({ description: 'files the upload carried' }),
});
export type ImageFilesAdded = Static<typeof ImageFilesAdded>;

// --- server settings

/**
 * What an administrator may change while the server runs (imgcast settings, the console's
 * Server page): the defaults of what is made without its own value, and how long history stays.
 */
export const ServerSettings = Type.Object(
  {
    autoClients: Type.Integer({
      minimum: 1,
      maximum: 10000,
      description: 'a new automatic session without a client count starts once this many joined',
    }),
    autoWaitMinutes: Type.Number({
      minimum: 0,
      maximum: 10080,
      description: 'a new automatic session without a wait starts this long after the last new client',
    }),
    names: Type.String({
      maxLength: 63,
      description:
        "naming template new sessions without one of their own take (lab-{nn}, pc-{mac}); '' for none",
    }),
    /** Compression of uploads (img make --server) and of live masters that do not give one. */
    level: CompressionLevel,
    historyDays: Type.Integer({
      minimum: 0,
      maximum: 36500,
      description: 'finished runs older than this many days leave the history; 0 keeps them forever',
    }),
  },
  { additionalProperties: false },
);
export type ServerSettings = Static<typeof ServerSettings>;

export const EditSettings = Type.Partial(ServerSettings, { additionalProperties: false });
export type EditSettings = Static<typeof EditSettings>;

/** How the running server was started: fixed until it is started again with other options. */
export const ServerConfig = Type.Object({
  name: Type.String(),
  version: Type.String(),
  startedAt: Type.Number(),
  listen: Type.Object({ host: Type.String(), port: Type.Integer() }),
  dataDir: Type.String(),
  imagesDir: Type.String(),
  database: Type.String({
    description: 'the SQLite file, or the PostgreSQL URL the site shares (its password hidden)',
  }),
  multicast: Type.Object({
    interface: Type.Union([Type.String(), Type.Null()], {
      description: 'the local address sessions are sent from; null: the route to the group decides',
    }),
    firstGroup: Type.String(),
    lastGroup: Type.String(),
    firstPort: Type.Integer(),
    lastPort: Type.Integer(),
    slots: Type.Integer({ description: 'sessions that can send at once' }),
  }),
  discovery: Type.Union([Type.Object({ group: Type.String(), port: Type.Integer() }), Type.Null()]),
  boot: Type.Object({
    bootenvDir: Type.String(),
    bootenvVersion: Type.Union([Type.String(), Type.Null()], {
      description: 'the imgcast version the imaging environment was built for; null: not built',
    }),
    kernelArgs: Type.Union([Type.String(), Type.Null()]),
    pxe: Type.Union([
      Type.Object({
        mode: Type.Union([Type.Literal('proxy'), Type.Literal('dhcp')]),
        interface: Type.Union([Type.String(), Type.Null()]),
        address: Type.Union([Type.String(), Type.Null()]),
        range: Type.Union([Type.Object({ start: Type.String(), end: Type.String() }), Type.Null()]),
      }),
      Type.Null(),
    ]),
  }),
});
export type ServerConfig = Static<typeof ServerConfig>;

export const SettingsView = Type.Object({
  settings: ServerSettings,
  defaults: ServerSettings,
  server: ServerConfig,
});
export type SettingsView = Static<typeof SettingsView>;
