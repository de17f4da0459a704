//! A connected kernel: one DEALER for shell, one for control, a SUB for iopub and a REQ for the
//! heartbeat. Reader tasks route every incoming shell and iopub message to whoever registered its
//! parent `msg_id`; anything else (another client's traffic, stale output) is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use zeromq::{
    DealerSocket, ReqSocket, Socket, SocketEvent, SocketRecv, SocketSend, SubSocket, ZmqMessage,
};

use super::connection::KernelEndpoint;
use super::error::KernelError;
use super::execution::KernelExecution;
use super::routing::{Channel, Route, Routed, Shared};
use super::wire::{Codec, Message};

/// Messages buffered per in-flight request before the reader waits for the consumer. Bounds the
/// server's memory when a kernel prints faster than the server consumes: a stream message holds
/// up to 64 KiB (the sandbox's stdout flush size), so this holds at most about 512 KiB. With 256,
/// a busy machine let 16 MiB pile up here during a 100 MB print.
const ROUTE_CAPACITY: usize = 8;
/// How long one readiness probe (`kernel_info_request`) waits before it is sent again.
const READY_PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Pause between connection attempts while the kernel is still starting.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(25);

/// A connection to one kernel. Cheap to share behind an `Arc`.
pub struct KernelClient {
    codec: Codec,
    shell: Mutex<zeromq::DealerSendHalf>,
    control: Mutex<DealerSocket>,
    heartbeat: Mutex<ReqSocket>,
    heartbeat_url: String,
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
}

impl Drop for KernelClient {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

impl KernelClient {
    /// Connects every channel and waits until the kernel answers `kernel_info` and its iopub
    /// output reaches us (so no output of the first execution is lost to a late subscription).
    pub async fn connect(
        endpoint: &KernelEndpoint,
        ready_within: Duration,
    ) -> Result<Self, KernelError> {
        let started = Instant::now();
        let deadline = started + ready_within;
        let codec = Codec::new(&endpoint.key);

        let mut iopub = SubSocket::new();
        iopub
            .subscribe("")
            .await
            .map_err(|source| KernelError::Channel {
                channel: "iopub",
                source,
            })?;
        connect_until(
            &mut iopub,
            &endpoint.url(endpoint.ports.iopub),
            "iopub",
            deadline,
        )
        .await?;
        let mut shell = DealerSocket::new();
        let shell_events = shell.monitor();
        connect_until(
            &mut shell,
            &endpoint.url(endpoint.ports.shell),
            "shell",
            deadline,
        )
        .await?;
        let mut control = DealerSocket::new();
        connect_until(
            &mut control,
            &endpoint.url(endpoint.ports.control),
            "control",
            deadline,
        )
        .await?;
        let mut heartbeat = ReqSocket::new();
        connect_until(
            &mut heartbeat,
            &endpoint.url(endpoint.ports.hb),
            "hb",
            deadline,
        )
        .await?;

        let shared = Arc::new(Shared {
            routes: DashMap::new(),
            closed: AtomicBool::new(false),
            closed_signal: CancellationToken::new(),
        });
        let (shell_send, shell_recv) = shell.split();
        let readers = vec![
            tokio::spawn(read_shell(shell_recv, codec.clone(), shared.clone())),
            tokio::spawn(read_iopub(iopub, codec.clone(), shared.clone())),
            tokio::spawn(watch_disconnect(shell_events, shared.clone())),
        ];
        let client = Self {
            codec,
            shell: Mutex::new(shell_send),
            control: Mutex::new(control),
            heartbeat: Mutex::new(heartbeat),
            heartbeat_url: endpoint.url(endpoint.ports.hb),
            shared,
            readers,
        };
        client.wait_ready(deadline, started).await?;
        Ok(client)
    }

