//! A small ZMTP 3.0 client (RFC 23, NULL security) over any byte stream, for reaching a kernel's
//! ZeroMQ sockets through a pipe such as a `docker exec` running `socat`. It announces DEALER
//! (to the kernel's ROUTER shell and control sockets) or SUB (to its PUB iopub socket), sends
//! and receives multipart messages, and treats every byte from the peer as hostile: no buffer is
//! sized from a length the peer announced before that length passed a [`Limits`] check, and a
//! frame's buffer then grows only as its bytes actually arrive.
//!
//! The reader and the writer are separate halves ([`ZmtpReader`], [`ZmtpWriter`]) because the
//! stream comes as two (an exec's stdout and stdin). [`ZmtpReader::recv`] is cancel safe; a
//! [`ZmtpWriter::send`] dropped half way leaves the writer [`ZmtpError::Broken`].
//!
//! Not implemented, because a Jupyter client needs none of it: other mechanisms, the server side,
//! and answering PING. libzmq only sends PING when `ZMQ_HEARTBEAT_IVL` is set on its socket, and
//! then drops a peer that stays silent for the heartbeat timeout; ipykernel sets no heartbeat.

use std::fmt;
use std::io;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Frame flag: another frame of the same message follows.
const MORE: u8 = 0x01;
/// Frame flag: the size is 8 bytes (network order) instead of 1.
const LONG: u8 = 0x02;
/// Frame flag: the frame is a command, not message data.
const COMMAND: u8 = 0x04;

const GREETING_LEN: usize = 64;
/// The mechanism field of a greeting: "NULL", zero-padded to 20 bytes.
const NULL_MECHANISM: &[u8; 20] = b"NULL\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
/// Our greeting: signature `FF <8 padding> 7F`, version 3.0, mechanism NULL, as-server 0, filler.
const GREETING: [u8; GREETING_LEN] = {
    let mut greeting = [0u8; GREETING_LEN];
    greeting[0] = 0xFF;
    greeting[9] = 0x7F;
    greeting[10] = 3;
    let mut i = 0;
    while i < NULL_MECHANISM.len() {
        greeting[12 + i] = NULL_MECHANISM[i];
        i += 1;
    }
    greeting
};

/// Largest command frame accepted: the peer's READY or ERROR, and the commands (PING, ...) that
/// are skipped later. libzmq's READY is well under 100 bytes.
const MAX_COMMAND_BYTES: usize = 4096;
/// A frame's buffer starts at most this large and then at most doubles as bytes arrive.
const INITIAL_FRAME_CAPACITY: usize = 16 * 1024;
/// [`ZmtpWriter::send`] copies parts up to this size into one write with the frame headers, and
/// writes the coalesced bytes out once they reach it; larger parts are written without copying.
const COALESCE_BYTES: usize = 64 * 1024;

/// What the peer may send; anything larger is an error before it is buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest data frame (one part of a message).
    pub max_frame_bytes: usize,
    /// Largest message: the sum of its parts' sizes.
    pub max_message_bytes: usize,
    /// Most parts in one message.
    pub max_parts: usize,
}

impl Default for Limits {
    /// 16 MiB frames, 32 MiB messages, 64 parts: room for a Jupyter message carrying a large
    /// image, while a hostile kernel can hold at most one such message in the server.
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 * 1024 * 1024,
            max_message_bytes: 32 * 1024 * 1024,
            max_parts: 64,
        }
    }
}

/// The socket type we announce in READY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketType {
    /// Talks to the kernel's ROUTER (shell, control).
    Dealer,
    /// Listens to the kernel's PUB (iopub).
    Sub,
}

impl SocketType {
    /// The name ZMTP uses in the `Socket-Type` property.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dealer => "DEALER",
            Self::Sub => "SUB",
        }
    }

    /// Whether a peer announcing `peer` may talk to us (RFC 28 and RFC 29).
    fn accepts(self, peer: &[u8]) -> bool {
        let valid: &[&[u8]] = match self {
            Self::Dealer => &[b"ROUTER", b"DEALER", b"REP"],
            Self::Sub => &[b"PUB", b"XPUB"],
        };
        valid.contains(&peer)
    }
}

