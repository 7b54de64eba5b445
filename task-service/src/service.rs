//! The `taskgate.task.v1.TaskService` gRPC implementation: authenticate,
//! check the request against the contract's `buf.validate` rules, parse it
//! into domain types, call the store, convert back.

use std::sync::Arc;

use prost_types::{FieldMask, Timestamp};
use taskgate_common::validate;
use taskgate_proto::task::v1::{
    self as pb, CreateTaskRequest, CreateTaskResponse, DeleteTaskRequest, DeleteTaskResponse, GetTaskRequest,
    GetTaskResponse, ListTasksRequest, ListTasksResponse, UpdateTaskRequest, UpdateTaskResponse, WatchTasksRequest,
    task_service_server::TaskService,
};
use tonic::{Request, Response, Status};

use crate::{
    TaskError,
    auth::Authenticator,
    domain::{Etag, ListQuery, RequestId, TaskDescription, TaskId, TaskStatus, TaskTitle},
    repository::{NewTask, Task, TaskChanges},
    store::TaskStore,
    watch::{Hub, WatchStream},
};

/// The gRPC service.
#[derive(Clone)]
pub struct TaskApi {
    /// Who is calling.
    auth: Authenticator,
    /// Where tasks live.
    store: TaskStore,
    /// This replica's watch streams.
    hub: Arc<Hub>,
}

impl TaskApi {
    /// A service over `store` and `hub`, authenticating with `auth`.
    pub fn new(auth: Authenticator, store: TaskStore, hub: Arc<Hub>) -> Self {
        TaskApi { auth, store, hub }
    }

    /// This replica's watch streams.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The data layer behind it.
    pub fn store(&self) -> &TaskStore {
        &self.store
    }
}

#[tonic::async_trait]
impl TaskService for TaskApi {
    type WatchTasksStream = WatchStream;

    async fn create_task(&self, request: Request<CreateTaskRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        let owner = self.auth.owner(request.metadata()).await?;
        let mut request = request.into_inner();
        trim_title(request.task.as_mut());
        let contract = contract(&request)?;
        let CreateTaskRequest { task, request_id } = request;
        let input = task.unwrap_or_default();
        let (title, description, status) = with_contract(contract, parse_fields(&input))?;
        let request_id = RequestId::parse(&request_id).map_err(|e| TaskError::invalid("request_id", e))?;
        let new = NewTask { title, description, status: status.unwrap_or_default() };
        let task = self.store.create(owner, new, request_id).await?;
        Ok(Response::new(CreateTaskResponse { task: Some(to_proto(&task)) }))
    }

    async fn get_task(&self, request: Request<GetTaskRequest>) -> Result<Response<GetTaskResponse>, Status> {
        let owner = self.auth.owner(request.metadata()).await?;
        let contract = contract(request.get_ref())?;
        let id =
            with_contract(contract, TaskId::parse(&request.get_ref().id).map_err(|e| TaskError::invalid("id", e)))?;
        let task = self.store.get(owner, id.0).await?;
        Ok(Response::new(GetTaskResponse { task: Some(to_proto(&task)) }))
    }

    async fn list_tasks(&self, request: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        // The session's liveness is checked with the cache read: one Redis
        // round trip for a first page.
        let (owner, session) = self.auth.verify(request.metadata()).await?;
        let contract = contract(request.get_ref())?;
        let r = request.get_ref();
        let query = with_contract(contract, ListQuery::parse(r.page_size, &r.page_token, r.status))?;
        let page = self.store.list(owner, query, &session).await?;
        Ok(Response::new(ListTasksResponse {
            tasks: page.tasks.iter().map(to_proto).collect(),
            next_page_token: page.next.map(|t| t.encode()).unwrap_or_default(),
            version: page.version,
        }))
    }

    async fn update_task(&self, request: Request<UpdateTaskRequest>) -> Result<Response<UpdateTaskResponse>, Status> {
        let owner = self.auth.owner(request.metadata()).await?;
        let mut request = request.into_inner();
        trim_title(request.task.as_mut());
        let contract = contract(&request)?;
        let UpdateTaskRequest { task, update_mask } = request;
        let etag = task.as_ref().map(|t| t.etag.as_str()).unwrap_or_default();
        let parsed = Etag::parse(etag)
            .map_err(|e| TaskError::invalid("etag", e))
            .and_then(|expected| Ok((expected, parse_update(task, update_mask)?)));
        let (expected, (id, changes)) = with_contract(contract, parsed)?;
        let expected = expected.map(|e| e.0);
        let task = match changes {
            Some(changes) => self.store.update(owner, id.0, &changes, expected).await?,
            // A mask with no paths: nothing changes, but the condition holds.
            None => {
                let task = self.store.get(owner, id.0).await?;
                if expected.is_some_and(|version| version != task.version) {
                    return Err(TaskError::EtagMismatch.into());
                }
                task
            }
        };
        Ok(Response::new(UpdateTaskResponse { task: Some(to_proto(&task)) }))
    }