    async fn wait_ready(&self, deadline: Instant, started: Instant) -> Result<(), KernelError> {
        let not_ready = || KernelError::NotReady {
            waited_ms: started.elapsed().as_millis() as u64,
        };
        while Instant::now() < deadline {
            let mut route = self.send_shell("kernel_info_request", &json!({})).await?;
            let probe_until = (Instant::now() + READY_PROBE_INTERVAL).min(deadline);
            let (mut replied, mut heard_iopub) = (false, false);
            while !(replied && heard_iopub) {
                match tokio::time::timeout_at(probe_until.into(), route.recv()).await {
                    Ok(Some(Routed {
                        channel: Channel::Shell,
                        ..
                    })) => replied = true,
                    Ok(Some(Routed {
                        channel: Channel::IoPub,
                        ..
                    })) => heard_iopub = true,
                    Ok(None) => return Err(KernelError::Closed),
                    Err(_) => break,
                }
            }
            if replied && heard_iopub {
                return Ok(());
            }
        }
        Err(not_ready())
    }

    /// True once the connection to the kernel is gone (kernel died or restarted).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Resolves once the connection to the kernel is gone.
    pub async fn closed(&self) {
        self.shared.closed_signal.cancelled().await
    }

    /// Sends `execute_request` and returns its event stream.
    pub async fn execute(&self, code: &str) -> Result<KernelExecution, KernelError> {
        let content = json!({
            "code": code,
            "silent": false,
            "store_history": true,
            "user_expressions": {},
            "allow_stdin": false,
            // The engine never queues a second request behind a running one, so aborting the
            // queue on error gains nothing. With `true`, ipykernel stays in "aborting" mode for a
            // moment after an error or interrupt and rejects the next request as `aborted`.
            "stop_on_error": false,
        });
        let route = self.send_shell("execute_request", &content).await?;
        Ok(KernelExecution::new(route))
    }

    /// `kernel_info_request`, answered within `within`.
    pub async fn kernel_info(&self, within: Duration) -> Result<Value, KernelError> {
        let mut route = self.send_shell("kernel_info_request", &json!({})).await?;
        let waited_ms = within.as_millis() as u64;
        let wait = async {
            while let Some(routed) = route.recv().await {
                if routed.channel == Channel::Shell {
                    return Ok(routed.message.content);
                }
            }
            Err(KernelError::Closed)
        };
        timeout(within, wait)
            .await
            .map_err(|_| KernelError::NoReply {
                request: "kernel_info_request",
                waited_ms,
            })?
    }

    /// Interrupts the running execution with the control channel's `interrupt_request`.
    pub async fn interrupt(&self, within: Duration) -> Result<(), KernelError> {
        self.control_request("interrupt_request", json!({}), within)
            .await
            .map(drop)
    }

    /// Asks the kernel to shut down (`restart` tells it a new kernel will follow).
    pub async fn shutdown(&self, restart: bool, within: Duration) -> Result<(), KernelError> {
        self.control_request("shutdown_request", json!({ "restart": restart }), within)
            .await
            .map(drop)
    }

    /// One heartbeat round trip: true when the kernel echoed within `within`. The kernel answers
    /// heartbeats on their own thread, so a busy kernel still answers.
    pub async fn heartbeat(&self, within: Duration) -> bool {
        let mut socket = self.heartbeat.lock().await;
        let ping = async {
            socket
                .send(ZmqMessage::from(Bytes::from_static(b"ping")))
                .await?;
            socket.recv().await
        };
        if matches!(timeout(within, ping).await, Ok(Ok(_))) {
            return true;
        }
        // A REQ socket whose reply never came cannot send again: start a fresh one.
        let mut fresh = ReqSocket::new();
        if let Ok(Ok(())) = timeout(within, fresh.connect(&self.heartbeat_url)).await {
            *socket = fresh;
        }
        false
    }

