//! Framing: the fixed header and the batch bodies, as a pure synchronous codec.
//!
//! Header (20 bytes, little-endian): magic `HSMP`, version major, version minor, flags (bit 0:
//! response; the others must be zero), request id (u64), body length (u32). The receiver checks
//! the header, body length included, before it reads or allocates the body.
//!
//! Request body: `timeout_ms: u32`, `count: u32`, then `count` times
//! `{ op code: u16, length: u32, postcard parameters }`.
//! Response body: frame `status: u16`, `count: u32`, then `count` times
//! `{ status: u16, length: u32, postcard reply (empty unless status is Ok) }`.
//! Each operation is length-delimited so that one unknown or malformed operation fails alone.

use crate::op::{OpCode, Reply, Request};
use crate::{Outcome, Status};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"HSMP";
/// Protocol major version: a peer with another major version is refused.
pub const VERSION_MAJOR: u8 = 1;
/// Protocol minor version: grows when operations are added; older minors stay accepted.
pub const VERSION_MINOR: u8 = 0;
/// Size of the fixed header.
pub const HEADER_BYTES: usize = 20;
/// Default largest body: 1 MiB holds a batch of 40 maximum-size (25 kB) Barbican payloads.
pub const DEFAULT_MAX_BODY_BYTES: u32 = 1024 * 1024;
/// Default largest number of operations in one frame.
pub const DEFAULT_MAX_BATCH_OPS: u32 = 1024;

const FLAG_RESPONSE: u16 = 0x0001;
const KNOWN_FLAGS: u16 = FLAG_RESPONSE;
/// Bytes of per-operation framing: code or status (u16) and length (u32).
const ENTRY_OVERHEAD: usize = 6;

/// Which way a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Appliance to proxy.
    Request,
    /// Proxy to appliance.
    Response,
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Request or response.
    pub kind: FrameKind,
    /// Chosen by the client; the response carries the same id.
    pub request_id: u64,
    /// Length of the body that follows.
    pub body_len: u32,
}

/// A header that was refused, and the request id when it could be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameError {
    /// Why.
    pub status: Status,
    /// The request id, if the magic was right (so the peer can match the refusal).
    pub request_id: Option<u64>,
}

impl Header {
    /// The 20 header bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let flags = match self.kind {
            FrameKind::Request => 0,
            FrameKind::Response => FLAG_RESPONSE,
        };
        let mut out = [0u8; HEADER_BYTES];
        let mut w = Writer(&mut out[..]);
        w.put(&MAGIC);
        w.put(&[VERSION_MAJOR, VERSION_MINOR]);
        w.put(&flags.to_le_bytes());
        w.put(&self.request_id.to_le_bytes());
        w.put(&self.body_len.to_le_bytes());
        out
    }

    /// Checks and decodes a header; `max_body` bounds `body_len`.
    pub fn decode(bytes: &[u8; HEADER_BYTES], max_body: u32) -> Result<Header, FrameError> {
        let mut r = Reader::new(bytes);
        let refuse = |status, request_id| FrameError { status, request_id };
        let malformed = refuse(Status::MalformedFrame, None);
        if r.take(4).ok_or(malformed)? != MAGIC {
            return Err(malformed);
        }
        let major = r.u8().ok_or(malformed)?;
        let _minor = r.u8().ok_or(malformed)?;
        let flags = r.u16().ok_or(malformed)?;
        let request_id = r.u64().ok_or(malformed)?;
        let body_len = r.u32().ok_or(malformed)?;
        if major != VERSION_MAJOR {
            return Err(refuse(Status::UnsupportedVersion, Some(request_id)));
        }
        if flags & !KNOWN_FLAGS != 0 {
            return Err(refuse(Status::MalformedFrame, Some(request_id)));
        }
        if body_len > max_body {
            return Err(refuse(Status::FrameTooLarge, Some(request_id)));
        }
        let kind =
            if flags & FLAG_RESPONSE != 0 { FrameKind::Response } else { FrameKind::Request };
        Ok(Header { kind, request_id, body_len })
    }
}