impl fmt::Display for SocketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a ZMTP exchange failed. After any error the stream is out of step: drop both halves.
#[derive(Debug, thiserror::Error)]
pub enum ZmtpError {
    #[error("ZMTP stream I/O failed")]
    Io(#[from] io::Error),
    #[error("peer did not send a ZMTP greeting (bad signature)")]
    BadSignature,
    #[error("peer speaks ZMTP {major}.{minor}, need 3.0 or later")]
    UnsupportedVersion { major: u8, minor: u8 },
    #[error("peer wants security mechanism {mechanism:?}, only NULL is supported")]
    UnsupportedMechanism { mechanism: String },
    #[error("peer is a {peer:?} socket, which a {ours} socket cannot talk to")]
    IncompatibleSocketType { ours: SocketType, peer: String },
    #[error("ZMTP protocol violation: {what}")]
    Protocol { what: &'static str },
    #[error("peer refused the handshake: {reason:?}")]
    PeerError { reason: String },
    #[error("peer announced a {announced}-byte frame, the limit is {limit}")]
    FrameTooLarge { announced: u64, limit: usize },
    #[error("peer's message would reach {announced} bytes, the limit is {limit}")]
    MessageTooLarge { announced: u64, limit: usize },
    #[error("peer's message has more than {limit} parts")]
    TooManyParts { limit: usize },
    #[error("peer closed the stream in the middle of {during}")]
    UnexpectedEof { during: &'static str },
    #[error("an earlier error or an abandoned send left this ZMTP stream out of step")]
    Broken,
}

impl ZmtpError {
    /// True when the peer sent (or announced) more than [`Limits`] or the command bound allow.
    pub fn is_limit_exceeded(&self) -> bool {
        matches!(
            self,
            Self::FrameTooLarge { .. } | Self::MessageTooLarge { .. } | Self::TooManyParts { .. }
        )
    }
}

/// Writes our greeting and READY, reads the peer's (concurrently, so neither side has to go
/// first), and returns the two halves ready for messages. It has no deadline of its own: a peer
/// that never answers is the caller's to time out.
pub async fn handshake<R, W>(
    reader: R,
    writer: W,
    socket_type: SocketType,
    limits: Limits,
) -> Result<(ZmtpReader<R>, ZmtpWriter<W>), ZmtpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut writer = ZmtpWriter {
        inner: writer,
        broken: false,
    };
    let mut reader = ZmtpReader {
        inner: BufReader::new(reader),
        limits,
        head: [0; 9],
        head_len: 0,
        frame: None,
        parts: Vec::new(),
        total: 0,
        broken: false,
    };
    let send = async {
        let mut out = Vec::with_capacity(GREETING_LEN + 32);
        out.extend_from_slice(&GREETING);
        put_ready(&mut out, socket_type);
        writer.inner.write_all(&out).await?;
        writer.inner.flush().await?;
        Ok::<_, ZmtpError>(())
    };
    let receive = async {
        read_greeting(&mut reader.inner).await?;
        let ready = reader.read_handshake_command().await?;
        check_ready(&ready, socket_type)
    };
    tokio::try_join!(send, receive)?;
    Ok((reader, writer))
}

/// Appends our READY command: only the `Socket-Type` property.
fn put_ready(out: &mut Vec<u8>, socket_type: SocketType) {
    const PROPERTY: &[u8] = b"Socket-Type";
    let value = socket_type.name().as_bytes();
    let body_len = 1 + 5 + 1 + PROPERTY.len() + 4 + value.len();
    put_header(out, COMMAND, body_len);
    out.push(5);
    out.extend_from_slice(b"READY");
    out.push(PROPERTY.len() as u8);
    out.extend_from_slice(PROPERTY);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

/// Appends a frame header: flags and a 1-byte or 8-byte size.
fn put_header(out: &mut Vec<u8>, flags: u8, size: usize) {
    match u8::try_from(size) {
        Ok(short) => out.extend_from_slice(&[flags, short]),
        Err(_) => {
            out.push(flags | LONG);
            out.extend_from_slice(&(size as u64).to_be_bytes());
        }
    }
}

/// Reads and checks the peer's greeting. The signature and version come first so that an older
/// peer, whose greeting is shorter, is refused instead of waited for.
async fn read_greeting<R: AsyncRead + Unpin>(reader: &mut R) -> Result<(), ZmtpError> {
    let mut greeting = [0u8; GREETING_LEN];
    read_exact(reader, &mut greeting[..12], "the greeting").await?;
    if greeting[0] != 0xFF || greeting[9] != 0x7F {
        return Err(ZmtpError::BadSignature);
    }
    let (major, minor) = (greeting[10], greeting[11]);
    if major < 3 {
        return Err(ZmtpError::UnsupportedVersion { major, minor });
    }
    read_exact(reader, &mut greeting[12..], "the greeting").await?;
    let mechanism = &greeting[12..32];
    if mechanism != NULL_MECHANISM {
        let name = mechanism.split(|&b| b == 0).next().unwrap_or_default();
        return Err(ZmtpError::UnsupportedMechanism {
            mechanism: String::from_utf8_lossy(name).into_owned(),
        });
    }
    Ok(())
}

/// Checks the peer's READY (or turns its ERROR into [`ZmtpError::PeerError`]).
fn check_ready(body: &[u8], ours: SocketType) -> Result<(), ZmtpError> {
    let mut rest = body;
    let name = take_short(&mut rest)?;
    if name == b"ERROR" {
        let reason = take_short(&mut rest)?;
        return Err(ZmtpError::PeerError {
            reason: String::from_utf8_lossy(reason).into_owned(),
        });
    }
    if name != b"READY" {
        return Err(ZmtpError::Protocol {
            what: "the peer's first command is neither READY nor ERROR",
        });
    }
    let mut peer_type = None;
    while !rest.is_empty() {
        let property = take_short(&mut rest)?;
        let length = u32::from_be_bytes(array(take(&mut rest, 4)?)?);
        let length = usize::try_from(length).map_err(|_| TRUNCATED)?;
        let value = take(&mut rest, length)?;
        if property.eq_ignore_ascii_case(b"Socket-Type") {
            peer_type = Some(value);
        }
    }
    let peer = peer_type.ok_or(ZmtpError::Protocol {
        what: "the peer's READY has no Socket-Type",
    })?;
    if !ours.accepts(peer) {
        let peer = &peer[..peer.len().min(64)];
        return Err(ZmtpError::IncompatibleSocketType {
            ours,
            peer: String::from_utf8_lossy(peer).into_owned(),
        });
    }
    Ok(())
}

const TRUNCATED: ZmtpError = ZmtpError::Protocol {
    what: "a command is shorter than its fields announce",
};

/// Splits `n` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], ZmtpError> {
    let (head, tail) = rest.split_at_checked(n).ok_or(TRUNCATED)?;
    *rest = tail;
    Ok(head)
}

/// Splits a 1-byte length and that many bytes off the front of `rest`.
fn take_short<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], ZmtpError> {
    let [length] = array(take(rest, 1)?)?;
    take(rest, usize::from(length))
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], ZmtpError> {
    bytes.try_into().map_err(|_| TRUNCATED)
}

/// `announced` as a `usize`, if it is at most `limit`.
fn within(announced: u64, limit: usize) -> Result<usize, ZmtpError> {
    match usize::try_from(announced) {
        Ok(size) if size <= limit => Ok(size),
        _ => Err(ZmtpError::FrameTooLarge { announced, limit }),
    }
}

/// `read_exact`, with end of stream reported as [`ZmtpError::UnexpectedEof`].
async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    during: &'static str,
) -> Result<(), ZmtpError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(ZmtpError::UnexpectedEof { during })
        }
        Err(e) => Err(e.into()),
    }
}