    async fn send_shell(&self, msg_type: &str, content: &Value) -> Result<Route, KernelError> {
        if self.is_closed() {
            return Err(KernelError::Closed);
        }
        let (message, msg_id) = self.codec.request(msg_type, content);
        let (tx, rx) = mpsc::channel(ROUTE_CAPACITY);
        self.shared.routes.insert(msg_id.clone(), tx);
        let route = Route {
            rx,
            msg_id,
            shared: self.shared.clone(),
        };
        let sent = self.shell.lock().await.send(message).await;
        sent.map_err(|source| KernelError::Channel {
            channel: "shell",
            source,
        })?;
        Ok(route)
    }

    async fn control_request(
        &self,
        msg_type: &'static str,
        content: Value,
        within: Duration,
    ) -> Result<Value, KernelError> {
        let waited_ms = within.as_millis() as u64;
        let (message, msg_id) = self.codec.request(msg_type, &content);
        let mut control = self.control.lock().await;
        let exchange = async {
            control
                .send(message)
                .await
                .map_err(|source| KernelError::Channel {
                    channel: "control",
                    source,
                })?;
            loop {
                let raw = control
                    .recv()
                    .await
                    .map_err(|source| KernelError::Channel {
                        channel: "control",
                        source,
                    })?;
                let reply = self.codec.decode(raw)?;
                // Replies to earlier requests that timed out are skipped.
                if reply.parent_msg_id() == Some(msg_id.as_str()) {
                    return Ok(reply.content);
                }
            }
        };
        timeout(within, exchange)
            .await
            .map_err(|_| KernelError::NoReply {
                request: msg_type,
                waited_ms,
            })?
    }
}

/// Connects `socket`, retrying while the kernel is not yet listening, until `deadline`.
async fn connect_until<S: Socket>(
    socket: &mut S,
    url: &str,
    channel: &'static str,
    deadline: Instant,
) -> Result<(), KernelError> {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let error = match timeout(remaining, socket.connect(url)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(source)) => source,
            Err(_) => zeromq::ZmqError::Other("connect timed out"),
        };
        if Instant::now() + CONNECT_RETRY_PAUSE >= deadline {
            return Err(KernelError::Connect {
                channel,
                source: error,
            });
        }
        // The kernel's port is published before the kernel listens on it; the published port
        // accepts and then resets. Back off briefly and try again.
        tracing::trace!(channel, %error, "kernel not listening yet");
        tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
    }
}

async fn route(shared: &Shared, channel: Channel, message: Message) {
    let Some(parent) = message.parent_msg_id() else {
        return;
    };
    let Some(sender) = shared.routes.get(parent).map(|entry| entry.value().clone()) else {
        return;
    };
    // A consumer that went away has already removed its route; nothing to do if it fails.
    let _ = sender.send(Routed { channel, message }).await;
}

async fn read_shell(mut socket: zeromq::DealerRecvHalf, codec: Codec, shared: Arc<Shared>) {
    loop {
        match socket.recv().await {
            Ok(raw) => match codec.decode(raw) {
                Ok(message) => route(&shared, Channel::Shell, message).await,
                Err(error) => tracing::warn!(%error, "dropping shell message"),
            },
            Err(error) => {
                tracing::debug!(%error, "shell channel closed");
                break;
            }
        }
    }
    shared.close();
}

async fn read_iopub(mut socket: SubSocket, codec: Codec, shared: Arc<Shared>) {
    loop {
        match socket.recv().await {
            Ok(raw) => match codec.decode(raw) {
                Ok(message) => route(&shared, Channel::IoPub, message).await,
                Err(error) => tracing::warn!(%error, "dropping iopub message"),
            },
            Err(error) => {
                tracing::debug!(%error, "iopub channel closed");
                break;
            }
        }
    }
    shared.close();
}

async fn watch_disconnect(
    mut events: futures::channel::mpsc::Receiver<SocketEvent>,
    shared: Arc<Shared>,
) {
    while let Some(event) = events.next().await {
        if matches!(event, SocketEvent::Disconnected(_)) {
            tracing::debug!("kernel shell connection dropped");
            shared.close();
            return;
        }
    }
}
