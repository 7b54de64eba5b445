"""End-to-end proof of the generated Python stubs against a running gateway.

Set TASKGATE_GATEWAY_ADDR to host:port of the gateway's native gRPC listener
(plaintext HTTP/2, e.g. 127.0.0.1:8080) and generate the stubs first:

    python -m taskgate_client.generate
    TASKGATE_GATEWAY_ADDR=127.0.0.1:8080 python -m pytest -v tests

Every run registers fresh users (uuid names), so it can run against a stack
that already holds data, and repeatedly.
"""

from __future__ import annotations

import os
import uuid

import grpc
import pytest

from taskgate_client import TaskgateClient
from taskgate_client.stubs import task_pb2

ADDR = os.environ.get("TASKGATE_GATEWAY_ADDR", "")

pytestmark = pytest.mark.skipif(not ADDR, reason="TASKGATE_GATEWAY_ADDR is not set (host:port of the gateway)")


def new_credentials() -> tuple[str, str]:
    """A unique username and a password that passes the length and common-password rules."""
    suffix = uuid.uuid4().hex[:16]
    return f"py-{suffix}", f"py-e2e-secret-{suffix}"


def assert_code(err: pytest.ExceptionInfo[grpc.RpcError], code: grpc.StatusCode) -> None:
    assert err.value.code() == code, f"expected {code.name}, got {err.value.code().name}: {err.value.details()}"


@pytest.fixture
def client():
    with TaskgateClient(ADDR) as c:
        yield c


@pytest.fixture
def logged_in(client: TaskgateClient) -> TaskgateClient:
    """A client logged in as a user registered for this test alone."""
    username, password = new_credentials()
    client.register(username, password)
    client.login(username, password)
    return client


