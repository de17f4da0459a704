//! A connected kernel: a DEALER for shell, one for control and a SUB for iopub, each spoken in
//! ZMTP over a byte stream the caller's [`Dialer`] opens (the Docker backend runs `socat` to the
//! kernel's unix socket in an exec). Reader tasks route every shell and iopub message to whoever
//! registered its parent `msg_id`; anything else (stale output, forged messages) is dropped.
//!
//! Everything that comes back is untrusted: frames are bounded by [`Limits`] before they are
//! buffered, and a kernel that breaks a bound loses its connection with
//! [`CloseReason::Violation`], which the engine answers by restarting it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::connection::KernelChannel;
use super::error::{DialError, KernelError};
use super::execution::KernelExecution;
use super::routing::{Channel, CloseReason, KernelCounters, Route, Routed, Shared};
use super::wire::{Codec, WireError};
use super::zmtp::{self, Limits, SocketType, ZmtpReader, ZmtpWriter};

/// Messages buffered per in-flight request before the reader waits for the consumer. Bounds the
/// server's memory when a kernel prints faster than the server consumes: a stream message holds
/// up to 64 KiB (the sandbox's stdout flush size), so this holds at most about 512 KiB.
const ROUTE_CAPACITY: usize = 8;
/// How long one readiness probe (`kernel_info_request`) waits before it is sent again.
const READY_PROBE_INTERVAL: Duration = Duration::from_millis(100);

type Reader = ZmtpReader<Pin<Box<dyn AsyncRead + Send>>>;
type Writer = ZmtpWriter<Pin<Box<dyn AsyncWrite + Send>>>;

/// A byte stream to one of the kernel's sockets: what the kernel sends, and where to write.
pub struct ChannelStream {
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
    pub writer: Pin<Box<dyn AsyncWrite + Send>>,
}

/// Opens byte streams to a kernel's sockets.
#[async_trait]
pub trait Dialer: Send + Sync {
    /// A stream to `channel`. It may take a while (the kernel may still be starting); it ends
    /// at once when the kernel's socket is not there.
    async fn dial(&self, channel: KernelChannel) -> Result<ChannelStream, DialError>;
}

