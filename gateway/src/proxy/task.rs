//! `taskgate.task.v1.TaskService`, forwarded to the task service.

use std::sync::Arc;

use taskgate_proto::task::v1::{
    CreateTaskRequest, CreateTaskResponse, DeleteTaskRequest, DeleteTaskResponse, GetTaskRequest, GetTaskResponse,
    ListTasksRequest, ListTasksResponse, UpdateTaskRequest, UpdateTaskResponse, WatchTasksRequest, WatchTasksResponse,
    task_service_client::TaskServiceClient, task_service_server::TaskService,
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    metrics::Metrics,
    proxy::forward,
    upstream::Upstream,
    watch::{Held, WatchSlots},
};

/// The task service as the gateway serves it: every RPC forwarded.
#[derive(Clone)]
pub struct TaskProxy {
    /// Client on the channel balanced over the task replicas.
    client: TaskServiceClient<Upstream>,
    /// Where forwarded calls are counted.
    metrics: Arc<Metrics>,
    /// This replica's open-stream bound.
    watch: WatchSlots,
}

impl TaskProxy {
    /// A proxy forwarding through `client`, with at most `watch`'s number of
    /// WatchTasks streams open at once.
    pub fn new(client: TaskServiceClient<Upstream>, metrics: Arc<Metrics>, watch: WatchSlots) -> Self {
        TaskProxy { client, metrics, watch }
    }
}

#[tonic::async_trait]
impl TaskService for TaskProxy {
    type WatchTasksStream = Held<Streaming<WatchTasksResponse>>;

    async fn create_task(&self, request: Request<CreateTaskRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        forward!(self, "task", "CreateTask", create_task, request)
    }

    async fn get_task(&self, request: Request<GetTaskRequest>) -> Result<Response<GetTaskResponse>, Status> {
        forward!(self, "task", "GetTask", get_task, request)
    }

    async fn list_tasks(&self, request: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        forward!(self, "task", "ListTasks", list_tasks, request)
    }

    async fn update_task(&self, request: Request<UpdateTaskRequest>) -> Result<Response<UpdateTaskResponse>, Status> {
        forward!(self, "task", "UpdateTask", update_task, request)
    }

    async fn delete_task(&self, request: Request<DeleteTaskRequest>) -> Result<Response<DeleteTaskResponse>, Status> {
        forward!(self, "task", "DeleteTask", delete_task, request)
    }

    /// The backend's stream, passed through message by message (so the
    /// client's flow control reaches the task service, which ends streams
    /// whose reader falls behind), holding one of this replica's slots.
    async fn watch_tasks(
        &self,
        request: Request<WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        let permit = self.watch.acquire()?;
        let (request, _deadline) = crate::proxy::outbound(request)?;
        let response =
            crate::proxy::finish(&self.metrics, "task", "WatchTasks", None, self.client.clone().watch_tasks(request))
                .await?;
        let (metadata, stream, extensions) = response.into_parts();
        Ok(Response::from_parts(metadata, Held::new(stream, permit), extensions))
    }
}