/// A frame whose header has been read and whose body is being received.
struct Frame {
    /// Fills up to `size` bytes.
    body: Vec<u8>,
    size: usize,
    flags: u8,
}

impl Frame {
    fn new(size: usize, flags: u8) -> Self {
        let body = Vec::with_capacity(size.min(INITIAL_FRAME_CAPACITY));
        Self { body, size, flags }
    }
}

/// The receiving half. All progress lives in the struct, so [`recv`](Self::recv) can be
/// cancelled (a `timeout`, a `select!`) and called again without losing bytes.
pub struct ZmtpReader<R> {
    inner: BufReader<R>,
    limits: Limits,
    /// The frame header received so far: flags, then 1 or 8 size bytes.
    head: [u8; 9],
    head_len: usize,
    frame: Option<Frame>,
    /// The complete parts of the message being assembled, and the sum of their sizes.
    parts: Vec<Bytes>,
    total: usize,
    broken: bool,
}

impl<R: AsyncRead + Unpin> ZmtpReader<R> {
    /// The next message, or `None` when the peer closed the stream between messages.
    /// Commands (PING, ...) are skipped. Cancel safe.
    pub async fn recv(&mut self) -> Result<Option<Vec<Bytes>>, ZmtpError> {
        if self.broken {
            return Err(ZmtpError::Broken);
        }
        let received = self.assemble().await;
        self.broken = received.is_err();
        received
    }

    async fn assemble(&mut self) -> Result<Option<Vec<Bytes>>, ZmtpError> {
        loop {
            match &mut self.frame {
                None => {
                    let Some((flags, size)) = self.read_header().await? else {
                        return Ok(None);
                    };
                    self.frame = Some(self.start_frame(flags, size)?);
                }
                Some(Frame { body, size, flags }) => {
                    while body.len() < *size {
                        if body.len() == body.capacity() {
                            // Double, but never past what was announced.
                            let remaining = *size - body.len();
                            body.reserve_exact(
                                remaining.min(body.len().max(INITIAL_FRAME_CAPACITY)),
                            );
                        }
                        let remaining = u64::try_from(*size - body.len()).unwrap_or(u64::MAX);
                        let n = (&mut self.inner).take(remaining).read_buf(body).await?;
                        if n == 0 {
                            return Err(ZmtpError::UnexpectedEof { during: "a frame" });
                        }
                    }
                    let flags = *flags;
                    let body = std::mem::take(body);
                    self.frame = None;
                    if flags & COMMAND != 0 {
                        continue; // PING and the like: nothing a Jupyter client answers.
                    }
                    self.parts.push(Bytes::from(body));
                    if flags & MORE == 0 {
                        self.total = 0;
                        return Ok(Some(std::mem::take(&mut self.parts)));
                    }
                }
            }
        }
    }

    /// The body of the command frame that follows the greeting: READY or ERROR.
    async fn read_handshake_command(&mut self) -> Result<Vec<u8>, ZmtpError> {
        const DURING: &str = "the peer's READY";
        let (flags, announced) = self
            .read_header()
            .await?
            .ok_or(ZmtpError::UnexpectedEof { during: DURING })?;
        if flags & !LONG != COMMAND {
            return Err(ZmtpError::Protocol {
                what: "the greeting is not followed by a single command frame",
            });
        }
        let mut body = vec![0u8; within(announced, MAX_COMMAND_BYTES)?];
        read_exact(&mut self.inner, &mut body, DURING).await?;
        Ok(body)
    }

    /// Reads a frame header; `None` on end of stream between messages.
    async fn read_header(&mut self) -> Result<Option<(u8, u64)>, ZmtpError> {
        loop {
            let needed = match self.head_len {
                0 => 1,
                _ if self.head[0] & LONG != 0 => 9,
                _ => 2,
            };
            if self.head_len == needed {
                break;
            }
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                let during = match (self.head_len, self.parts.is_empty()) {
                    (0, true) => return Ok(None),
                    (0, false) => "a message",
                    _ => "a frame",
                };
                return Err(ZmtpError::UnexpectedEof { during });
            }
            let n = available.len().min(needed - self.head_len);
            self.head[self.head_len..self.head_len + n].copy_from_slice(&available[..n]);
            self.inner.consume(n);
            self.head_len += n;
        }
        let [flags, size @ ..] = self.head;
        let size = if self.head_len == 9 {
            u64::from_be_bytes(size)
        } else {
            u64::from(size[0])
        };
        self.head_len = 0;
        Ok(Some((flags, size)))
    }

    /// Checks a frame header against the protocol and the limits, before anything is allocated.
    fn start_frame(&mut self, flags: u8, announced: u64) -> Result<Frame, ZmtpError> {
        if flags & !(MORE | LONG | COMMAND) != 0 {
            return Err(ZmtpError::Protocol {
                what: "a frame has reserved flag bits set",
            });
        }
        if flags & COMMAND != 0 {
            if flags & MORE != 0 {
                return Err(ZmtpError::Protocol {
                    what: "a command frame has the MORE flag",
                });
            }
            let size = within(announced, MAX_COMMAND_BYTES)?;
            return Ok(Frame::new(size, flags));
        }
        let limits = self.limits;
        let size = within(announced, limits.max_frame_bytes)?;
        if self.parts.len() >= limits.max_parts {
            return Err(ZmtpError::TooManyParts {
                limit: limits.max_parts,
            });
        }
        match self.total.checked_add(size) {
            Some(total) if total <= limits.max_message_bytes => self.total = total,
            _ => {
                return Err(ZmtpError::MessageTooLarge {
                    announced: (self.total as u64).saturating_add(announced),
                    limit: limits.max_message_bytes,
                });
            }
        }
        Ok(Frame::new(size, flags))
    }
}

/// The sending half.
pub struct ZmtpWriter<W> {
    inner: W,
    /// Set while a send is under way: still set afterwards if it failed or was dropped.
    broken: bool,
}

