//! The proxy's frame decoder, as its server reads a request: the 20-byte header checked first,
//! then the body of a request batch; the response decoder as the client reads an answer.
//!
//! Input: the bytes arriving on a connection (header, then body).

use hsm_proxy_proto::frame::{DEFAULT_MAX_BATCH_OPS, DEFAULT_MAX_BODY_BYTES, HEADER_BYTES};
use hsm_proxy_proto::{FrameKind, Header, OpCode, RequestBatch, ResponseBatch, Status};

/// Decodes `data` as a frame; panics (a finding) if a decoded batch does not re-encode to a
/// frame that decodes to the same operations.
pub fn run(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<HEADER_BYTES>() else {
        // Shorter than a header: the server waits for more bytes; the body decoders still
        // must refuse anything at all.
        body(data, 0);
        return;
    };
    match Header::decode(head, DEFAULT_MAX_BODY_BYTES) {
        Ok(header) => {
            assert!(header.body_len <= DEFAULT_MAX_BODY_BYTES, "oversized body accepted");
            // The server reads exactly `body_len` bytes; what follows is the next frame.
            let len = usize::try_from(header.body_len).unwrap_or(usize::MAX).min(rest.len());
            let (frame_body, next) = rest.split_at(len);
            match header.kind {
                FrameKind::Request => request(frame_body, header.request_id),
                FrameKind::Response => response(frame_body),
            }
            if !next.is_empty() {
                run(next);
            }
        }
        Err(refusal) => {
            // A refusal names the request id only when the magic was right.
            assert!(refusal.status != Status::Ok, "a refused header carries Ok");
        }
    }
}

/// The body decoders alone, over bytes that did not come with a header.
fn body(data: &[u8], request_id: u64) {
    request(data, request_id);
    response(data);
}

fn request(data: &[u8], request_id: u64) {
    let Ok((timeout_ms, ops)) = RequestBatch::decode(data, DEFAULT_MAX_BATCH_OPS) else { return };
    assert!(ops.len() <= DEFAULT_MAX_BATCH_OPS as usize, "batch limit not enforced");
    // Every operation that decoded must survive a round trip unchanged.
    let decoded: Vec<_> = ops.into_iter().filter_map(Result::ok).collect();
    let frame = RequestBatch::encode_frame(request_id, timeout_ms, &decoded);
    let Some((head, again)) = frame.split_first_chunk::<HEADER_BYTES>() else {
        panic!("encoded frame shorter than its header");
    };
    let header = Header::decode(head, u32::MAX);
    assert!(
        header.is_ok_and(|h| h.request_id == request_id && h.body_len as usize == again.len()),
        "re-encoded header does not decode"
    );
    let Ok((t, redecoded)) = RequestBatch::decode(again, u32::MAX) else {
        panic!("re-encoded batch does not decode");
    };
    assert_eq!(t, timeout_ms);
    assert_eq!(redecoded, decoded.into_iter().map(Ok).collect::<Vec<_>>());
}

fn response(data: &[u8]) {
    let Ok((_, raw)) = ResponseBatch::decode(data) else { return };
    // Type each reply as if the batch had asked for the same operation everywhere, for each
    // operation in turn (cheap: bodies are small); the typed decoder must not panic either.
    let n = raw.len();
    for code in OpCode::ALL {
        let codes = vec![*code; n];
        let _ = ResponseBatch::decode_replies(data, &codes);
    }
}