    async fn delete_task(&self, request: Request<DeleteTaskRequest>) -> Result<Response<DeleteTaskResponse>, Status> {
        let owner = self.auth.owner(request.metadata()).await?;
        let contract = contract(request.get_ref())?;
        let r = request.get_ref();
        let parsed = TaskId::parse(&r.id)
            .map_err(|e| TaskError::invalid("id", e))
            .and_then(|id| Ok((id, Etag::parse(&r.etag).map_err(|e| TaskError::invalid("etag", e))?)));
        let (id, expected) = with_contract(contract, parsed)?;
        self.store.delete(owner, id.0, expected.map(|e| e.0)).await?;
        Ok(Response::new(DeleteTaskResponse {}))
    }

    async fn watch_tasks(&self, request: Request<WatchTasksRequest>) -> Result<Response<WatchStream>, Status> {
        let (owner, claims) = self.auth.caller(request.metadata()).await?;
        validate::check(request.get_ref())?;
        let stream = self.hub.open(owner, claims, request.get_ref().since).await?;
        Ok(Response::new(stream))
    }
}

/// Titles are kept trimmed: the contract's limits apply to the trimmed title.
fn trim_title(task: Option<&mut pb::Task>) {
    if let Some(task) = task {
        let trimmed = task.title.trim();
        if trimmed.len() != task.title.len() {
            task.title = trimmed.to_owned();
        }
    }
}

/// The `(field, reason)` of every `buf.validate` rule of the contract that
/// `request` breaks.
fn contract<M: prost_reflect::ReflectMessage>(request: &M) -> Result<Vec<(String, String)>, Status> {
    validate::violations(request).map_err(|e| TaskError::Unexpected(e).into())
}

/// The domain's reading of a request, given the contract's violations of
/// it: one answer names every bad field, whichever of the two found it (the
/// contract's description first when both did).
fn with_contract<T>(contract: Vec<(String, String)>, parsed: Result<T, TaskError>) -> Result<T, Status> {
    match parsed {
        Ok(value) if contract.is_empty() => Ok(value),
        Err(TaskError::InvalidArgument(domain)) => {
            let mut all = contract;
            for (field, reason) in domain {
                if !all.iter().any(|(f, _)| f == field) {
                    all.push((field.to_owned(), reason));
                }
            }
            Err(taskgate_common::status::invalid_fields(all))
        }
        Err(other) if contract.is_empty() => Err(other.into()),
        _ => Err(taskgate_common::status::invalid_fields(contract)),
    }
}

/// Validates title, description and status together, reporting every bad
/// field at once. The status is `None` when unspecified.
fn parse_fields(task: &pb::Task) -> Result<(TaskTitle, TaskDescription, Option<TaskStatus>), TaskError> {
    let mut violations = Vec::new();
    let title = TaskTitle::parse(&task.title).map_err(|e| violations.push(("title", e))).ok();
    let description = TaskDescription::parse(&task.description).map_err(|e| violations.push(("description", e))).ok();
    let status = TaskStatus::from_proto(task.status).map_err(|e| violations.push(("status", e))).ok();
    match (title, description, status) {
        (Some(t), Some(d), Some(s)) if violations.is_empty() => Ok((t, d, s)),
        _ => Err(TaskError::InvalidArgument(violations)),
    }
}

/// The paths an update mask may name.
const UPDATABLE: [&str; 3] = ["title", "description", "status"];

/// Reads an UpdateTask request: no mask, or `*`, replaces all three fields
/// (absent ones take their defaults: empty description, TODO); otherwise
/// only the named fields change. `etag` in a mask is the write's condition,
/// not a change; a mask naming nothing else changes nothing (`None`).
fn parse_update(task: Option<pb::Task>, mask: Option<FieldMask>) -> Result<(TaskId, Option<TaskChanges>), TaskError> {
    let Some(task) = task else {
        return Err(TaskError::invalid("task", "is required"));
    };
    let mut violations = Vec::new();
    let id = TaskId::parse(&task.id).map_err(|e| violations.push(("id", e))).ok();
    let given = mask.is_some();
    let paths: Vec<String> = mask.map(|m| m.paths).unwrap_or_default().into_iter().filter(|p| p != "etag").collect();
    if given && paths.is_empty() {
        return match id {
            Some(id) if violations.is_empty() => Ok((id, None)),
            _ => Err(TaskError::InvalidArgument(violations)),
        };
    }
    let full = paths.is_empty() || paths.iter().all(|p| p == "*");
    if !full {
        for path in &paths {
            if !UPDATABLE.contains(&path.as_str()) {
                violations.push(("update_mask", format!("unknown or read-only field {path:?}")));
            }
        }
    }
    let wants = |field: &str| full || paths.iter().any(|p| p == field);
    let mut changes = TaskChanges::default();
    if wants("title") {
        changes.title = TaskTitle::parse(&task.title).map_err(|e| violations.push(("title", e))).ok();
    }
    if wants("description") {
        changes.description =
            TaskDescription::parse(&task.description).map_err(|e| violations.push(("description", e))).ok();
    }
    if wants("status") {
        changes.status = TaskStatus::from_proto(task.status)
            .map_err(|e| violations.push(("status", e)))
            .ok()
            .map(Option::unwrap_or_default);
    }
    match id {
        Some(id) if violations.is_empty() => Ok((id, Some(changes))),
        _ => Err(TaskError::InvalidArgument(violations)),
    }
}

