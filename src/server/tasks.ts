/**
 * One-off tasks (imgcast task add WORKSTATION IMAGE): "image this workstation with this image",
 * carried out by a session of its own (SessionManager.createTask), which img auto and the
 * network boot give precedence over the automatic sessions.
 */
import type { CreateTask, Session, Task } from '../api/schemas.ts';
import { ServerError } from './errors.ts';
import { taskSession, type SessionManager } from './sessions.ts';
import type { Workstations } from './workstations.ts';

export class Tasks {
  #sessions: SessionManager;
  #workstations: Workstations;

  constructor(sessions: SessionManager, workstations: Workstations) {
    this.#sessions = sessions;
    this.#workstations = workstations;
  }

  async add(req: CreateTask): Promise<Task> {
    const id = this.#workstations.resolve(req.workstation);
    const s = await this.#sessions.createTask({
      workstation: id,
      image: req.image,
      ...(req.fileset !== undefined ? { fileset: req.fileset } : {}),
      ...(req.scripts !== undefined ? { scripts: req.scripts } : {}),
    });
    return this.#view(s, id);
  }

  list(): Task[] {
    return this.#sessions.tasks().map((t) => this.#view(t.session, t.workstation));
  }

  /** Removes a workstation's task, stopping its run if one is under way (its history stays). */
  async remove(ref: string): Promise<Task> {
    const id = this.#workstations.resolve(ref);
    const s = this.#sessions.taskOf(id);
    if (!s) {
      throw new ServerError(
        'E_NOT_FOUND',
        `no task is queued for ${this.#workstations.brief(id).name} (imgcast task list shows them)`,
        { workstation: this.#workstations.brief(id).name },
      );
    }
    return this.#view(await this.#sessions.stop(taskSession(id), true), id);
  }

  #view(s: Session, workstation: string): Task {
    return {
      workstation: this.#workstations.brief(workstation),
      session: s.name,
      image: s.image,
      fileset: s.fileset,
      scripts: s.scripts,
      state: s.state,
      createdAt: s.createdAt,
      message: s.message,
    };
  }
}