/// A batch of operations, as sent by the client.
#[derive(Debug)]
pub struct RequestBatch;

impl RequestBatch {
    /// Encodes a whole request frame (header and body) for `ops`.
    pub fn encode_frame(request_id: u64, timeout_ms: u32, ops: &[Request]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + 8 + ops.len() * 64);
        out.extend_from_slice(&[0u8; HEADER_BYTES]);
        out.extend_from_slice(&timeout_ms.to_le_bytes());
        out.extend_from_slice(&len_u32(ops.len()).to_le_bytes());
        for op in ops {
            let start = out.len();
            out.extend_from_slice(&op.code().code().to_le_bytes());
            out.extend_from_slice(&[0u8; 4]);
            // Our own types always encode; a failure would leave an empty entry, which the
            // receiver refuses as malformed rather than misreading.
            let _ = op.encode_into(&mut out);
            patch_len(&mut out, start);
        }
        finish_frame(out, FrameKind::Request, request_id)
    }

    /// Decodes a request body: the timeout and each operation (or why it cannot be read).
    ///
    /// A structurally broken body (truncated, too many operations, trailing bytes) fails as a
    /// whole; an unknown or malformed operation fails alone.
    pub fn decode(body: &[u8], max_ops: u32) -> Result<(u32, Vec<Outcome<Request>>), Status> {
        let mut r = Reader::new(body);
        let timeout_ms = r.u32().ok_or(Status::MalformedFrame)?;
        let count = r.u32().ok_or(Status::MalformedFrame)?;
        if count > max_ops {
            return Err(Status::TooManyOperations);
        }
        // Every entry takes at least its framing, so a count the body cannot hold is refused
        // before anything is allocated for it.
        if usize_of(count).saturating_mul(ENTRY_OVERHEAD) > r.remaining() {
            return Err(Status::MalformedFrame);
        }
        let mut ops = Vec::with_capacity(usize_of(count));
        for _ in 0..count {
            let code = r.u16().ok_or(Status::MalformedFrame)?;
            let len = r.u32().ok_or(Status::MalformedFrame)?;
            let bytes = r.take(usize_of(len)).ok_or(Status::MalformedFrame)?;
            ops.push(match OpCode::from_code(code) {
                Some(code) => Request::decode(code, bytes),
                None => Err(Status::UnknownOperation),
            });
        }
        if r.remaining() != 0 {
            return Err(Status::MalformedFrame);
        }
        Ok((timeout_ms, ops))
    }
}

/// A decoded response body whose replies are still postcard bytes: the frame status, and per
/// operation its reply bytes or its status.
pub type RawResponse<'a> = (Status, Vec<Outcome<&'a [u8]>>);

/// The results of a batch, as sent by the proxy.
#[derive(Debug)]
pub struct ResponseBatch;

impl ResponseBatch {
    /// Encodes a whole response frame with one outcome per operation.
    pub fn encode_frame(request_id: u64, results: &[Outcome<Reply>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + 6 + results.len() * 64);
        out.extend_from_slice(&[0u8; HEADER_BYTES]);
        out.extend_from_slice(&Status::Ok.code().to_le_bytes());
        out.extend_from_slice(&len_u32(results.len()).to_le_bytes());
        for result in results {
            let start = out.len();
            out.extend_from_slice(&Status::Ok.code().to_le_bytes());
            out.extend_from_slice(&[0u8; 4]);
            let status = match result {
                Ok(reply) => match reply.encode_into(&mut out) {
                    Ok(()) => Status::Ok,
                    Err(status) => status,
                },
                Err(status) => *status,
            };
            if status != Status::Ok {
                out.truncate(start + ENTRY_OVERHEAD);
                write_at(&mut out, start, &status.code().to_le_bytes());
            }
            patch_len(&mut out, start);
        }
        finish_frame(out, FrameKind::Response, request_id)
    }