fn timestamp(at: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

/// The proto form of a task.
pub fn to_proto(task: &Task) -> pb::Task {
    pb::Task {
        id: task.id.to_string(),
        title: task.title.clone(),
        description: task.description.clone(),
        status: task.status.to_proto(),
        created_at: Some(timestamp(task.created_at)),
        updated_at: Some(timestamp(task.updated_at)),
        etag: Etag::render(task.version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(title: &str) -> pb::Task {
        pb::Task { id: uuid::Uuid::nil().to_string(), title: title.into(), ..Default::default() }
    }

    fn fields(err: TaskError) -> Vec<&'static str> {
        match err {
            TaskError::InvalidArgument(v) => v.into_iter().map(|(f, _)| f).collect(),
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn the_contracts_and_the_domains_violations_are_reported_together() {
        use tonic_types::StatusExt as _;
        let named = |status: Status| -> Vec<String> {
            let details = status.get_error_details();
            details
                .bad_request()
                .expect("a BadRequest detail")
                .field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        };
        let contract = || vec![("description".to_owned(), "value length must be at most 10000 characters".to_owned())];
        let domain =
            TaskError::InvalidArgument(vec![("title", "must not be empty".into()), ("description", "x".into())]);
        assert_eq!(named(with_contract::<()>(contract(), Err(domain)).expect_err("invalid")), ["description", "title"]);
        assert_eq!(named(with_contract(contract(), Ok(())).expect_err("invalid")), ["description"]);
        assert_eq!(with_contract(Vec::new(), Ok(7)).expect("valid"), 7);
        let not_found = with_contract::<()>(Vec::new(), Err(TaskError::NotFound)).expect_err("not found");
        assert_eq!(not_found.code(), tonic::Code::NotFound);
    }

    #[test]
    fn an_empty_mask_replaces_every_field_with_defaults() {
        let (_, changes) = parse_update(Some(task("new")), None).expect("valid");
        let changes = changes.expect("a replace");
        assert_eq!(changes.title.as_ref().map(TaskTitle::as_str), Some("new"));
        assert_eq!(changes.description.as_ref().map(TaskDescription::as_str), Some(""));
        assert_eq!(changes.status, Some(TaskStatus::Todo));
        let star = FieldMask { paths: vec!["*".into()] };
        assert_eq!(parse_update(Some(task("new")), Some(star)).expect("valid").1, Some(changes));
    }

    #[test]
    fn a_mask_with_no_paths_but_etag_changes_nothing() {
        for paths in [vec![], vec!["etag".to_owned()]] {
            let (_, changes) = parse_update(Some(task("")), Some(FieldMask { paths })).expect("valid");
            assert_eq!(changes, None);
        }
        let mut bad = task("");
        bad.id = "nope".into();
        assert_eq!(fields(parse_update(Some(bad), Some(FieldMask::default())).expect_err("invalid")), ["id"]);
    }

    #[test]
    fn a_mask_changes_only_the_named_fields() {
        let mut t = task("");
        t.status = TaskStatus::Done.to_proto();
        let (_, changes) = parse_update(Some(t), Some(FieldMask { paths: vec!["status".into()] })).expect("valid");
        assert_eq!(changes, Some(TaskChanges { status: Some(TaskStatus::Done), ..Default::default() }));
    }

    #[test]
    fn unknown_mask_paths_and_bad_fields_are_named() {
        let mask = FieldMask { paths: vec!["owner_id".into()] };
        assert_eq!(fields(parse_update(Some(task("x")), Some(mask)).expect_err("invalid")), ["update_mask"]);
        let mut t = task(" ");
        t.id = "nope".into();
        assert_eq!(fields(parse_update(Some(t), None).expect_err("invalid")), ["id", "title"]);
        assert_eq!(fields(parse_update(None, None).expect_err("invalid")), ["task"]);
    }
}
