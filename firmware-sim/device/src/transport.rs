//! The device's wire: length-prefixed postcard frames over a Unix socket or TCP.
//!
//! A frame is a 4-byte little-endian body length followed by the body. A connection opens
//! with [`Message::Hello`], naming the application (one library instance) it belongs to; then
//! each message gets one reply, in order. A malformed or oversized frame ends that connection
//! only.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use firmware_sim_core::{Command, Error as Ckr, Response};
use serde::{Deserialize, Serialize};

use crate::device::{Admin, Device, Status};
use crate::error::{Error, Result};

/// The largest frame body accepted (a 1 MiB random request plus framing fits).
pub const MAX_FRAME: usize = 4 << 20;
/// The protocol version a client announces.
pub const VERSION: u16 = 1;

/// A client's message.
#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    /// The first message: who is calling.
    Hello {
        /// The protocol version.
        version: u16,
        /// The application (library instance) this connection belongs to.
        app: u64,
    },
    /// A firmware command.
    Command(Command),
    /// An operator request.
    Admin(Admin),
}

/// The device's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The connection is accepted.
    Welcome {
        /// The device's profile.
        profile: String,
    },
    /// A command's result.
    Command(std::result::Result<Response, Ckr>),
    /// An operator request's result.
    Admin(std::result::Result<Status, Ckr>),
    /// The message could not be handled; the connection closes.
    Refused(String),
}

/// Writes one frame, length and body in a single write.
pub fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> Result<()> {
    // Frames carry plaintexts and PINs: the encoded copy is wiped once written.
    let mut frame = zeroize::Zeroizing::new(vec![0u8; 4]);
    postcard::to_io(value, &mut *frame).map_err(|e| Error::Protocol(e.to_string()))?;
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(Error::Protocol(format!("frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    let len = u32::try_from(len).map_err(|_| Error::Protocol("frame too large".into()))?;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame; `None` at a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(Error::Protocol(format!("frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    let mut body = zeroize::Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body).map(Some).map_err(|e| Error::Protocol(format!("bad frame: {e}")))
}

/// Serves one connection until it closes or misbehaves.
pub fn serve_connection<S: Read + Write>(device: &Device, stream: S) -> Result<()> {
    let mut stream = BufReader::new(stream);
    let app = match read_frame::<Message>(&mut stream)? {
        Some(Message::Hello { version: VERSION, app }) => app,
        Some(Message::Hello { version, .. }) => {
            let why = format!(
                "protocol version {version} is not supported (this device speaks {VERSION})"
            );
            write_frame(stream.get_mut(), &Reply::Refused(why.clone()))?;
            return Err(Error::Protocol(why));
        }
        Some(_) => {
            let why = "the first message must be Hello".to_owned();
            write_frame(stream.get_mut(), &Reply::Refused(why.clone()))?;
            return Err(Error::Protocol(why));
        }
        None => return Ok(()),
    };
    device.attach(app);
    let result = (|| {
        write_frame(stream.get_mut(), &Reply::Welcome { profile: device.profile().name.clone() })?;
        while let Some(message) = read_frame::<Message>(&mut stream)? {
            let reply = match message {
                Message::Command(command) => Reply::Command(device.execute(app, command)),
                Message::Admin(request) => Reply::Admin(device.admin(request)),
                Message::Hello { .. } => Reply::Refused("Hello sent twice".into()),
            };
            write_frame(stream.get_mut(), &reply)?;
        }
        Ok(())
    })();
    device.detach(app);
    result
}

/// Where the device listens.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(std::path::PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Endpoint> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(path.into()));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            return addr
                .parse()
                .map(Endpoint::Tcp)
                .map_err(|e| Error::Config(format!("{addr:?} is not host:port: {e}")));
        }
        Err(Error::Config(format!("{s:?}: an endpoint is unix:/path or tcp:host:port")))
    }
}

/// Accepts connections on a Unix socket, a thread each, until `stop` is set.
pub fn serve_unix(device: Arc<Device>, listener: UnixListener, stop: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match stream {
            Ok(stream) => spawn_connection(&device, stream),
            Err(e) => tracing::warn!(error = %e, "accept failed"),
        }
    }
}

/// Accepts TCP connections, a thread each, until `stop` is set.
pub fn serve_tcp(device: Arc<Device>, listener: TcpListener, stop: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match stream {
            Ok(stream) => {
                // Small frames, one at a time: Nagle would add 40 ms to each reply.
                let _ = stream.set_nodelay(true);
                spawn_connection(&device, stream);
            }
            Err(e) => tracing::warn!(error = %e, "accept failed"),
        }
    }
}

fn spawn_connection<S: Read + Write + Send + 'static>(device: &Arc<Device>, stream: S) {
    let device = Arc::clone(device);
    let spawned = std::thread::Builder::new().name("fwsim-conn".into()).spawn(move || {
        if let Err(e) = serve_connection(&device, stream) {
            tracing::info!(error = %e, "connection closed");
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a connection thread");
    }
}

/// One client connection to a device.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
}

#[derive(Debug)]
enum Stream {
    Unix(BufReader<UnixStream>),
    Tcp(BufReader<TcpStream>),
}

impl Connection {
    /// Connects to `endpoint` as application `app`.
    pub fn open(endpoint: &Endpoint, app: u64, timeout: Duration) -> Result<Connection> {
        let stream = match endpoint {
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(timeout))?;
                Stream::Unix(BufReader::new(s))
            }
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, timeout)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(timeout))?;
                Stream::Tcp(BufReader::new(s))
            }
        };
        let mut connection = Connection { stream };
        match connection.call(&Message::Hello { version: VERSION, app })? {
            Reply::Welcome { .. } => Ok(connection),
            Reply::Refused(why) => Err(Error::Protocol(why)),
            other => Err(Error::Protocol(format!("unexpected answer to Hello: {other:?}"))),
        }
    }

    /// Sends one message and waits for its reply.
    pub fn call(&mut self, message: &Message) -> Result<Reply> {
        let reply = match &mut self.stream {
            Stream::Unix(s) => {
                write_frame(s.get_mut(), message)?;
                read_frame(s)?
            }
            Stream::Tcp(s) => {
                write_frame(s.get_mut(), message)?;
                read_frame(s)?
            }
        };
        reply.ok_or_else(|| Error::Protocol("the device closed the connection".into()))
    }

    /// Runs a firmware command.
    pub fn command(&mut self, command: Command) -> Result<std::result::Result<Response, Ckr>> {
        match self.call(&Message::Command(command))? {
            Reply::Command(result) => Ok(result),
            other => Err(Error::Protocol(format!("unexpected answer: {other:?}"))),
        }
    }

    /// Sends an operator request.
    pub fn admin(&mut self, request: Admin) -> Result<std::result::Result<Status, Ckr>> {
        match self.call(&Message::Admin(request))? {
            Reply::Admin(result) => Ok(result),
            other => Err(Error::Protocol(format!("unexpected answer: {other:?}"))),
        }
    }
}

/// Binds a Unix socket, replacing a stale socket file left by a previous run.
pub fn bind_unix(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::Config(format!("{} is in use by a running device", path.display())));
        }
        std::fs::remove_file(path).map_err(crate::error::file_error(path))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(crate::error::file_error(dir))?;
    }
    UnixListener::bind(path).map_err(crate::error::file_error(path))
}
