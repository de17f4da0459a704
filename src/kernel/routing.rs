//! Routing kernel replies to the request that caused them: each request registers its
//! `msg_id`, and the readers deliver every message whose parent is that id to its [`Route`].
//! Messages nobody asked for, and messages that fail their signature, are dropped and counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::KernelError;
use super::wire::Message;

/// Which socket a routed message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Shell,
    IoPub,
}

/// A message delivered to the request that caused it.
#[derive(Debug)]
pub struct Routed {
    pub channel: Channel,
    pub message: Message,
}

pub(crate) type Routes = DashMap<String, mpsc::Sender<Routed>>;

/// The replies to one request. Dropping it stops routing that request's messages.
pub struct Route {
    pub(crate) rx: mpsc::Receiver<Routed>,
    pub(crate) msg_id: String,
    pub(crate) shared: Arc<Shared>,
}

impl Route {
    /// The next message for this request; `None` once the kernel connection is gone.
    pub async fn recv(&mut self) -> Option<Routed> {
        self.rx.recv().await
    }

    /// The request's `msg_id`.
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        self.shared.routes.remove(&self.msg_id);
    }
}

/// What every kernel connection of a server counts: messages dropped because they were not
/// signed with the kernel's key, or did not parse.
#[derive(Debug, Default)]
pub struct KernelCounters {
    pub bad_signature: AtomicU64,
    pub malformed: AtomicU64,
    /// Connections closed because the kernel broke the protocol or one of its bounds.
    pub violations: AtomicU64,
}

/// Why a connection closed.
#[derive(Debug, Clone)]
pub enum CloseReason {
    /// A channel ended: the kernel exited, restarted, or its sandbox went away.
    Ended,
    /// The kernel broke the protocol or one of its bounds.
    Violation {
        channel: &'static str,
        error: Arc<super::zmtp::ZmtpError>,
    },
}

/// State shared between the client and its reader tasks.
pub(crate) struct Shared {
    pub(crate) routes: Routes,
    pub(crate) closed: AtomicBool,
    pub(crate) closed_signal: CancellationToken,
    pub(crate) reason: Mutex<Option<CloseReason>>,
    pub(crate) counters: Arc<KernelCounters>,
}

impl Shared {
    pub(crate) fn new(counters: Arc<KernelCounters>) -> Self {
        Self {
            routes: DashMap::new(),
            closed: AtomicBool::new(false),
            closed_signal: CancellationToken::new(),
            reason: Mutex::new(None),
            counters,
        }
    }

    /// Closes the connection; the first reason given is the one kept.
    pub(crate) fn close(&self, reason: CloseReason) {
        if let Ok(mut kept) = self.reason.lock() {
            kept.get_or_insert(reason);
        }
        self.closed.store(true, Ordering::SeqCst);
        self.closed_signal.cancel();
        // Dropping every sender wakes every waiting request with "closed".
        self.routes.clear();
    }

    /// Closes the connection with the reason a channel failure gives.
    pub(crate) fn close_with(&self, error: &KernelError) {
        let reason = match error {
            KernelError::Violation { channel, source } => CloseReason::Violation {
                channel,
                error: source.clone(),
            },
            _ => CloseReason::Ended,
        };
        self.close(reason);
    }

    pub(crate) fn reason(&self) -> Option<CloseReason> {
        self.reason.lock().ok().and_then(|reason| reason.clone())
    }

    /// Hands `message` to the request that caused it; anything else is dropped.
    pub(crate) async fn route(&self, channel: Channel, message: Message) {
        let Some(parent) = message.parent_msg_id() else {
            return;
        };
        let Some(sender) = self.routes.get(parent).map(|entry| entry.value().clone()) else {
            return;
        };
        // A consumer that went away has already removed its route; nothing to do if it fails.
        let _ = sender.send(Routed { channel, message }).await;
    }
}
