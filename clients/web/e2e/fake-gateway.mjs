// A stand-in for the taskgate gateway, for working on the clients without the
// Rust stack. It is NOT part of any proof: the proofs of issue #6 run against
// the real gateway. It keeps users, sessions and tasks in memory, implements
// the contract's AuthService and TaskService with @connectrpc/connect-node
// (which speaks gRPC, gRPC-web and Connect), and serves dist/ at /demo/.
//
//   npm run generate && node e2e/fake-gateway.mjs [port]     (default 8090)
//
// Native gRPC (HTTP/2 without TLS) and HTTP/1.1 (the browser, gRPC-web) share
// the one port, as on the real gateway: the first bytes of each connection
// say which it is. It has no server reflection and no REST, so
// clients/bufcurl/run.sh needs BUF_CURL_SCHEMA=<repo>/proto against it and
// the schemathesis stage cannot run.

import { readFile } from "node:fs/promises";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { randomUUID } from "node:crypto";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { timestampNow } from "@bufbuild/protobuf/wkt";

import { AuthService } from "../src/gen/taskgate/auth/v1/auth_pb.js";
import { TaskService, TaskStatus } from "../src/gen/taskgate/task/v1/task_pb.js";

const port = Number(process.argv[2] || process.env.PORT || 8090);
const dist = fileURLToPath(new URL("../dist/", import.meta.url));

// username -> { id, username, password, createdAt }
const users = new Map();
// session id -> { userId, refreshToken, live }
const sessions = new Map();
// access token -> session id; refresh token -> session id (current or rotated)
const accessTokens = new Map();
const refreshTokens = new Map();
// user id -> tasks, oldest first
const tasksByUser = new Map();

const unauthenticated = (msg = "missing or invalid access token") => new ConnectError(msg, Code.Unauthenticated);

function issue(sessionId) {
  const accessToken = `fake-access.${randomUUID()}`;
  const refreshToken = `fake-refresh.${randomUUID()}`;
  accessTokens.set(accessToken, sessionId);
  refreshTokens.set(refreshToken, sessionId);
  sessions.get(sessionId).refreshToken = refreshToken;
  return { accessToken, refreshToken, tokenType: "Bearer", expiresIn: 900n, refreshExpiresIn: 2592000n };
}

function caller(ctx) {
  const header = ctx.requestHeader.get("authorization") ?? "";
  const match = /^Bearer (.+)$/i.exec(header);
  const sessionId = match && accessTokens.get(match[1]);
  const session = sessionId && sessions.get(sessionId);
  if (!session || !session.live) throw unauthenticated();
  return { sessionId, userId: session.userId };
}

function ownTask(userId, id) {
  const task = (tasksByUser.get(userId) ?? []).find((t) => t.id === id);
  if (!task) throw new ConnectError(`task ${id} not found`, Code.NotFound);
  return task;
}

function checkTitle(title) {
  const trimmed = (title ?? "").trim();
  if (trimmed.length < 1 || trimmed.length > 200) {
    throw new ConnectError("title must be 1-200 characters", Code.InvalidArgument);
  }
  return trimmed;
}

