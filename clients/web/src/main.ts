// taskgate's browser demo: register, log in, add tasks, list them, mark them
// done or delete them, and log out, all over gRPC-web to the gateway that
// serves this page. The access token lives only in memory (this module's
// `session`), so a reload logs the user out. While signed in, the page
// watches the task list (WatchTasks, a gRPC-web server stream from the list's
// version), so a change made in another tab or device shows without a reload.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate } from "@bufbuild/protobuf/wkt";

import { AuthService } from "./gen/taskgate/auth/v1/auth_pb.js";
import { TaskEventType, TaskService, TaskStatus, type Task } from "./gen/taskgate/task/v1/task_pb.js";
import "./style.css";

/** The signed-in user; null when logged out. */
let session: { username: string; accessToken: string; refreshToken: string } | null = null;

// Adds `authorization: Bearer ...` to every call made while signed in.
const bearer: Interceptor = (next) => async (req) => {
  if (session) {
    req.header.set("authorization", `Bearer ${session.accessToken}`);
  }
  return next(req);
};

// The gateway serves gRPC-web on the same origin as this page.
const transport = createGrpcWebTransport({
  baseUrl: window.location.origin,
  interceptors: [bearer],
});
const auth = createClient(AuthService, transport);
const tasks = createClient(TaskService, transport);

function el<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`missing element #${id}`);
  return found as T;
}

const ui = {
  status: el<HTMLParagraphElement>("status"),
  error: el<HTMLParagraphElement>("error"),
  authSection: el<HTMLElement>("auth"),
  authForm: el<HTMLFormElement>("auth-form"),
  username: el<HTMLInputElement>("username"),
  password: el<HTMLInputElement>("password"),
  register: el<HTMLButtonElement>("register"),
  appSection: el<HTMLElement>("app"),
  whoami: el<HTMLElement>("whoami"),
  logout: el<HTMLButtonElement>("logout"),
  addForm: el<HTMLFormElement>("add-task-form"),
  taskTitle: el<HTMLInputElement>("task-title"),
  taskList: el<HTMLUListElement>("task-list"),
  taskCount: el<HTMLElement>("task-count"),
  empty: el<HTMLElement>("empty"),
};

function say(message: string): void {
  ui.status.textContent = message;
  ui.error.hidden = true;
  ui.error.textContent = "";
}

function fail(err: unknown): void {
  const e = ConnectError.from(err);
  ui.error.textContent = `${Code[e.code]}: ${e.rawMessage}`;
  ui.error.hidden = false;
  ui.status.textContent = "";
  // An ended or expired session cannot do anything more: show the sign-in form.
  if (e.code === Code.Unauthenticated && session) {
    signedOut();
  }
}

/** Runs one user action, disabling the page's buttons while it is in flight. */
async function act(work: () => Promise<void>): Promise<void> {
  const buttons = Array.from(document.querySelectorAll("button"));
  buttons.forEach((b) => (b.disabled = true));
  document.body.dataset.busy = "true";
  try {
    await work();
  } catch (err) {
    fail(err);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
    delete document.body.dataset.busy;
  }
}

function signedIn(): void {
  ui.authSection.hidden = true;
  ui.appSection.hidden = false;
  ui.whoami.textContent = session?.username ?? "";
  ui.password.value = "";
  ui.taskTitle.focus();
}

/** Stops the live list (logout, or before a new watch starts). */
let stopWatching: (() => void) | null = null;

/** Watches the list from `since`; any event reloads the list, which starts
 * a new watch from the new version. Errors that ask for a fresh list
 * (LIST_AGAIN) or a dropped connection reload too, after a pause. */