def test_register_login_refresh_and_logout(client: TaskgateClient) -> None:
    username, password = new_credentials()

    user = client.register(username, password)
    assert user.username == username
    assert uuid.UUID(user.id)
    assert user.created_at.seconds > 0

    first = client.login(username, password)
    assert first.access_token and first.refresh_token
    assert first.token_type == "Bearer"
    assert first.expires_in > 0
    assert first.refresh_expires_in >= first.expires_in
    assert client.me().id == user.id

    # A refresh rotates the pair.
    second = client.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert second.access_token
    assert client.me(second.access_token).username == username
    # A client that lost the response and retries with the just-rotated token
    # (within the server's grace window) gets the very same successor pair.
    retry = client.refresh(first.refresh_token)
    assert (retry.access_token, retry.refresh_token) == (second.access_token, second.refresh_token)
    # Once the successor has been rotated too, the first token is two steps old:
    # presenting it is treated as theft and ends the whole session, successors
    # and their access tokens included.
    third = client.refresh(second.refresh_token)
    with pytest.raises(grpc.RpcError) as err:
        client.refresh(first.refresh_token)
    assert_code(err, grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(grpc.RpcError) as err:
        client.refresh(third.refresh_token)
    assert_code(err, grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(grpc.RpcError) as err:
        client.me(third.access_token)
    assert_code(err, grpc.StatusCode.UNAUTHENTICATED)

    # The logout is proved on a fresh session.
    client.login(username, password)
    access = client.tokens.access_token
    assert len(client.list_tasks().tasks) == 0
    client.logout()
    assert client.tokens is None
    # The ended session's access token is refused at once, not only when it expires.
    with pytest.raises(grpc.RpcError) as err:
        client.tasks.ListTasks(
            task_pb2.ListTasksRequest(), metadata=(("authorization", f"Bearer {access}"),), timeout=10
        )
    assert_code(err, grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(grpc.RpcError) as err:
        client.me(access)
    assert_code(err, grpc.StatusCode.UNAUTHENTICATED)


def test_change_password_ends_the_other_sessions_and_keeps_the_caller_signed_in(client: TaskgateClient) -> None:
    username, password = new_credentials()
    client.register(username, password)
    other = client.login(username, password)
    client.login(username, password)
    new_password = password + "-renewed"
    fresh = client.change_password(password, new_password)
    assert client.tokens == fresh
    assert client.me().username == username
    with pytest.raises(grpc.RpcError) as err:
        client.me(other.access_token)
    assert_code(err, grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(grpc.RpcError) as err:
        client.login(username, password)
    assert_code(err, grpc.StatusCode.UNAUTHENTICATED)
    client.login(username, new_password)


def test_wrong_password_and_missing_token_are_unauthenticated(client: TaskgateClient) -> None:
    username, password = new_credentials()
    client.register(username, password)
    with pytest.raises(grpc.RpcError) as err:
        client.login(username, password + "-wrong")
    assert_code(err, grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(grpc.RpcError) as err:
        client.list_tasks()
    assert_code(err, grpc.StatusCode.UNAUTHENTICATED)


def test_create_list_update_and_delete_tasks(logged_in: TaskgateClient) -> None:
    tg = logged_in

    first = tg.create_task("buy milk", "two litres")
    second = tg.create_task("write the report")
    for task, title in ((first, "buy milk"), (second, "write the report")):
        assert uuid.UUID(task.id)
        assert task.title == title
        assert task.status == task_pb2.TASK_STATUS_TODO
        assert task.created_at.seconds > 0
    assert first.description == "two litres"

    listed = tg.list_tasks()
    assert [t.id for t in listed.tasks] == [second.id, first.id], "tasks are listed newest first"
    assert listed.next_page_token == ""
    assert tg.get_task(first.id).title == "buy milk"

    # A page of one, then the rest through next_page_token.
    page = tg.list_tasks(page_size=1)
    assert [t.id for t in page.tasks] == [second.id]
    assert page.next_page_token
    rest = tg.list_tasks(page_size=1, page_token=page.next_page_token)
    assert [t.id for t in rest.tasks] == [first.id]

    # Only the fields in the mask change: the description given here is ignored.
    done = tg.update_task(first.id, ["status"], status=task_pb2.TASK_STATUS_DONE, description="ignored")
    assert done.status == task_pb2.TASK_STATUS_DONE
    assert done.title == "buy milk"
    assert done.description == "two litres"
    renamed = tg.update_task(first.id, ["title"], title="buy oat milk")
    assert renamed.title == "buy oat milk"
    assert renamed.status == task_pb2.TASK_STATUS_DONE
    assert tg.get_task(first.id).title == "buy oat milk"
    done_only = tg.list_tasks(status=task_pb2.TASK_STATUS_DONE)
    assert [t.id for t in done_only.tasks] == [first.id]

    tg.delete_task(first.id)
    with pytest.raises(grpc.RpcError) as err:
        tg.get_task(first.id)
    assert_code(err, grpc.StatusCode.NOT_FOUND)
    assert [t.id for t in tg.list_tasks().tasks] == [second.id]


def test_another_users_task_is_not_found(logged_in: TaskgateClient) -> None:
    mine = logged_in.create_task("private")
    with TaskgateClient(ADDR) as other:
        username, password = new_credentials()
        other.register(username, password)
        other.login(username, password)
        assert mine.id not in [t.id for t in other.list_tasks().tasks]
        with pytest.raises(grpc.RpcError) as err:
            other.get_task(mine.id)
        assert_code(err, grpc.StatusCode.NOT_FOUND)
        with pytest.raises(grpc.RpcError) as err:
            other.delete_task(mine.id)
        assert_code(err, grpc.StatusCode.NOT_FOUND)
    assert logged_in.get_task(mine.id).title == "private"


def test_watch_tasks_resumes_after_a_reconnect_without_missing_events(logged_in: TaskgateClient) -> None:
    listed = logged_in.list_tasks()
    assert listed.version > 0
    watch = logged_in.watch_tasks(since=listed.version)
    first = logged_in.create_task("seen by the watcher")
    event = next(watch)
    assert event.type == task_pb2.TASK_EVENT_TYPE_CREATED
    assert event.task.id == first.id
    assert event.version == listed.version + 1
    watch.close()

    # Written while nobody watched; a new watch from the last version replays it.
    second = logged_in.create_task("written while away")
    resumed = logged_in.watch_tasks(since=event.version)
    replayed = next(resumed)
    assert replayed.task.id == second.id
    assert replayed.version == event.version + 1
    resumed.close()


def test_etags_and_request_ids(logged_in: TaskgateClient) -> None:
    task = logged_in.create_task("shared", request_id="py-once")
    again = logged_in.create_task("shared", request_id="py-once")
    assert again.id == task.id

    updated = logged_in.update_task(task.id, ["title"], title="mine", etag=task.etag)
    assert updated.etag != task.etag
    with pytest.raises(grpc.RpcError) as err:
        logged_in.update_task(task.id, ["title"], title="theirs", etag=task.etag)
    assert_code(err, grpc.StatusCode.ABORTED)
