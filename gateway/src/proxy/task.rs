//! `taskgate.task.v1.TaskService`, forwarded to the task service.

use std::sync::Arc;

use taskgate_proto::task::v1::{
    CreateTaskRequest, CreateTaskResponse, DeleteTaskRequest, DeleteTaskResponse, GetTaskRequest, GetTaskResponse,
    ListTasksRequest, ListTasksResponse, UpdateTaskRequest, UpdateTaskResponse, task_service_client::TaskServiceClient,
    task_service_server::TaskService,
};
use tonic::{Request, Response, Status, transport::Channel};

use crate::{metrics::Metrics, proxy::forward};

/// The task service as the gateway serves it: every RPC forwarded.
#[derive(Clone)]
pub struct TaskProxy {
    /// Client on the one pooled channel to the task service.
    client: TaskServiceClient<Channel>,
    /// Where forwarded calls are counted.
    metrics: Arc<Metrics>,
}

impl TaskProxy {
    /// A proxy forwarding through `client`.
    pub fn new(client: TaskServiceClient<Channel>, metrics: Arc<Metrics>) -> Self {
        TaskProxy { client, metrics }
    }
}

#[tonic::async_trait]
impl TaskService for TaskProxy {
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
}