    /// Encodes a response frame that refuses the whole request.
    pub fn encode_refusal(request_id: u64, status: Status) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + 6);
        out.extend_from_slice(&[0u8; HEADER_BYTES]);
        out.extend_from_slice(&status.code().to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        finish_frame(out, FrameKind::Response, request_id)
    }

    /// Decodes a response body into the frame status and each operation's reply bytes.
    pub fn decode(body: &[u8]) -> Result<RawResponse<'_>, Status> {
        let mut r = Reader::new(body);
        let frame_status = Status::from_code(r.u16().ok_or(Status::MalformedFrame)?);
        let count = r.u32().ok_or(Status::MalformedFrame)?;
        if usize_of(count).saturating_mul(ENTRY_OVERHEAD) > r.remaining() {
            return Err(Status::MalformedFrame);
        }
        let mut results = Vec::with_capacity(usize_of(count));
        for _ in 0..count {
            let status = Status::from_code(r.u16().ok_or(Status::MalformedFrame)?);
            let len = r.u32().ok_or(Status::MalformedFrame)?;
            let bytes = r.take(usize_of(len)).ok_or(Status::MalformedFrame)?;
            results.push(if status == Status::Ok { Ok(bytes) } else { Err(status) });
        }
        if r.remaining() != 0 {
            return Err(Status::MalformedFrame);
        }
        Ok((frame_status, results))
    }

    /// Decodes a response body, each reply typed by the operation it answers.
    pub fn decode_replies(
        body: &[u8],
        codes: &[OpCode],
    ) -> Result<(Status, Vec<Outcome<Reply>>), Status> {
        let (status, raw) = Self::decode(body)?;
        if status == Status::Ok && raw.len() != codes.len() {
            return Err(Status::MalformedFrame);
        }
        let replies = raw
            .into_iter()
            .zip(codes)
            .map(|(r, code)| r.and_then(|bytes| Reply::decode(*code, bytes)))
            .collect();
        Ok((status, replies))
    }
}

fn finish_frame(mut out: Vec<u8>, kind: FrameKind, request_id: u64) -> Vec<u8> {
    let body_len = len_u32(out.len().saturating_sub(HEADER_BYTES));
    let header = Header { kind, request_id, body_len }.encode();
    write_at(&mut out, 0, &header);
    out
}

/// Writes the length of the entry that starts at `start` into its length field.
fn patch_len(out: &mut [u8], start: usize) {
    let len = len_u32(out.len().saturating_sub(start + ENTRY_OVERHEAD));
    write_at(out, start + 2, &len.to_le_bytes());
}