impl<W: AsyncWrite + Unpin> ZmtpWriter<W> {
    /// Sends one message (an empty slice sends nothing) and flushes. Frame headers and small
    /// parts go out in one write; large parts are written as they are. Not cancel safe: a send
    /// dropped half way leaves a partial message, and every later call fails with
    /// [`ZmtpError::Broken`].
    pub async fn send(&mut self, parts: &[Bytes]) -> Result<(), ZmtpError> {
        if self.broken {
            return Err(ZmtpError::Broken);
        }
        self.broken = true;
        let wanted = parts
            .iter()
            .map(|part| 9 + part.len())
            .fold(0, usize::saturating_add);
        let mut out = Vec::with_capacity(wanted.min(COALESCE_BYTES));
        for (i, part) in parts.iter().enumerate() {
            let flags = if i + 1 < parts.len() { MORE } else { 0 };
            put_header(&mut out, flags, part.len());
            if part.len() < COALESCE_BYTES {
                out.extend_from_slice(part);
            } else {
                self.inner.write_all(&out).await?;
                out.clear();
                self.inner.write_all(part).await?;
            }
            if out.len() >= COALESCE_BYTES {
                self.inner.write_all(&out).await?;
                out.clear();
            }
        }
        self.inner.write_all(&out).await?;
        self.inner.flush().await?;
        self.broken = false;
        Ok(())
    }

    /// Subscribes to messages whose first part starts with `topic` (empty: every message), the
    /// ZMTP 3.0 way: a data frame of 0x01 followed by the topic. Meant for a [`SocketType::Sub`]
    /// stream; on any other it is just a one-part message.
    pub async fn subscribe(&mut self, topic: &[u8]) -> Result<(), ZmtpError> {
        let mut frame = Vec::with_capacity(1 + topic.len());
        frame.push(0x01);
        frame.extend_from_slice(topic);
        self.send(&[Bytes::from(frame)]).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;
    use tokio::io::{DuplexStream, duplex};
    use tokio::time::timeout;

    use super::*;

    type Halves = (ZmtpReader<DuplexStream>, ZmtpWriter<DuplexStream>);

    const SOON: Duration = Duration::from_secs(5);

    /// A greeting as a peer would send it (libzmq puts 1 in the last padding byte).
    fn greeting(major: u8, minor: u8, mechanism: &[u8]) -> Vec<u8> {
        let mut greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, major, minor];
        let mut mechanism = mechanism.to_vec();
        mechanism.resize(20, 0);
        greeting.extend(mechanism);
        greeting.resize(64, 0);
        greeting
    }

