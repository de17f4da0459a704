//! MCP Tasks (the 2026-07-28 `io.modelcontextprotocol/tasks` extension) for the long tools:
//! `execute_code`, `run_command` and `install_packages`. When a call's client capabilities
//! declare the extension, the call returns a task at once and runs on; `tasks/get` reports its
//! status and, once it ends, the tool's result; `tasks/cancel` cancels the call, which interrupts
//! the kernel as `notifications/cancelled` does. A task is its tenant's: for any other tenant
//! its id does not exist. Clients without the extension get the ordinary result, with progress.

use std::sync::Arc;

use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, CreateTaskResult, GetTaskParams,
    GetTaskResult,
};
use rmcp::service::RequestContext;
use rmcp::task_manager::{TaskExit, TaskManager, TaskOptions};
use rmcp::{ErrorData, RoleServer};
use tokio_util::sync::CancellationToken;

use super::handler::{KernelboxMcp, Tasks, tenant};
use crate::engine::Tenant;

/// The tools a call may run as a task.
pub(crate) const TASK_TOOLS: [&str; 3] = ["execute_code", "run_command", "install_packages"];
/// How often a client is told to poll `tasks/get`, in milliseconds.
const POLL_INTERVAL_MS: u64 = 500;

/// The answer for a task id the caller may not see: the one for an id that never existed.
fn unknown_task(manager: &TaskManager) -> ErrorData {
    match manager.get_task("") {
        Err(error) => error,
        Ok(_) => ErrorData::invalid_params("unknown task", None),
    }
}

impl Tasks {
    fn owned(&self, task_id: &str, tenant: &Tenant) -> Result<(), ErrorData> {
        match self.owners.get(task_id) {
            Some(owner) if owner.value() == tenant => Ok(()),
            _ => Err(unknown_task(&self.manager)),
        }
    }

    /// Forgets the owners of tasks the manager no longer has (expired).
    fn prune(&self) {
        self.owners
            .retain(|task_id, _| self.manager.get_task(task_id).is_ok());
    }
}

impl KernelboxMcp {
    /// Whether a call runs as a task: a long tool, from a client that declared the tasks
    /// extension.
    pub(crate) fn wants_task(
        &self,
        request: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> bool {
        TASK_TOOLS.contains(&request.name.as_ref())
            && context
                .client_capabilities()
                .is_some_and(|capabilities| capabilities.supports_tasks())
    }

    /// Starts a tool call as a task and answers with the task.
    pub(crate) fn call_as_task(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let owner = tenant(&context);
        let this = self.clone();
        // The call outlives its request: it is cancelled by `tasks/cancel`, not by the
        // request's end.
        let cancel = CancellationToken::new();
        let mut call_context = context;
        call_context.ct = cancel.clone();
        self.tasks.prune();
        let task = self.tasks.manager.spawn(
            TaskOptions::new().with_poll_interval_ms(POLL_INTERVAL_MS),
            move |task| {
                Box::pin(async move {
                    let call =
                        this.tool_router
                            .call(ToolCallContext::new(&this, request, call_context));
                    tokio::pin!(call);
                    let response = tokio::select! {
                        response = &mut call => response,
                        () = task.cancelled() => {
                            // The tool sees its call cancelled: the kernel is interrupted.
                            cancel.cancel();
                            let _ = call.await;
                            return Err(TaskExit::Cancelled);
                        }
                    };
                    match response? {
                        CallToolResponse::Complete(result) => Ok(result),
                        _ => Err(TaskExit::Error(ErrorData::internal_error(
                            "a task's call answered with another task",
                            None,
                        ))),
                    }
                })
            },
        );
        self.tasks.owners.insert(task.task_id.clone(), owner);
        Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
    }

    pub(crate) fn task_status(
        &self,
        request: &GetTaskParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        self.tasks.owned(&request.task_id, &tenant(context))?;
        Ok(GetTaskResult::new(
            self.tasks.manager.get_task(&request.task_id)?,
        ))
    }

    pub(crate) fn cancel_task_of(
        &self,
        request: &CancelTaskParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.tasks.owned(&request.task_id, &tenant(context))?;
        self.tasks.manager.cancel_task(&request.task_id)
    }
}

/// A new, empty task table.
pub(crate) fn new_tasks() -> Arc<Tasks> {
    Arc::new(Tasks::default())
}