fn write_at(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Lengths we write are bounded by the frame limits, far below `u32::MAX`.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn usize_of(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Bounds-checked little-endian reads: every read of peer bytes goes through here.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
}

struct Writer<'a>(&'a mut [u8]);

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let buf = core::mem::take(&mut self.0);
        let (head, tail) = buf.split_at_mut(bytes.len().min(buf.len()));
        head.copy_from_slice(bytes.get(..head.len()).unwrap_or_default());
        self.0 = tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Random, Signature};

    fn header_bytes(frame: &[u8]) -> [u8; HEADER_BYTES] {
        frame[..HEADER_BYTES].try_into().unwrap()
    }

    #[test]
    fn header_round_trip() {
        let h =
            Header { kind: FrameKind::Response, request_id: 0x0102_0304_0506_0708, body_len: 9 };
        let bytes = h.encode();
        assert_eq!(&bytes[..4], b"HSMP");
        assert_eq!(Header::decode(&bytes, 100), Ok(h));
    }

    #[test]
    fn header_checks() {
        let good = Header { kind: FrameKind::Request, request_id: 7, body_len: 100 }.encode();
        let mut bad_magic = good;
        bad_magic[0] = b'X';
        assert_eq!(
            Header::decode(&bad_magic, 1000),
            Err(FrameError { status: Status::MalformedFrame, request_id: None })
        );
        let mut bad_version = good;
        bad_version[4] = 2;
        assert_eq!(
            Header::decode(&bad_version, 1000),
            Err(FrameError { status: Status::UnsupportedVersion, request_id: Some(7) })
        );
        let mut newer_minor = good;
        newer_minor[5] = 9;
        assert!(Header::decode(&newer_minor, 1000).is_ok());
        let mut bad_flags = good;
        bad_flags[6] = 0x80;
        assert_eq!(Header::decode(&bad_flags, 1000).unwrap_err().status, Status::MalformedFrame);
        assert_eq!(
            Header::decode(&good, 99),
            Err(FrameError { status: Status::FrameTooLarge, request_id: Some(7) })
        );
    }

    #[test]
    fn request_batch_round_trip() {
        let ops = vec![Request::Random(Random { len: 3 }), Request::Random(Random { len: 4 })];
        let frame = RequestBatch::encode_frame(42, 1500, &ops);
        let header = Header::decode(&header_bytes(&frame), u32::MAX).unwrap();
        assert_eq!(header.request_id, 42);
        assert_eq!(header.kind, FrameKind::Request);
        let body = &frame[HEADER_BYTES..];
        assert_eq!(header.body_len as usize, body.len());
        let (timeout, decoded) = RequestBatch::decode(body, 16).unwrap();
        assert_eq!(timeout, 1500);
        assert_eq!(decoded, ops.into_iter().map(Ok).collect::<Vec<_>>());
        assert_eq!(RequestBatch::decode(body, 1), Err(Status::TooManyOperations));
    }

    #[test]
    fn unknown_and_malformed_operations_fail_alone() {
        let ops = vec![Request::Random(Random { len: 3 })];
        let mut frame = RequestBatch::encode_frame(1, 0, &ops);
        // Append an entry with an unknown code and one with garbage parameters.
        frame.extend_from_slice(&999u16.to_le_bytes());
        frame.extend_from_slice(&1u32.to_le_bytes());
        frame.push(0);
        frame.extend_from_slice(&OpCode::Random.code().to_le_bytes());
        frame.extend_from_slice(&6u32.to_le_bytes());
        frame.extend_from_slice(&[0xff; 6]);
        frame[HEADER_BYTES + 4..HEADER_BYTES + 8].copy_from_slice(&3u32.to_le_bytes());
        let (_, decoded) = RequestBatch::decode(&frame[HEADER_BYTES..], 16).unwrap();
        assert_eq!(decoded[0], Ok(Request::Random(Random { len: 3 })));
        assert_eq!(decoded[1], Err(Status::UnknownOperation));
        assert_eq!(decoded[2], Err(Status::MalformedOperation));
    }

    #[test]
    fn truncated_and_trailing_bodies_are_refused() {
        let frame = RequestBatch::encode_frame(1, 0, &[Request::Random(Random { len: 3 })]);
        let body = &frame[HEADER_BYTES..];
        for cut in 0..body.len() {
            assert_eq!(RequestBatch::decode(&body[..cut], 16), Err(Status::MalformedFrame));
        }
        let mut longer = body.to_vec();
        longer.push(0);
        assert_eq!(RequestBatch::decode(&longer, 16), Err(Status::MalformedFrame));
        // A count far larger than the body could hold is refused without allocating.
        let mut huge = vec![0u8; 8];
        huge[4..8].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert_eq!(RequestBatch::decode(&huge, u32::MAX), Err(Status::MalformedFrame));
    }

    #[test]
    fn response_round_trip() {
        let results = vec![
            Ok(Reply::Sign(Signature { bytes: vec![1, 2, 3] })),
            Err(Status::AuthenticationFailed),
        ];
        let frame = ResponseBatch::encode_frame(9, &results);
        let header = Header::decode(&header_bytes(&frame), u32::MAX).unwrap();
        assert_eq!(header.kind, FrameKind::Response);
        let (status, decoded) =
            ResponseBatch::decode_replies(&frame[HEADER_BYTES..], &[OpCode::Sign, OpCode::Sign])
                .unwrap();
        assert_eq!(status, Status::Ok);
        assert_eq!(decoded, results);

        let refusal = ResponseBatch::encode_refusal(9, Status::FrameTooLarge);
        let (status, decoded) = ResponseBatch::decode(&refusal[HEADER_BYTES..]).unwrap();
        assert_eq!(status, Status::FrameTooLarge);
        assert!(decoded.is_empty());
    }
}
