"""``TaskgateClient``: the auth and task APIs over one gRPC channel to the gateway.

It is deliberately thin: each method builds the generated request message,
calls the generated stub and returns the generated response field, so it reads
as an example of the stubs rather than a new API. Errors are the plain
``grpc.RpcError`` the stubs raise; ``err.code()`` is a ``grpc.StatusCode``.

    with TaskgateClient("127.0.0.1:8080") as tg:
        tg.register("alice", "correct horse battery")
        tg.login("alice", "correct horse battery")
        task = tg.create_task("write the report")
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

import grpc
from google.protobuf import field_mask_pb2

from .stubs import auth_pb2, auth_pb2_grpc, task_pb2, task_pb2_grpc

# Every call gets a deadline so a stuck server fails a test instead of hanging it.
DEFAULT_TIMEOUT_SECONDS = 10.0


class TaskgateClient:
    """A client of one gateway; it keeps the current session's token pair."""

    def __init__(self, target: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS, channel: grpc.Channel | None = None):
        # `target` is host:port of the gateway's native gRPC listener (plaintext HTTP/2).
        self._channel = channel if channel is not None else grpc.insecure_channel(target)
        self._timeout = timeout
        self.auth = auth_pb2_grpc.AuthServiceStub(self._channel)
        self.tasks = task_pb2_grpc.TaskServiceStub(self._channel)
        # The pair from the last login or refresh; None when logged out.
        self.tokens: auth_pb2.TokenPair | None = None

    # Context manager and lifetime.

    def __enter__(self) -> TaskgateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _metadata(self, access_token: str | None = None) -> Sequence[tuple[str, str]]:
        token = access_token or (self.tokens.access_token if self.tokens else None)
        if not token:
            return ()
        # gRPC metadata keys are lowercase; the gateway reads `authorization`.
        return (("authorization", f"Bearer {token}"),)

    # AuthService.

    def register(self, username: str, password: str) -> auth_pb2.User:
        """Creates an account with a username and returns the new user."""
        resp = self.auth.Register(
            auth_pb2.RegisterRequest(username=username, password=password), timeout=self._timeout
        )
        return resp.user

    def login(self, login: str, password: str) -> auth_pb2.TokenPair:
        """Starts a session; the returned pair is also kept for later calls."""
        resp = self.auth.Login(auth_pb2.LoginRequest(login=login, password=password), timeout=self._timeout)
        self.tokens = resp.tokens
        return resp.tokens

    def refresh(self, refresh_token: str | None = None) -> auth_pb2.TokenPair:
        """Exchanges a refresh token (the kept one by default) for a new pair."""
        token = refresh_token or (self.tokens.refresh_token if self.tokens else "")
        resp = self.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=token), timeout=self._timeout)
        self.tokens = resp.tokens
        return resp.tokens

    def logout(self) -> None:
        """Ends the current session (named by the Bearer token) and forgets the tokens."""
        self.auth.Logout(auth_pb2.LogoutRequest(), metadata=self._metadata(), timeout=self._timeout)
        self.tokens = None

    def me(self, access_token: str | None = None) -> auth_pb2.User:
        """Returns the caller's user."""
        resp = self.auth.GetMe(auth_pb2.GetMeRequest(), metadata=self._metadata(access_token), timeout=self._timeout)
        return resp.user

    def change_password(self, current_password: str, new_password: str) -> auth_pb2.TokenPair:
        """Changes the caller's password: every session of the user ends, and the
        returned pair (of a new session) is kept for later calls."""
        req = auth_pb2.ChangePasswordRequest(current_password=current_password, new_password=new_password)
        resp = self.auth.ChangePassword(req, metadata=self._metadata(), timeout=self._timeout)
        self.tokens = resp.tokens
        return resp.tokens

    def disable_user(self, user_id: str) -> auth_pb2.User:
        """Disables a user and ends their sessions (admin only)."""
        resp = self.auth.DisableUser(
            auth_pb2.DisableUserRequest(id=user_id), metadata=self._metadata(), timeout=self._timeout
        )
        return resp.user

    def enable_user(self, user_id: str) -> auth_pb2.User:
        """Re-enables a disabled user (admin only)."""
        resp = self.auth.EnableUser(
            auth_pb2.EnableUserRequest(id=user_id), metadata=self._metadata(), timeout=self._timeout
        )
        return resp.user

    # TaskService.

    def create_task(
        self,
        title: str,
        description: str = "",
        status: int = task_pb2.TASK_STATUS_UNSPECIFIED,
        *,
        request_id: str = "",
    ) -> task_pb2.Task:
        """Creates a task owned by the caller. With ``request_id`` (e.g. a
        uuid4 string kept across retries), a retry returns the first call's
        task instead of creating another (AIP-155)."""
        task = task_pb2.Task(title=title, description=description, status=status)
        resp = self.tasks.CreateTask(
            task_pb2.CreateTaskRequest(task=task, request_id=request_id),
            metadata=self._metadata(),
            timeout=self._timeout,
        )
        return resp.task

    def get_task(self, task_id: str) -> task_pb2.Task:
        """Returns one of the caller's tasks."""
        resp = self.tasks.GetTask(task_pb2.GetTaskRequest(id=task_id), metadata=self._metadata(), timeout=self._timeout)
        return resp.task

    def list_tasks(
        self, *, page_size: int = 0, page_token: str = "", status: int = task_pb2.TASK_STATUS_UNSPECIFIED
    ) -> task_pb2.ListTasksResponse:
        """Returns one page of the caller's tasks, newest first."""
        req = task_pb2.ListTasksRequest(page_size=page_size, page_token=page_token, status=status)
        return self.tasks.ListTasks(req, metadata=self._metadata(), timeout=self._timeout)

    def all_tasks(self, *, page_size: int = 0) -> list[task_pb2.Task]:
        """Follows ``next_page_token`` until the last page."""
        tasks: list[task_pb2.Task] = []
        token = ""
        while True:
            page = self.list_tasks(page_size=page_size, page_token=token)
            tasks.extend(page.tasks)
            token = page.next_page_token
            if not token:
                return tasks

    def update_task(self, task_id: str, paths: Iterable[str], **fields: object) -> task_pb2.Task:
        """Changes only the fields named in ``paths`` (a FieldMask), e.g.
        ``update_task(id, ["status"], status=task_pb2.TASK_STATUS_DONE)``.
        Pass ``etag=task.etag`` to fail with ABORTED if the task changed since
        it was read (AIP-154)."""
        task = task_pb2.Task(id=task_id, **fields)
        mask = field_mask_pb2.FieldMask(paths=list(paths))
        resp = self.tasks.UpdateTask(
            task_pb2.UpdateTaskRequest(task=task, update_mask=mask), metadata=self._metadata(), timeout=self._timeout
        )
        return resp.task

    def delete_task(self, task_id: str, *, etag: str = "") -> None:
        """Deletes one of the caller's tasks (only if it still has ``etag``, when given)."""
        self.tasks.DeleteTask(
            task_pb2.DeleteTaskRequest(id=task_id, etag=etag), metadata=self._metadata(), timeout=self._timeout
        )

    def watch_tasks(
        self, since: int = 0, *, max_attempts: int = 5, heartbeats: bool = False
    ) -> Iterator[task_pb2.WatchTasksResponse]:
        """Yields the caller's task events as they happen, after ``since`` (a
        list's ``version``; 0 for only new events), for as long as the caller
        iterates.

        A dropped connection (UNAVAILABLE, a cancelled or ended stream) is
        resumed automatically from the last event's version, so no event is
        missed or repeated; up to ``max_attempts`` reconnections in a row, with
        a growing pause. A ``grpc.RpcError`` is raised for anything a retry
        cannot fix: FAILED_PRECONDITION (reason ``LIST_AGAIN``: list again and
        watch from the new version), UNAUTHENTICATED (session revoked or token
        expired), RESOURCE_EXHAUSTED (too many streams, or this reader fell
        behind). Heartbeats are skipped unless ``heartbeats`` is true."""
        cursor = since
        failures = 0
        while True:
            # No deadline: a watch lives as long as the caller wants it.
            stream = self.tasks.WatchTasks(task_pb2.WatchTasksRequest(since=cursor), metadata=self._metadata())
            try:
                for event in stream:
                    failures = 0
                    # Heartbeats carry the current version too; resuming from
                    # it is exact either way.
                    cursor = event.version or cursor
                    if event.type == task_pb2.TASK_EVENT_TYPE_HEARTBEAT and not heartbeats:
                        continue
                    yield event
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise
            finally:
                stream.cancel()
            failures += 1
            if failures > max_attempts:
                raise RuntimeError(f"watch_tasks: gave up after {max_attempts} reconnections")
            time.sleep(min(0.2 * 2**failures, 5.0))