function routes(router) {
  router.service(AuthService, {
    register(req) {
      const username = req.username ?? "";
      if (!/^[A-Za-z0-9._-]{3,64}$/.test(username)) throw new ConnectError("bad username", Code.InvalidArgument);
      if (req.password.length < 8 || req.password.length > 128) {
        throw new ConnectError("password must be 8-128 characters", Code.InvalidArgument);
      }
      if (users.has(username)) throw new ConnectError("username taken", Code.AlreadyExists);
      const user = { id: randomUUID(), username, password: req.password, createdAt: timestampNow() };
      users.set(username, user);
      return { user: { id: user.id, username, createdAt: user.createdAt } };
    },
    login(req) {
      const user = users.get(req.login || req.username);
      if (!user || user.password !== req.password) throw unauthenticated("invalid credentials");
      const sessionId = randomUUID();
      sessions.set(sessionId, { userId: user.id, refreshToken: "", live: true });
      return { tokens: issue(sessionId) };
    },
    refresh(req) {
      const sessionId = refreshTokens.get(req.refreshToken);
      const session = sessionId && sessions.get(sessionId);
      if (!session || !session.live) throw unauthenticated("invalid refresh token");
      if (session.refreshToken !== req.refreshToken) {
        // A rotated token came back: treat it as stolen and end the session.
        session.live = false;
        throw unauthenticated("refresh token reused");
      }
      return { tokens: issue(sessionId) };
    },
    logout(req, ctx) {
      const sessionId = req.refreshToken ? refreshTokens.get(req.refreshToken) : caller(ctx).sessionId;
      const session = sessionId && sessions.get(sessionId);
      if (!session) throw unauthenticated();
      session.live = false;
      return {};
    },
    getMe(_req, ctx) {
      const { userId } = caller(ctx);
      const user = [...users.values()].find((u) => u.id === userId);
      return { user: { id: user.id, username: user.username, createdAt: user.createdAt } };
    },
  });

  router.service(TaskService, {
    createTask(req, ctx) {
      const { userId } = caller(ctx);
      const now = timestampNow();
      const task = {
        id: randomUUID(),
        title: checkTitle(req.task?.title),
        description: req.task?.description ?? "",
        status: req.task?.status || TaskStatus.TODO,
        createdAt: now,
        updatedAt: now,
      };
      if (!tasksByUser.has(userId)) tasksByUser.set(userId, []);
      tasksByUser.get(userId).push(task);
      return { task };
    },
    getTask(req, ctx) {
      return { task: ownTask(caller(ctx).userId, req.id) };
    },
    listTasks(req, ctx) {
      const { userId } = caller(ctx);
      const all = [...(tasksByUser.get(userId) ?? [])]
        .reverse()
        .filter((t) => !req.status || t.status === req.status);
      const size = Math.min(req.pageSize || 50, 500);
      const start = Number(req.pageToken || 0);
      const page = all.slice(start, start + size);
      const next = start + size < all.length ? String(start + size) : "";
      return { tasks: page, nextPageToken: next };
    },
    updateTask(req, ctx) {
      const task = ownTask(caller(ctx).userId, req.task?.id ?? "");
      const paths = req.updateMask?.paths ?? [];
      const all = paths.length === 0 || paths.includes("*");
      const given = req.task;
      if (all || paths.includes("title")) task.title = checkTitle(given.title);
      if (all || paths.includes("description")) task.description = given.description;
      if (all || paths.includes("status")) task.status = given.status || TaskStatus.TODO;
      task.updatedAt = timestampNow();
      return { task };
    },
    deleteTask(req, ctx) {
      const { userId } = caller(ctx);
      ownTask(userId, req.id);
      tasksByUser.set(
        userId,
        tasksByUser.get(userId).filter((t) => t.id !== req.id),
      );
      return {};
    },
  });
}

const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png" };

// Everything that is not an RPC: the demo page from dist/.
async function serveStatic(req, res) {
  const path = new URL(req.url ?? "/", "http://x").pathname;
  if (path === "/demo") {
    res.writeHead(308, { location: "/demo/" });
    return res.end();
  }
  if (!path.startsWith("/demo/")) {
    res.writeHead(404, { "content-type": "text/plain" });
    return res.end("not found\n");
  }
  const rel = normalize(path.slice("/demo/".length) || "index.html").replace(/^(\.\.[/\\])+/, "");
  try {
    const body = await readFile(join(dist, rel));
    res.writeHead(200, { "content-type": types[extname(rel)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  }
}

const handler = connectNodeAdapter({ routes, fallback: serveStatic });
const h1 = http.createServer(handler);
const h2 = http2.createServer(handler);

// One port for both: an HTTP/2 connection without TLS starts with the
// preface "PRI * HTTP/2.0".
const listener = net.createServer((socket) => {
  socket.once("readable", () => {
    const head = socket.read();
    if (head === null) return;
    socket.unshift(head);
    (head.subarray(0, 3).toString("latin1") === "PRI" ? h2 : h1).emit("connection", socket);
  });
});
listener.listen(port, "127.0.0.1", () => {
  console.log(`fake gateway on 127.0.0.1:${port} (gRPC, gRPC-web, /demo/); not the real one`);
});
