//! Routing kernel replies to the request that caused them: each request registers its
//! `msg_id`, and the readers deliver every message whose parent is that id to its [`Route`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

/// State shared between the client and its reader tasks.
pub(crate) struct Shared {
    pub(crate) routes: Routes,
    pub(crate) closed: AtomicBool,
    pub(crate) closed_signal: CancellationToken,
}

impl Shared {
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closed_signal.cancel();
        // Dropping every sender wakes every waiting request with "closed".
        self.routes.clear();
    }
}