    /// A frame with a short size when it fits, else a long one.
    fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_header(&mut out, flags, body.len());
        out.extend_from_slice(body);
        out
    }

    fn long_header(flags: u8, size: u64) -> Vec<u8> {
        let mut out = vec![flags | LONG];
        out.extend(size.to_be_bytes());
        out
    }

    fn ready(properties: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut body = b"\x05READY".to_vec();
        for (name, value) in properties {
            body.push(name.len() as u8);
            body.extend_from_slice(name);
            body.extend((value.len() as u32).to_be_bytes());
            body.extend_from_slice(value);
        }
        frame(COMMAND, &body)
    }

    /// What libzmq 4.3's ROUTER answers: version 3.1, READY with Socket-Type and empty Identity.
    fn router_answer() -> Vec<u8> {
        let mut answer = greeting(3, 1, b"NULL");
        answer.extend(ready(&[(b"Socket-Type", b"ROUTER"), (b"Identity", b"")]));
        answer
    }

    fn pub_answer() -> Vec<u8> {
        let mut answer = greeting(3, 1, b"NULL");
        answer.extend(ready(&[(b"Socket-Type", b"PUB")]));
        answer
    }

    fn ping() -> Vec<u8> {
        frame(COMMAND, b"\x04PING\x00\x64ctx")
    }

    fn message(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let flags = if i + 1 < parts.len() { MORE } else { 0 };
            out.extend(frame(flags, part));
        }
        out
    }

    fn limits(max_frame_bytes: usize, max_message_bytes: usize, max_parts: usize) -> Limits {
        Limits {
            max_frame_bytes,
            max_message_bytes,
            max_parts,
        }
    }

    /// The scripted fake peer: `to_us` holds at most the capacity given to [`start`].
    struct Peer {
        from_us: DuplexStream,
        to_us: DuplexStream,
    }

    impl Peer {
        async fn send(&mut self, bytes: &[u8]) {
            self.to_us.write_all(bytes).await.expect("peer writes");
        }

        /// Reads one frame we sent: flags and body.
        async fn read_frame(&mut self) -> (u8, Vec<u8>) {
            let flags = self.from_us.read_u8().await.expect("flags");
            let size = if flags & LONG != 0 {
                self.from_us.read_u64().await.expect("long size")
            } else {
                u64::from(self.from_us.read_u8().await.expect("short size"))
            };
            let mut body = vec![0; usize::try_from(size).expect("size")];
            self.from_us.read_exact(&mut body).await.expect("body");
            (flags, body)
        }

        /// Reads a whole message we sent.
        async fn read_message(&mut self) -> Vec<Vec<u8>> {
            let mut parts = Vec::new();
            loop {
                let (flags, body) = self.read_frame().await;
                assert_eq!(flags & COMMAND, 0, "we only send data after the handshake");
                parts.push(body);
                if flags & MORE == 0 {
                    return parts;
                }
            }
        }
    }

    /// Runs our handshake against a peer that writes `answer` (through a pipe of `capacity`
    /// bytes) without reading anything first; what we send waits in a roomy pipe.
    async fn start(
        ours: SocketType,
        answer: &[u8],
        limits: Limits,
        capacity: usize,
    ) -> (Result<Halves, ZmtpError>, Peer) {
        let (our_read, to_us) = duplex(capacity);
        let (from_us, our_write) = duplex(1 << 20);
        let mut peer = Peer { from_us, to_us };
        let (result, _) = tokio::join!(
            handshake(our_read, our_write, ours, limits),
            // The write fails if we give up on the handshake and drop our end.
            peer.to_us.write_all(answer),
        );
        (result, peer)
    }

    /// A DEALER connected to a ROUTER-like peer whose pipe to us holds `capacity` bytes, our
    /// greeting and READY already read off.
    async fn connected(
        limits: Limits,
        capacity: usize,
    ) -> (ZmtpReader<DuplexStream>, ZmtpWriter<DuplexStream>, Peer) {
        let (result, mut peer) =
            start(SocketType::Dealer, &router_answer(), limits, capacity).await;
        let (reader, writer) = result.expect("handshake");
        let mut greeting = [0; 64];
        peer.from_us
            .read_exact(&mut greeting)
            .await
            .expect("our greeting");
        peer.read_frame().await;
        (reader, writer, peer)
    }

    async fn handshake_error(ours: SocketType, answer: &[u8]) -> ZmtpError {
        let (result, _peer) = timeout(SOON, start(ours, answer, Limits::default(), 64))
            .await
            .expect("the handshake ends without the peer closing");
        result.err().expect("the handshake fails")
    }

    /// `recv`, which must answer without the peer sending anything more.
    async fn recv_now(
        reader: &mut ZmtpReader<DuplexStream>,
    ) -> Result<Option<Vec<Bytes>>, ZmtpError> {
        timeout(SOON, reader.recv())
            .await
            .expect("recv answers at once")
    }

    fn strings(parts: &[Bytes]) -> Vec<&[u8]> {
        parts.iter().map(|part| part.as_ref()).collect()
    }

    #[tokio::test]
    async fn handshake_sends_our_greeting_and_ready_and_accepts_the_peers() {
        for (ours, answer, name) in [
            (SocketType::Dealer, router_answer(), &b"DEALER"[..]),
            (SocketType::Sub, pub_answer(), &b"SUB"[..]),
        ] {
            let (result, mut peer) = start(ours, &answer, Limits::default(), 64).await;
            result.expect("handshake");
            let mut ours_greeting = [0; 64];
            peer.from_us
                .read_exact(&mut ours_greeting)
                .await
                .expect("greeting");
            assert_eq!(ours_greeting, greeting_we_expect());
            let (flags, body) = peer.read_frame().await;
            assert_eq!(flags, COMMAND);
            let mut expected = b"\x05READY\x0bSocket-Type".to_vec();
            expected.extend((name.len() as u32).to_be_bytes());
            expected.extend_from_slice(name);
            assert_eq!(body, expected);
        }
    }

    fn greeting_we_expect() -> [u8; 64] {
        let mut expected = [0; 64];
        expected[..16].copy_from_slice(b"\xFF\0\0\0\0\0\0\0\0\x7F\x03\x00NULL");
        expected
    }

    #[tokio::test]
    async fn handshake_works_with_a_peer_that_waits_for_our_greeting_first() {
        // libzmq sends its signature, waits for ours, then sends the rest.
        let (our_read, mut to_us) = duplex(64);
        let (mut from_us, our_write) = duplex(64);
        let peer = async move {
            let answer = router_answer();
            to_us.write_all(&answer[..10]).await.expect("signature");
            let mut greeting = [0; 64];
            from_us
                .read_exact(&mut greeting)
                .await
                .expect("our greeting");
            to_us.write_all(&answer[10..]).await.expect("rest");
            (to_us, from_us)
        };
        let (result, _peer) = tokio::join!(
            handshake(our_read, our_write, SocketType::Dealer, Limits::default()),
            peer
        );
        result.expect("handshake");
    }

    #[tokio::test]
    async fn socket_type_property_is_matched_case_insensitively_and_others_ignored() {
        let mut answer = greeting(3, 0, b"NULL");
        answer.extend(ready(&[(b"Resource", b"x"), (b"socket-type", b"XPUB")]));
        let (result, _peer) = start(SocketType::Sub, &answer, Limits::default(), 64).await;
        result.expect("handshake");
    }

    #[tokio::test]
    async fn short_long_and_long_encoded_short_frames_are_received() {
        let (mut reader, _writer, mut peer) = connected(Limits::default(), 1 << 16).await;
        let big = vec![7u8; 300];
        peer.send(&frame(0, b"hi")).await;
        peer.send(&frame(0, &big)).await;
        let mut long_small = long_header(0, 5);
        long_small.extend_from_slice(b"hello");
        peer.send(&long_small).await;
        peer.send(&frame(0, b"")).await;
        assert_eq!(
            strings(&recv_now(&mut reader).await.expect("ok").expect("msg")),
            [b"hi"]
        );
        assert_eq!(
            strings(&recv_now(&mut reader).await.expect("ok").expect("msg")),
            [&big[..]]
        );
        assert_eq!(
            strings(&recv_now(&mut reader).await.expect("ok").expect("msg")),
            [b"hello"]
        );
        assert_eq!(
            strings(&recv_now(&mut reader).await.expect("ok").expect("msg")),
            [b""]
        );
    }

    #[tokio::test]
    async fn multipart_messages_are_assembled_and_commands_skipped() {
        let (mut reader, _writer, mut peer) = connected(Limits::default(), 1 << 16).await;
        let mut bytes = ping();
        bytes.extend(frame(MORE, b"id"));
        bytes.extend(ping());
        bytes.extend(frame(MORE, b""));
        bytes.extend(long_header(COMMAND, 5));
        bytes.extend(b"\x04PONG");
        bytes.extend(frame(0, &[1u8; 1000]));
        bytes.extend(ping());
        bytes.extend(message(&[b"second"]));
        peer.send(&bytes).await;
        let first = recv_now(&mut reader).await.expect("ok").expect("message");
        assert_eq!(strings(&first), [&b"id"[..], b"", &[1u8; 1000]]);
        let second = recv_now(&mut reader).await.expect("ok").expect("message");
        assert_eq!(strings(&second), [b"second"]);
        drop(peer);
        assert!(recv_now(&mut reader).await.expect("clean end").is_none());
    }

    #[tokio::test]
    async fn recv_is_cancel_safe_at_every_byte() {
        let (mut reader, _writer, mut peer) = connected(Limits::default(), 1 << 16).await;
        let mut bytes = frame(MORE, b"id");
        bytes.extend(ping());
        bytes.extend(frame(MORE, &[2u8; 300]));
        bytes.extend(frame(0, b"end"));
        let mut received = Vec::new();
        for byte in &bytes {
            peer.send(&[*byte]).await;
            // Polls once: takes what is there, then is dropped mid-message.
            if let Some(result) = reader.recv().now_or_never() {
                received.push(result.expect("ok").expect("message"));
            }
        }
        assert_eq!(
            received.len(),
            1,
            "exactly one message, after its last byte"
        );
        assert_eq!(strings(&received[0]), [&b"id"[..], &[2u8; 300], b"end"]);
    }

    #[tokio::test]
    async fn a_frame_buffer_grows_only_as_bytes_arrive() {
        let (mut reader, _writer, mut peer) = connected(Limits::default(), 64).await;
        let mut bytes = long_header(0, 15 << 20);
        bytes.extend([9u8; 10]);
        peer.send(&bytes).await;
        assert!(reader.recv().now_or_never().is_none(), "waits for the rest");
        match &reader.frame {
            Some(Frame { body, size, .. }) => {
                assert_eq!((body.len(), *size), (10, 15 << 20));
                assert!(body.capacity() <= INITIAL_FRAME_CAPACITY);
            }
            _ => panic!("a data frame is under way"),
        }
        drop(peer);
        let error = recv_now(&mut reader).await.expect_err("truncated");
        assert!(
            matches!(error, ZmtpError::UnexpectedEof { during: "a frame" }),
            "{error:?}"
        );
    }

    /// The peer sends only the header; the pipe holds 16 bytes, so no body can be waiting.
    async fn refused_from_header(announced: u64) -> ZmtpError {
        let (mut reader, _writer, mut peer) = connected(Limits::default(), 16).await;
        peer.send(&long_header(0, announced)).await;
        let error = recv_now(&mut reader).await.expect_err("refused");
        assert!(error.is_limit_exceeded(), "{error:?}");
        assert!(matches!(
            recv_now(&mut reader).await,
            Err(ZmtpError::Broken)
        ));
        error
    }

    #[tokio::test]
    async fn a_2_pow_62_byte_frame_is_refused_from_its_header() {
        let error = refused_from_header(1 << 62).await;
        assert!(
            matches!(error, ZmtpError::FrameTooLarge { announced, limit } if announced == 1 << 62 && limit == 16 << 20),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_300_mb_frame_is_refused_from_its_header() {
        let error = refused_from_header(300_000_000).await;
        assert!(
            matches!(
                error,
                ZmtpError::FrameTooLarge {
                    announced: 300_000_000,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn frame_limit_is_inclusive() {
        let (mut reader, _writer, mut peer) = connected(limits(300, 300, 4), 1 << 16).await;
        peer.send(&frame(0, &[0; 300])).await;
        assert_eq!(
            recv_now(&mut reader).await.expect("ok").expect("msg")[0].len(),
            300
        );
        peer.send(&long_header(0, 301)).await;
        let error = recv_now(&mut reader).await.expect_err("refused");
        assert!(
            matches!(
                error,
                ZmtpError::FrameTooLarge {
                    announced: 301,
                    limit: 300
                }
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn message_total_is_limited_before_the_frame_that_breaks_it_arrives() {
        let (mut reader, _writer, mut peer) = connected(limits(100, 150, 8), 1 << 16).await;
        peer.send(&message(&[&[0; 100], &[0; 50]])).await;
        assert_eq!(
            recv_now(&mut reader).await.expect("ok").expect("msg").len(),
            2
        );
        peer.send(&frame(MORE, &[0; 100])).await;
        peer.send(&[0, 51]).await;
        let error = recv_now(&mut reader).await.expect_err("refused");
        assert!(error.is_limit_exceeded());
        assert!(
            matches!(
                error,
                ZmtpError::MessageTooLarge {
                    announced: 151,
                    limit: 150
                }
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn too_many_parts_are_refused() {
        let (mut reader, _writer, mut peer) = connected(limits(100, 1000, 3), 1 << 16).await;
        peer.send(&message(&[b"a", b"b", b"c"])).await;
        assert_eq!(
            recv_now(&mut reader).await.expect("ok").expect("msg").len(),
            3
        );
        for part in [b"a", b"b", b"c"] {
            peer.send(&frame(MORE, part)).await;
        }
        peer.send(&[0, 1]).await;
        let error = recv_now(&mut reader).await.expect_err("refused");
        assert!(error.is_limit_exceeded());
        assert!(
            matches!(error, ZmtpError::TooManyParts { limit: 3 }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn oversized_commands_are_refused_too() {
        let (mut reader, _writer, mut peer) = connected(Limits::default(), 16).await;
        peer.send(&long_header(COMMAND, 1 << 20)).await;
        let error = recv_now(&mut reader).await.expect_err("refused");
        assert!(
            matches!(
                error,
                ZmtpError::FrameTooLarge {
                    announced: 1_048_576,
                    limit: MAX_COMMAND_BYTES
                }
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn end_of_stream_inside_a_message_is_an_error() {
        let cases: [(&[u8], &str); 4] = [
            (&[0, 10, 1, 2, 3, 4], "a frame"),
            (&[LONG, 0, 0, 0], "a frame"),
            (&[MORE, 1, b'a'], "a message"),
            (&[COMMAND, 10, 4, b'P'], "a frame"),
        ];
        for (bytes, during) in cases {
            let (mut reader, _writer, mut peer) = connected(Limits::default(), 1 << 16).await;
            peer.send(bytes).await;
            drop(peer);
            let error = recv_now(&mut reader).await.expect_err("truncated");
            assert!(
                matches!(error, ZmtpError::UnexpectedEof { during: d } if d == during),
                "{bytes:?}: {error:?}"
            );
        }
    }

    #[tokio::test]
    async fn malformed_frames_are_protocol_violations() {
        for bytes in [&[0x08u8, 0][..], &[COMMAND | MORE, 0]] {
            let (mut reader, _writer, mut peer) = connected(Limits::default(), 1 << 16).await;
            peer.send(bytes).await;
            let error = recv_now(&mut reader).await.expect_err("refused");
            assert!(matches!(error, ZmtpError::Protocol { .. }), "{error:?}");
            assert!(!error.is_limit_exceeded());
        }
    }

    #[tokio::test]
    async fn an_error_command_ends_the_handshake_with_its_reason() {
        let mut answer = greeting(3, 0, b"NULL");
        answer.extend(frame(COMMAND, b"\x05ERROR\x0enot allowed \xFF!"));
        let error = handshake_error(SocketType::Dealer, &answer).await;
        assert!(
            matches!(&error, ZmtpError::PeerError { reason } if reason == "not allowed \u{FFFD}!"),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_wrong_signature_is_refused() {
        let mut answer = router_answer();
        answer[0] = b'G';
        let error = handshake_error(SocketType::Dealer, &answer).await;
        assert!(matches!(error, ZmtpError::BadSignature), "{error:?}");
    }

    #[tokio::test]
    async fn an_older_peer_is_refused_from_its_first_12_bytes() {
        // A ZMTP 2.0 peer's greeting is shorter than 64 bytes: do not wait for the rest.
        let error = handshake_error(SocketType::Dealer, &greeting(1, 0, b"")[..12]).await;
        assert!(
            matches!(error, ZmtpError::UnsupportedVersion { major: 1, minor: 0 }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn the_curve_mechanism_is_refused() {
        let error = handshake_error(SocketType::Dealer, &greeting(3, 0, b"CURVE")).await;
        assert!(
            matches!(&error, ZmtpError::UnsupportedMechanism { mechanism } if mechanism == "CURVE"),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "peer wants security mechanism \"CURVE\", only NULL is supported"
        );
    }

    #[tokio::test]
    async fn a_sub_refuses_a_router() {
        let error = handshake_error(SocketType::Sub, &router_answer()).await;
        assert!(
            matches!(&error, ZmtpError::IncompatibleSocketType { ours: SocketType::Sub, peer } if peer == "ROUTER"),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn malformed_ready_commands_are_refused() {
        let mut bad_length = b"\x05READY\x0bSocket-Type".to_vec();
        bad_length.extend(u32::MAX.to_be_bytes());
        bad_length.extend(b"ROUTER");
        let cases: [Vec<u8>; 5] = [
            frame(COMMAND, &bad_length),
            frame(COMMAND, b"\x05READY"),
            frame(COMMAND, b"\x09READY"),
            frame(COMMAND, b"\x04PING\x00\x01"),
            frame(0, b"\x05READY"),
        ];
        for case in cases {
            let mut answer = greeting(3, 0, b"NULL");
            answer.extend(&case);
            let error = handshake_error(SocketType::Dealer, &answer).await;
            assert!(
                matches!(error, ZmtpError::Protocol { .. }),
                "{case:?}: {error:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_ready_is_refused_from_its_header() {
        let mut answer = greeting(3, 0, b"NULL");
        answer.extend(long_header(COMMAND, 1 << 40));
        let error = handshake_error(SocketType::Dealer, &answer).await;
        assert!(error.is_limit_exceeded(), "{error:?}");
    }

    #[tokio::test]
    async fn end_of_stream_in_the_greeting_is_reported() {
        let (our_read, mut to_us) = duplex(64);
        let (_from_us, our_write) = duplex(1024);
        to_us
            .write_all(&router_answer()[..30])
            .await
            .expect("write");
        drop(to_us);
        let error = handshake(our_read, our_write, SocketType::Dealer, Limits::default())
            .await
            .err()
            .expect("fails");
        assert!(
            matches!(
                error,
                ZmtpError::UnexpectedEof {
                    during: "the greeting"
                }
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn send_frames_messages_exactly() {
        let (_reader, mut writer, mut peer) = connected(Limits::default(), 1 << 16).await;
        writer
            .send(&[Bytes::from_static(b"a"), Bytes::from_static(b"bc")])
            .await
            .expect("send");
        let mut bytes = [0; 7];
        peer.from_us.read_exact(&mut bytes).await.expect("read");
        assert_eq!(&bytes, b"\x01\x01a\x00\x02bc");

        let big = Bytes::from(vec![5u8; 200_000]);
        let parts = [
            Bytes::from_static(b"id"),
            Bytes::new(),
            Bytes::from(vec![3u8; 300]),
            big.clone(),
            Bytes::from_static(b"tail"),
        ];
        writer.send(&parts).await.expect("send");
        let received = peer.read_message().await;
        assert_eq!(
            received,
            parts.iter().map(|part| part.to_vec()).collect::<Vec<_>>()
        );
        writer.send(&[]).await.expect("nothing to send");
    }

    #[tokio::test]
    async fn subscribe_sends_a_zmtp_3_0_subscription() {
        let (result, mut peer) =
            start(SocketType::Sub, &pub_answer(), Limits::default(), 1024).await;
        let (_reader, mut writer) = result.expect("handshake");
        writer.subscribe(b"kb").await.expect("subscribe");
        writer.subscribe(b"").await.expect("subscribe to all");
        let mut greeting = [0; 64];
        peer.from_us
            .read_exact(&mut greeting)
            .await
            .expect("greeting");
        peer.read_frame().await;
        let mut bytes = [0; 8];
        peer.from_us.read_exact(&mut bytes).await.expect("read");
        assert_eq!(&bytes, b"\x00\x03\x01kb\x00\x01\x01");
    }

    #[tokio::test]
    async fn a_send_abandoned_half_way_breaks_the_writer() {
        let (our_read, _to_us) = duplex(1024);
        let (_from_us, our_write) = duplex(1024);
        let mut writer = ZmtpWriter {
            inner: our_write,
            broken: false,
        };
        let _reader = our_read;
        let stuck = timeout(
            Duration::from_millis(50),
            writer.send(&[Bytes::from(vec![0u8; 4096])]),
        )
        .await;
        assert!(stuck.is_err(), "the pipe is full");
        let error = writer
            .send(&[Bytes::from_static(b"x")])
            .await
            .expect_err("broken");
        assert!(matches!(error, ZmtpError::Broken), "{error:?}");
    }

    #[tokio::test]
    async fn futures_are_send_so_they_can_be_spawned() {
        fn send<T: Send>(_: T) {}
        let (mut reader, mut writer, _peer) = connected(Limits::default(), 64).await;
        send(reader.recv());
        send(writer.send(&[]));
        send(writer.subscribe(b""));
        let ((a, _), (_, b)) = (duplex(1), duplex(1));
        send(handshake(a, b, SocketType::Sub, Limits::default()));
    }

    /// Against real libzmq (pyzmq): a ROUTER that echoes and a PUB that ticks, on unix sockets.
    mod libzmq {
        use std::process::Stdio;

        use tokio::io::AsyncBufReadExt;
        use tokio::net::UnixStream;
        use tokio::process::Command;

        use super::*;

        /// Binds `shell` (ROUTER, echoes every message to its sender; `stop` ends the program)
        /// and `iopub` (PUB, publishes an `other` and a 3-part `kb.tick` message every 5 ms) in
        /// the directory given as its argument, then prints `ready`.
        const PEER: &str = r#"
import sys, time, zmq
d = sys.argv[1]
ctx = zmq.Context()
shell = ctx.socket(zmq.ROUTER)
shell.bind(f"ipc://{d}/shell")
iopub = ctx.socket(zmq.PUB)
iopub.bind(f"ipc://{d}/iopub")
print("ready", zmq.zmq_version(), flush=True)
deadline = time.monotonic() + 60
seq = 0
while time.monotonic() < deadline:
    if shell.poll(5):
        message = shell.recv_multipart()
        shell.send_multipart(message)
        if message[1:] == [b"stop"]:
            break
    iopub.send_multipart([b"other", b"%d" % seq])
    iopub.send_multipart([b"kb.tick", b"%d" % seq, b"x" * 300])
    seq += 1
"#;

        fn pyzmq_available() -> bool {
            std::process::Command::new("python3")
                .args(["-c", "import zmq"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        }

        async fn connect(
            path: &std::path::Path,
            socket_type: SocketType,
        ) -> (
            ZmtpReader<tokio::net::unix::OwnedReadHalf>,
            ZmtpWriter<tokio::net::unix::OwnedWriteHalf>,
        ) {
            let stream = UnixStream::connect(path).await.expect("connect");
            let (read, write) = stream.into_split();
            timeout(SOON, handshake(read, write, socket_type, Limits::default()))
                .await
                .expect("handshake in time")
                .expect("handshake")
        }

        #[tokio::test]
        async fn dealer_and_sub_talk_to_libzmq() {
            if !pyzmq_available() {
                eprintln!("skipping the libzmq interop test: `python3 -c \"import zmq\"` fails");
                return;
            }
            let dir = tempfile::tempdir().expect("temp dir");
            let mut peer = Command::new("python3")
                .arg("-c")
                .arg(PEER)
                .arg(dir.path())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("python3 starts");
            let stdout = peer.stdout.take().expect("stdout");
            let mut line = String::new();
            timeout(SOON, tokio::io::BufReader::new(stdout).read_line(&mut line))
                .await
                .expect("peer ready in time")
                .expect("read ready line");
            assert!(line.starts_with("ready"), "{line:?}");
            eprintln!(
                "libzmq interop against libzmq {}",
                line.trim_start_matches("ready").trim()
            );

            let (mut shell_rx, mut shell_tx) =
                connect(&dir.path().join("shell"), SocketType::Dealer).await;
            let parts = [
                Bytes::from_static(b"hello"),
                Bytes::new(),
                Bytes::from(vec![7u8; 300]),
                Bytes::from(vec![9u8; 1 << 20]),
            ];
            for _ in 0..3 {
                shell_tx.send(&parts).await.expect("send");
                let echo = timeout(SOON, shell_rx.recv()).await.expect("echo in time");
                assert_eq!(echo.expect("recv").expect("a message"), parts);
            }

            let (mut iopub_rx, mut iopub_tx) =
                connect(&dir.path().join("iopub"), SocketType::Sub).await;
            iopub_tx.subscribe(b"kb").await.expect("subscribe");
            for _ in 0..5 {
                let message = timeout(SOON, iopub_rx.recv())
                    .await
                    .expect("a tick in time")
                    .expect("recv")
                    .expect("a message");
                assert_eq!(message.len(), 3, "{message:?}");
                assert_eq!(
                    &message[0][..],
                    b"kb.tick",
                    "PUB filters by our subscription"
                );
                assert_eq!(&message[2][..], &[b'x'; 300][..]);
            }

            shell_tx
                .send(&[Bytes::from_static(b"stop")])
                .await
                .expect("stop");
            let echo = timeout(SOON, shell_rx.recv()).await.expect("stop echoed");
            assert_eq!(
                echo.expect("recv").expect("a message"),
                [Bytes::from_static(b"stop")]
            );
            let status = timeout(SOON, peer.wait())
                .await
                .expect("peer exits")
                .expect("wait");
            assert!(status.success(), "{status}");
            let end = timeout(SOON, shell_rx.recv())
                .await
                .expect("end of stream in time");
            assert!(end.expect("clean end").is_none());
        }
    }
}