function watchFrom(since: bigint): void {
  stopWatching?.();
  const abort = new AbortController();
  stopWatching = () => abort.abort();
  void (async () => {
    try {
      for await (const event of tasks.watchTasks({ since }, { signal: abort.signal })) {
        if (event.type === TaskEventType.HEARTBEAT) continue;
        // The list reload starts the next watch from its version.
        await refreshList();
        return;
      }
    } catch (err) {
      if (abort.signal.aborted || !session) return;
      const e = ConnectError.from(err);
      if (e.code === Code.Unauthenticated) {
        fail(err);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
      if (!abort.signal.aborted && session) await refreshList().catch(fail);
    }
  })();
}

function signedOut(): void {
  stopWatching?.();
  stopWatching = null;
  session = null;
  ui.appSection.hidden = true;
  ui.authSection.hidden = false;
  ui.taskList.replaceChildren();
  ui.taskCount.textContent = "";
  ui.whoami.textContent = "";
  delete document.body.dataset.tasksLoaded;
}

const statusLabel: Record<TaskStatus, string> = {
  [TaskStatus.UNSPECIFIED]: "todo",
  [TaskStatus.TODO]: "todo",
  [TaskStatus.IN_PROGRESS]: "in progress",
  [TaskStatus.DONE]: "done",
};

function renderTask(task: Task): HTMLLIElement {
  const li = document.createElement("li");
  li.dataset.testid = "task-item";
  li.dataset.taskId = task.id;
  li.dataset.status = statusLabel[task.status];
  li.className = task.status === TaskStatus.DONE ? "done" : "";

  const title = document.createElement("span");
  title.className = "title";
  title.dataset.testid = "task-title";
  title.textContent = task.title;

  const meta = document.createElement("span");
  meta.className = "meta";
  meta.dataset.testid = "task-status";
  const created = task.createdAt ? timestampDate(task.createdAt).toLocaleString() : "";
  meta.textContent = `${statusLabel[task.status]}${created ? ` · ${created}` : ""}`;

  const done = document.createElement("button");
  done.type = "button";
  done.dataset.testid = "task-done";
  done.textContent = "Done";
  done.hidden = task.status === TaskStatus.DONE;
  done.addEventListener("click", () => act(() => markDone(task.id)));

  const del = document.createElement("button");
  del.type = "button";
  del.dataset.testid = "task-delete";
  del.className = "danger";
  del.textContent = "Delete";
  del.addEventListener("click", () => act(() => removeTask(task.id)));

  li.append(title, meta, done, del);
  return li;
}

/** Reloads the caller's tasks, newest first as the server returns them. */
async function refreshList(): Promise<void> {
  const all: Task[] = [];
  let pageToken = "";
  let version = 0n;
  do {
    const page = await tasks.listTasks({ pageSize: 100, pageToken });
    if (!pageToken) version = page.version;
    all.push(...page.tasks);
    pageToken = page.nextPageToken;
  } while (pageToken && all.length < 1000);
  ui.taskList.replaceChildren(...all.map(renderTask));
  ui.taskCount.textContent = `(${all.length})`;
  ui.empty.hidden = all.length > 0;
  document.body.dataset.tasksLoaded = String(all.length);
  if (session && version > 0n) watchFrom(version);
}

async function markDone(id: string): Promise<void> {
  await tasks.updateTask({ task: { id, status: TaskStatus.DONE }, updateMask: { paths: ["status"] } });
  await refreshList();
  say("Marked done.");
}

async function removeTask(id: string): Promise<void> {
  await tasks.deleteTask({ id });
  await refreshList();
  say("Deleted.");
}

ui.register.addEventListener("click", () =>
  act(async () => {
    if (!ui.authForm.reportValidity()) return;
    const username = ui.username.value.trim();
    const { user } = await auth.register({ username, password: ui.password.value });
    say(`Registered ${user?.username ?? username}. Now log in.`);
  }),
);

ui.authForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  void act(async () => {
    const username = ui.username.value.trim();
    const { tokens } = await auth.login({ login: username, password: ui.password.value });
    if (!tokens?.accessToken) throw new ConnectError("login returned no token", Code.Internal);
    session = { username, accessToken: tokens.accessToken, refreshToken: tokens.refreshToken };
    signedIn();
    await refreshList();
    say(`Logged in as ${username}.`);
  });
});

ui.addForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  void act(async () => {
    const title = ui.taskTitle.value.trim();
    if (!title) return;
    await tasks.createTask({ task: { title } });
    ui.taskTitle.value = "";
    await refreshList();
    say(`Added "${title}".`);
  });
});

ui.logout.addEventListener("click", () =>
  act(async () => {
    try {
      await auth.logout({});
    } finally {
      // Forget the tokens even if the server call failed: the page must not
      // keep acting as a user who asked to leave.
      signedOut();
    }
    say("Logged out.");
  }),
);

document.body.dataset.ready = "true";
