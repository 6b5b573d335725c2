//! Property tests: any batch round-trips, and no byte string makes the decoders panic.
//!
//! The tests that build operations need the `arbitrary` feature (on in CI's
//! `--all-features` run); the decoder test runs in every build.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

#[cfg(feature = "arbitrary")]
use arbitrary::{Arbitrary, Unstructured};
#[cfg(feature = "arbitrary")]
use hsm_proxy_proto::Request;
use hsm_proxy_proto::frame::{HEADER_BYTES, Header};
use hsm_proxy_proto::{RequestBatch, ResponseBatch};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[cfg(feature = "arbitrary")]
    #[test]
    fn request_batches_round_trip(seed in proptest::collection::vec(any::<u8>(), 0..4096), id: u64, timeout: u32) {
        let mut u = Unstructured::new(&seed);
        let ops: Vec<Request> = match Vec::<Request>::arbitrary(&mut u) {
            Ok(ops) => ops,
            Err(_) => return Ok(()),
        };
        let frame = RequestBatch::encode_frame(id, timeout, &ops);
        let header = Header::decode(frame[..HEADER_BYTES].try_into().unwrap(), u32::MAX).unwrap();
        prop_assert_eq!(header.request_id, id);
        prop_assert_eq!(header.body_len as usize, frame.len() - HEADER_BYTES);
        let (t, decoded) = RequestBatch::decode(&frame[HEADER_BYTES..], u32::MAX).unwrap();
        prop_assert_eq!(t, timeout);
        prop_assert_eq!(decoded, ops.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = RequestBatch::decode(&bytes, 1024);
        let _ = ResponseBatch::decode(&bytes);
        if bytes.len() >= HEADER_BYTES {
            let _ = Header::decode(bytes[..HEADER_BYTES].try_into().unwrap(), 1 << 20);
        }
    }

    #[cfg(feature = "arbitrary")]
    #[test]
    fn mutated_frames_never_panic(seed in proptest::collection::vec(any::<u8>(), 0..1024), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut u = Unstructured::new(&seed);
        let ops = Vec::<Request>::arbitrary(&mut u).unwrap_or_default();
        let mut frame = RequestBatch::encode_frame(1, 0, &ops);
        for (at, value) in flips {
            let len = frame.len();
            frame[at % len] ^= value;
        }
        let _ = RequestBatch::decode(&frame[HEADER_BYTES..], 1024);
    }
}