/// A connection to one kernel. Cheap to share behind an `Arc`.
pub struct KernelClient {
    codec: Codec,
    shell: Mutex<Writer>,
    control: Mutex<(Reader, Writer)>,
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
    /// Opens every channel and waits until the kernel answers `kernel_info` and its iopub output
    /// reaches us (so no output of the first execution is lost to a late subscription).
    /// Messages that fail their signature or do not parse are counted in `counters`.
    pub async fn connect(
        dialer: &dyn Dialer,
        key: &str,
        limits: Limits,
        counters: Arc<KernelCounters>,
        ready_within: Duration,
    ) -> Result<Self, KernelError> {
        let started = Instant::now();
        let deadline = started + ready_within;
        let codec = Codec::new(key);
        let (iopub, mut iopub_writer) = open(
            dialer,
            KernelChannel::IoPub,
            SocketType::Sub,
            limits,
            deadline,
        )
        .await?;
        iopub_writer
            .subscribe(b"")
            .await
            .map_err(|error| KernelError::from_channel("iopub", error))?;
        let (shell, shell_writer) = open(
            dialer,
            KernelChannel::Shell,
            SocketType::Dealer,
            limits,
            deadline,
        )
        .await?;
        let control = open(
            dialer,
            KernelChannel::Control,
            SocketType::Dealer,
            limits,
            deadline,
        )
        .await?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "kernel channels open"
        );
        let shared = Arc::new(Shared::new(counters));
        let readers = vec![
            tokio::spawn(read_channel(
                shell,
                Channel::Shell,
                codec.clone(),
                shared.clone(),
                None,
            )),
            // The iopub writer lives with its reader: closing it would end the stream.
            tokio::spawn(read_channel(
                iopub,
                Channel::IoPub,
                codec.clone(),
                shared.clone(),
                Some(iopub_writer),
            )),
        ];
        let client = Self {
            codec,
            shell: Mutex::new(shell_writer),
            control: Mutex::new(control),
            shared,
            readers,
        };
        client.wait_ready(deadline, started).await?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "kernel ready"
        );
        Ok(client)
    }

    async fn wait_ready(&self, deadline: Instant, started: Instant) -> Result<(), KernelError> {
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
                    Ok(None) => return Err(self.closed_error()),
                    Err(_) => break,
                }
            }
            if replied && heard_iopub {
                return Ok(());
            }
        }
        Err(KernelError::NotReady {
            waited_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// True once the connection to the kernel is gone (kernel died or restarted, or broke the
    /// protocol).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Resolves once the connection to the kernel is gone.
    pub async fn closed(&self) {
        self.shared.closed_signal.cancelled().await
    }

    /// Why the connection closed; `None` while it is open.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.reason()
    }

    /// The error for a request that found the connection closed: a violation says so.
    fn closed_error(&self) -> KernelError {
        match self.close_reason() {
            Some(CloseReason::Violation { channel, error }) => KernelError::Violation {
                channel,
                source: error,
            },
            _ => KernelError::Closed,
        }
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

    /// Runs `code` silently (no output published, no history, the execution counter kept) and
    /// returns its event stream: for the server's own use, such as warming a kernel up, where
    /// the sandbox's user must see no trace of it.
    pub async fn execute_silently(&self, code: &str) -> Result<KernelExecution, KernelError> {
        let content = json!({
            "code": code,
            "silent": true,
            "store_history": false,
            "user_expressions": {},
            "allow_stdin": false,
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
            Err(self.closed_error())
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

    async fn send_shell(&self, msg_type: &str, content: &Value) -> Result<Route, KernelError> {
        if self.is_closed() {
            return Err(self.closed_error());
        }
        let (message, msg_id) = self.codec.request(msg_type, content);
        let (tx, rx) = mpsc::channel(ROUTE_CAPACITY);
        self.shared.routes.insert(msg_id.clone(), tx);
        let route = Route {
            rx,
            msg_id,
            shared: self.shared.clone(),
        };
        let sent = self.shell.lock().await.send(&message).await;
        sent.map_err(|error| self.fail("shell", error))?;
        Ok(route)
    }

    /// A channel failure: the connection is closed with the reason it gives.
    fn fail(&self, channel: &'static str, error: zmtp::ZmtpError) -> KernelError {
        let error = KernelError::from_channel(channel, error);
        self.shared.close_with(&error);
        error
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
        let (reader, writer) = &mut *control;
        let exchange = async {
            writer
                .send(&message)
                .await
                .map_err(|error| self.fail("control", error))?;
            loop {
                let frames = match reader.recv().await {
                    Ok(Some(frames)) => frames,
                    Ok(None) => {
                        self.shared.close(CloseReason::Ended);
                        return Err(KernelError::Closed);
                    }
                    Err(error) => return Err(self.fail("control", error)),
                };
                match self.codec.decode(frames) {
                    // Replies to earlier requests that timed out are skipped.
                    Ok(reply) if reply.parent_msg_id() == Some(msg_id.as_str()) => {
                        return Ok(reply.content);
                    }
                    Ok(_) => {}
                    Err(error) => count_rejected(&self.shared, "control", &error),
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

/// Dials `channel` and performs the ZMTP handshake, dialing again while the kernel is not
/// listening yet (the stream ends at once then), until `deadline`. A peer that breaks the
/// protocol is not dialed again.
async fn open(
    dialer: &dyn Dialer,
    channel: KernelChannel,
    socket_type: SocketType,
    limits: Limits,
    deadline: Instant,
) -> Result<(Reader, Writer), KernelError> {
    let name = channel.name();
    let waited = deadline.saturating_duration_since(Instant::now());
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = timeout(remaining, async {
            let stream = dialer
                .dial(channel)
                .await
                .map_err(|source| KernelError::Dial {
                    channel: name,
                    source,
                })?;
            zmtp::handshake(stream.reader, stream.writer, socket_type, limits)
                .await
                .map_err(|error| KernelError::from_channel(name, error))
        })
        .await;
        match attempt {
            Ok(Ok(halves)) => return Ok(halves),
            Ok(Err(KernelError::Dial {
                source: DialError::NotListening(error),
                ..
            })) => {
                // The backend paces its own tries; past the deadline this is a kernel that did
                // not come up in time.
                if Instant::now() >= deadline {
                    return Err(KernelError::NotReady {
                        waited_ms: waited.as_millis() as u64,
                    });
                }
                tracing::trace!(channel = name, %error, "kernel not listening yet");
            }
            Ok(Err(error @ (KernelError::Violation { .. } | KernelError::Dial { .. }))) => {
                return Err(error);
            }
            Ok(Err(error)) if Instant::now() < deadline => {
                // The stream ended before the kernel answered: it is still starting.
                tracing::trace!(channel = name, %error, "kernel not listening yet");
            }
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(KernelError::NotReady {
                    waited_ms: waited.as_millis() as u64,
                });
            }
        }
    }
}

/// Reads one channel until it ends, routing every message that passes its signature. `keep` is
/// the channel's writer where nothing is sent on it (iopub), held so the stream stays open.
async fn read_channel(
    mut reader: Reader,
    channel: Channel,
    codec: Codec,
    shared: Arc<Shared>,
    keep: Option<Writer>,
) {
    let name = match channel {
        Channel::Shell => "shell",
        Channel::IoPub => "iopub",
    };
    loop {
        match reader.recv().await {
            Ok(Some(frames)) => match codec.decode(frames) {
                Ok(message) => shared.route(channel, message).await,
                Err(error) => count_rejected(&shared, name, &error),
            },
            Ok(None) => {
                tracing::debug!(channel = name, "kernel channel ended");
                shared.close(CloseReason::Ended);
                break;
            }
            Err(error) => {
                let error = KernelError::from_channel(name, error);
                if matches!(error, KernelError::Violation { .. }) {
                    tracing::warn!(%error, "closing the kernel connection");
                } else {
                    tracing::debug!(%error, "kernel channel failed");
                }
                shared.close_with(&error);
                break;
            }
        }
    }
    drop(keep);
}

/// Counts a message that was dropped because its signature failed or it did not parse.
fn count_rejected(shared: &Shared, channel: &'static str, error: &WireError) {
    let counter = match error {
        WireError::BadSignature => &shared.counters.bad_signature,
        _ => &shared.counters.malformed,
    };
    let seen = counter.fetch_add(1, Ordering::Relaxed);
    // A kernel can send these in a loop: the log shows the first few, the metrics all.
    if seen < 3 {
        tracing::warn!(channel, %error, "dropping a kernel message");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Says "not listening yet" `starting` times, then fails for good.
    struct StartingKernel {
        starting: usize,
        dials: AtomicUsize,
    }

    #[async_trait]
    impl Dialer for StartingKernel {
        async fn dial(&self, _channel: KernelChannel) -> Result<ChannelStream, DialError> {
            let dial = self.dials.fetch_add(1, Ordering::SeqCst);
            let error: Box<dyn std::error::Error + Send + Sync> = "no socket".into();
            if dial < self.starting {
                // As the backend does, a while passes before it says so.
                tokio::time::sleep(Duration::from_millis(10)).await;
                Err(DialError::NotListening(error))
            } else {
                Err(DialError::Failed(error))
            }
        }
    }

    async fn connect(dialer: &StartingKernel, ready_within: Duration) -> KernelError {
        match KernelClient::connect(
            dialer,
            "key",
            Limits::default(),
            Arc::default(),
            ready_within,
        )
        .await
        {
            Ok(_) => panic!("connected to no kernel"),
            Err(error) => error,
        }
    }

    #[tokio::test]
    async fn a_kernel_not_listening_yet_is_dialled_again_until_another_error() {
        let dialer = StartingKernel {
            starting: 5,
            dials: AtomicUsize::new(0),
        };
        let error = connect(&dialer, Duration::from_secs(10)).await;
        assert!(
            matches!(
                error,
                KernelError::Dial {
                    source: DialError::Failed(_),
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(dialer.dials.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn a_kernel_that_never_listens_is_not_ready_at_the_deadline() {
        let dialer = StartingKernel {
            starting: usize::MAX,
            dials: AtomicUsize::new(0),
        };
        let started = Instant::now();
        let error = connect(&dialer, Duration::from_millis(200)).await;
        assert!(matches!(error, KernelError::NotReady { .. }), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
