//! SPDY/3 framing, as much of it as the Kubernetes streaming protocols use: port-forward
//! speaks SPDY/3.1 (tunnelled in WebSocket binary messages, or directly on the upgraded
//! connection). See `shared/KUBECTL.md` c.5 and c.6, and the SPDY/3 draft.
//!
//! Frames are parsed from a byte buffer that may hold partial frames (the client splits
//! frames across WebSocket messages arbitrarily). Header blocks stay compressed in the
//! frames; a [`HeaderCompressor`] and a [`HeaderDecompressor`] per connection turn them into
//! name/value pairs, each one zlib stream for the whole connection with the SPDY/3
//! dictionary, as the protocol requires.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// The fixed SPDY/3 header-compression dictionary (1423 bytes), a zlib preset dictionary.
/// Transcribed as data from the SPDY/3 draft (section 2.6.10.1), as also carried by
/// moby/spdystream (`spdy/types.go`, `headerDictionaryV3`), the library kubectl uses.
#[rustfmt::skip]
pub const DICTIONARY: &[u8; 1423] = &[
    0x00, 0x00, 0x00, 0x07, 0x6f, 0x70, 0x74, 0x69, 0x6f, 0x6e, 0x73, 0x00, 0x00, 0x00, 0x04, 0x68,
    0x65, 0x61, 0x64, 0x00, 0x00, 0x00, 0x04, 0x70, 0x6f, 0x73, 0x74, 0x00, 0x00, 0x00, 0x03, 0x70,
    0x75, 0x74, 0x00, 0x00, 0x00, 0x06, 0x64, 0x65, 0x6c, 0x65, 0x74, 0x65, 0x00, 0x00, 0x00, 0x05,
    0x74, 0x72, 0x61, 0x63, 0x65, 0x00, 0x00, 0x00, 0x06, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x00,
    0x00, 0x00, 0x0e, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x63, 0x68, 0x61, 0x72, 0x73, 0x65,
    0x74, 0x00, 0x00, 0x00, 0x0f, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x65, 0x6e, 0x63, 0x6f,
    0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x0f, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x6c,
    0x61, 0x6e, 0x67, 0x75, 0x61, 0x67, 0x65, 0x00, 0x00, 0x00, 0x0d, 0x61, 0x63, 0x63, 0x65, 0x70,
    0x74, 0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x73, 0x00, 0x00, 0x00, 0x03, 0x61, 0x67, 0x65, 0x00,
    0x00, 0x00, 0x05, 0x61, 0x6c, 0x6c, 0x6f, 0x77, 0x00, 0x00, 0x00, 0x0d, 0x61, 0x75, 0x74, 0x68,
    0x6f, 0x72, 0x69, 0x7a, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0d, 0x63, 0x61, 0x63,
    0x68, 0x65, 0x2d, 0x63, 0x6f, 0x6e, 0x74, 0x72, 0x6f, 0x6c, 0x00, 0x00, 0x00, 0x0a, 0x63, 0x6f,
    0x6e, 0x6e, 0x65, 0x63, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0c, 0x63, 0x6f, 0x6e, 0x74,
    0x65, 0x6e, 0x74, 0x2d, 0x62, 0x61, 0x73, 0x65, 0x00, 0x00, 0x00, 0x10, 0x63, 0x6f, 0x6e, 0x74,
    0x65, 0x6e, 0x74, 0x2d, 0x65, 0x6e, 0x63, 0x6f, 0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x10,
    0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x61, 0x6e, 0x67, 0x75, 0x61, 0x67, 0x65,
    0x00, 0x00, 0x00, 0x0e, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x65, 0x6e, 0x67,
    0x74, 0x68, 0x00, 0x00, 0x00, 0x10, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x6f,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0b, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e,
    0x74, 0x2d, 0x6d, 0x64, 0x35, 0x00, 0x00, 0x00, 0x0d, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74,
    0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00, 0x0c, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e,
    0x74, 0x2d, 0x74, 0x79, 0x70, 0x65, 0x00, 0x00, 0x00, 0x04, 0x64, 0x61, 0x74, 0x65, 0x00, 0x00,
    0x00, 0x04, 0x65, 0x74, 0x61, 0x67, 0x00, 0x00, 0x00, 0x06, 0x65, 0x78, 0x70, 0x65, 0x63, 0x74,
    0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x70, 0x69, 0x72, 0x65, 0x73, 0x00, 0x00, 0x00, 0x04, 0x66,
    0x72, 0x6f, 0x6d, 0x00, 0x00, 0x00, 0x04, 0x68, 0x6f, 0x73, 0x74, 0x00, 0x00, 0x00, 0x08, 0x69,
    0x66, 0x2d, 0x6d, 0x61, 0x74, 0x63, 0x68, 0x00, 0x00, 0x00, 0x11, 0x69, 0x66, 0x2d, 0x6d, 0x6f,
    0x64, 0x69, 0x66, 0x69, 0x65, 0x64, 0x2d, 0x73, 0x69, 0x6e, 0x63, 0x65, 0x00, 0x00, 0x00, 0x0d,
    0x69, 0x66, 0x2d, 0x6e, 0x6f, 0x6e, 0x65, 0x2d, 0x6d, 0x61, 0x74, 0x63, 0x68, 0x00, 0x00, 0x00,
    0x08, 0x69, 0x66, 0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00, 0x13, 0x69, 0x66, 0x2d,
    0x75, 0x6e, 0x6d, 0x6f, 0x64, 0x69, 0x66, 0x69, 0x65, 0x64, 0x2d, 0x73, 0x69, 0x6e, 0x63, 0x65,
    0x00, 0x00, 0x00, 0x0d, 0x6c, 0x61, 0x73, 0x74, 0x2d, 0x6d, 0x6f, 0x64, 0x69, 0x66, 0x69, 0x65,
    0x64, 0x00, 0x00, 0x00, 0x08, 0x6c, 0x6f, 0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00,
    0x0c, 0x6d, 0x61, 0x78, 0x2d, 0x66, 0x6f, 0x72, 0x77, 0x61, 0x72, 0x64, 0x73, 0x00, 0x00, 0x00,
    0x06, 0x70, 0x72, 0x61, 0x67, 0x6d, 0x61, 0x00, 0x00, 0x00, 0x12, 0x70, 0x72, 0x6f, 0x78, 0x79,
    0x2d, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e, 0x74, 0x69, 0x63, 0x61, 0x74, 0x65, 0x00, 0x00, 0x00,
    0x13, 0x70, 0x72, 0x6f, 0x78, 0x79, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x7a, 0x61,
    0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x05, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00,
    0x07, 0x72, 0x65, 0x66, 0x65, 0x72, 0x65, 0x72, 0x00, 0x00, 0x00, 0x0b, 0x72, 0x65, 0x74, 0x72,
    0x79, 0x2d, 0x61, 0x66, 0x74, 0x65, 0x72, 0x00, 0x00, 0x00, 0x06, 0x73, 0x65, 0x72, 0x76, 0x65,
    0x72, 0x00, 0x00, 0x00, 0x02, 0x74, 0x65, 0x00, 0x00, 0x00, 0x07, 0x74, 0x72, 0x61, 0x69, 0x6c,
    0x65, 0x72, 0x00, 0x00, 0x00, 0x11, 0x74, 0x72, 0x61, 0x6e, 0x73, 0x66, 0x65, 0x72, 0x2d, 0x65,
    0x6e, 0x63, 0x6f, 0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x07, 0x75, 0x70, 0x67, 0x72, 0x61,
    0x64, 0x65, 0x00, 0x00, 0x00, 0x0a, 0x75, 0x73, 0x65, 0x72, 0x2d, 0x61, 0x67, 0x65, 0x6e, 0x74,
    0x00, 0x00, 0x00, 0x04, 0x76, 0x61, 0x72, 0x79, 0x00, 0x00, 0x00, 0x03, 0x76, 0x69, 0x61, 0x00,
    0x00, 0x00, 0x07, 0x77, 0x61, 0x72, 0x6e, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x10, 0x77, 0x77,
    0x77, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e, 0x74, 0x69, 0x63, 0x61, 0x74, 0x65, 0x00, 0x00,
    0x00, 0x06, 0x6d, 0x65, 0x74, 0x68, 0x6f, 0x64, 0x00, 0x00, 0x00, 0x03, 0x67, 0x65, 0x74, 0x00,
    0x00, 0x00, 0x06, 0x73, 0x74, 0x61, 0x74, 0x75, 0x73, 0x00, 0x00, 0x00, 0x06, 0x32, 0x30, 0x30,
    0x20, 0x4f, 0x4b, 0x00, 0x00, 0x00, 0x07, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x00, 0x00,
    0x00, 0x08, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x31, 0x2e, 0x31, 0x00, 0x00, 0x00, 0x03, 0x75, 0x72,
    0x6c, 0x00, 0x00, 0x00, 0x06, 0x70, 0x75, 0x62, 0x6c, 0x69, 0x63, 0x00, 0x00, 0x00, 0x0a, 0x73,
    0x65, 0x74, 0x2d, 0x63, 0x6f, 0x6f, 0x6b, 0x69, 0x65, 0x00, 0x00, 0x00, 0x0a, 0x6b, 0x65, 0x65,
    0x70, 0x2d, 0x61, 0x6c, 0x69, 0x76, 0x65, 0x00, 0x00, 0x00, 0x06, 0x6f, 0x72, 0x69, 0x67, 0x69,
    0x6e, 0x31, 0x30, 0x30, 0x31, 0x30, 0x31, 0x32, 0x30, 0x31, 0x32, 0x30, 0x32, 0x32, 0x30, 0x35,
    0x32, 0x30, 0x36, 0x33, 0x30, 0x30, 0x33, 0x30, 0x32, 0x33, 0x30, 0x33, 0x33, 0x30, 0x34, 0x33,
    0x30, 0x35, 0x33, 0x30, 0x36, 0x33, 0x30, 0x37, 0x34, 0x30, 0x32, 0x34, 0x30, 0x35, 0x34, 0x30,
    0x36, 0x34, 0x30, 0x37, 0x34, 0x30, 0x38, 0x34, 0x30, 0x39, 0x34, 0x31, 0x30, 0x34, 0x31, 0x31,
    0x34, 0x31, 0x32, 0x34, 0x31, 0x33, 0x34, 0x31, 0x34, 0x34, 0x31, 0x35, 0x34, 0x31, 0x36, 0x34,
    0x31, 0x37, 0x35, 0x30, 0x32, 0x35, 0x30, 0x34, 0x35, 0x30, 0x35, 0x32, 0x30, 0x33, 0x20, 0x4e,
    0x6f, 0x6e, 0x2d, 0x41, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x74, 0x61, 0x74, 0x69, 0x76, 0x65,
    0x20, 0x49, 0x6e, 0x66, 0x6f, 0x72, 0x6d, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x32, 0x30, 0x34, 0x20,
    0x4e, 0x6f, 0x20, 0x43, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x33, 0x30, 0x31, 0x20, 0x4d, 0x6f,
    0x76, 0x65, 0x64, 0x20, 0x50, 0x65, 0x72, 0x6d, 0x61, 0x6e, 0x65, 0x6e, 0x74, 0x6c, 0x79, 0x34,
    0x30, 0x30, 0x20, 0x42, 0x61, 0x64, 0x20, 0x52, 0x65, 0x71, 0x75, 0x65, 0x73, 0x74, 0x34, 0x30,
    0x31, 0x20, 0x55, 0x6e, 0x61, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x7a, 0x65, 0x64, 0x34, 0x30,
    0x33, 0x20, 0x46, 0x6f, 0x72, 0x62, 0x69, 0x64, 0x64, 0x65, 0x6e, 0x34, 0x30, 0x34, 0x20, 0x4e,
    0x6f, 0x74, 0x20, 0x46, 0x6f, 0x75, 0x6e, 0x64, 0x35, 0x30, 0x30, 0x20, 0x49, 0x6e, 0x74, 0x65,
    0x72, 0x6e, 0x61, 0x6c, 0x20, 0x53, 0x65, 0x72, 0x76, 0x65, 0x72, 0x20, 0x45, 0x72, 0x72, 0x6f,
    0x72, 0x35, 0x30, 0x31, 0x20, 0x4e, 0x6f, 0x74, 0x20, 0x49, 0x6d, 0x70, 0x6c, 0x65, 0x6d, 0x65,
    0x6e, 0x74, 0x65, 0x64, 0x35, 0x30, 0x33, 0x20, 0x53, 0x65, 0x72, 0x76, 0x69, 0x63, 0x65, 0x20,
    0x55, 0x6e, 0x61, 0x76, 0x61, 0x69, 0x6c, 0x61, 0x62, 0x6c, 0x65, 0x4a, 0x61, 0x6e, 0x20, 0x46,
    0x65, 0x62, 0x20, 0x4d, 0x61, 0x72, 0x20, 0x41, 0x70, 0x72, 0x20, 0x4d, 0x61, 0x79, 0x20, 0x4a,
    0x75, 0x6e, 0x20, 0x4a, 0x75, 0x6c, 0x20, 0x41, 0x75, 0x67, 0x20, 0x53, 0x65, 0x70, 0x74, 0x20,
    0x4f, 0x63, 0x74, 0x20, 0x4e, 0x6f, 0x76, 0x20, 0x44, 0x65, 0x63, 0x20, 0x30, 0x30, 0x3a, 0x30,
    0x30, 0x3a, 0x30, 0x30, 0x20, 0x4d, 0x6f, 0x6e, 0x2c, 0x20, 0x54, 0x75, 0x65, 0x2c, 0x20, 0x57,
    0x65, 0x64, 0x2c, 0x20, 0x54, 0x68, 0x75, 0x2c, 0x20, 0x46, 0x72, 0x69, 0x2c, 0x20, 0x53, 0x61,
    0x74, 0x2c, 0x20, 0x53, 0x75, 0x6e, 0x2c, 0x20, 0x47, 0x4d, 0x54, 0x63, 0x68, 0x75, 0x6e, 0x6b,
    0x65, 0x64, 0x2c, 0x74, 0x65, 0x78, 0x74, 0x2f, 0x68, 0x74, 0x6d, 0x6c, 0x2c, 0x69, 0x6d, 0x61,
    0x67, 0x65, 0x2f, 0x70, 0x6e, 0x67, 0x2c, 0x69, 0x6d, 0x61, 0x67, 0x65, 0x2f, 0x6a, 0x70, 0x67,
    0x2c, 0x69, 0x6d, 0x61, 0x67, 0x65, 0x2f, 0x67, 0x69, 0x66, 0x2c, 0x61, 0x70, 0x70, 0x6c, 0x69,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2f, 0x78, 0x6d, 0x6c, 0x2c, 0x61, 0x70, 0x70, 0x6c, 0x69,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2f, 0x78, 0x68, 0x74, 0x6d, 0x6c, 0x2b, 0x78, 0x6d, 0x6c,
    0x2c, 0x74, 0x65, 0x78, 0x74, 0x2f, 0x70, 0x6c, 0x61, 0x69, 0x6e, 0x2c, 0x74, 0x65, 0x78, 0x74,
    0x2f, 0x6a, 0x61, 0x76, 0x61, 0x73, 0x63, 0x72, 0x69, 0x70, 0x74, 0x2c, 0x70, 0x75, 0x62, 0x6c,
    0x69, 0x63, 0x70, 0x72, 0x69, 0x76, 0x61, 0x74, 0x65, 0x6d, 0x61, 0x78, 0x2d, 0x61, 0x67, 0x65,
    0x3d, 0x67, 0x7a, 0x69, 0x70, 0x2c, 0x64, 0x65, 0x66, 0x6c, 0x61, 0x74, 0x65, 0x2c, 0x73, 0x64,
    0x63, 0x68, 0x63, 0x68, 0x61, 0x72, 0x73, 0x65, 0x74, 0x3d, 0x75, 0x74, 0x66, 0x2d, 0x38, 0x63,
    0x68, 0x61, 0x72, 0x73, 0x65, 0x74, 0x3d, 0x69, 0x73, 0x6f, 0x2d, 0x38, 0x38, 0x35, 0x39, 0x2d,
    0x31, 0x2c, 0x75, 0x74, 0x66, 0x2d, 0x2c, 0x2a, 0x2c, 0x65, 0x6e, 0x71, 0x3d, 0x30, 0x2e,
];

/// The FIN flag of data, SYN_STREAM and SYN_REPLY frames.
pub const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status: PROTOCOL_ERROR.
pub const RST_PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status: INVALID_STREAM.
pub const RST_INVALID_STREAM: u32 = 2;
/// RST_STREAM status: CANCEL.
pub const RST_CANCEL: u32 = 5;
/// GOAWAY status: OK.
pub const GOAWAY_OK: u32 = 0;
/// GOAWAY status: PROTOCOL_ERROR.
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;
/// The largest payload a frame's 24-bit length can describe.
pub const MAX_FRAME_LEN: usize = 0xff_ffff;
/// The largest control frame accepted (SYN_STREAM header blocks are small).
pub const MAX_CONTROL_LEN: usize = 64 * 1024;
/// The largest decompressed header block accepted.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

const VERSION: u16 = 3;
const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// One SPDY/3 frame. Header blocks are kept compressed (see [`HeaderDecompressor`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream (odd when the client opens it).
        stream_id: u32,
        /// The stream it is associated with (0 for none).
        associated_id: u32,
        /// Priority, 0 (highest) to 7.
        priority: u8,
        /// Flags (`FLAG_FIN`, 0x02 unidirectional).
        flags: u8,
        /// The compressed header block.
        headers: Bytes,
    },
    /// Accepts a stream.
    SynReply {
        /// The stream.
        stream_id: u32,
        /// Flags (`FLAG_FIN`).
        flags: u8,
        /// The compressed header block.
        headers: Bytes,
    },
    /// Aborts a stream.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Why (`RST_CANCEL`...).
        status: u32,
    },
    /// Settings (their content is not needed here).
    Settings,
    /// A ping, to be echoed with the same id.
    Ping {
        /// The ping's id.
        id: u32,
    },
    /// The sender is going away.
    GoAway {
        /// The last stream the sender acted on.
        last_good_stream_id: u32,
        /// Why (`GOAWAY_OK`...).
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// Flags (`FLAG_FIN`).
        flags: u8,
        /// The compressed header block.
        headers: Bytes,
    },
    /// Flow-control credit (not enforced by kubectl's SPDY library, so not used here).
    WindowUpdate {
        /// The stream.
        stream_id: u32,
        /// The credit.
        delta: u32,
    },
    /// Bytes on a stream.
    Data {
        /// The stream.
        stream_id: u32,
        /// Flags (`FLAG_FIN`).
        flags: u8,
        /// The payload.
        data: Bytes,
    },
    /// A control frame of a type this implementation ignores, as SPDY/3 lets receivers do.
    Other {
        /// The frame type.
        kind: u16,
    },
}

/// Why a SPDY byte stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A control frame of another SPDY version.
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    /// A frame larger than accepted.
    #[error("SPDY frame of {0} bytes is too large")]
    TooLarge(usize),
    /// A frame whose content does not match its type.
    #[error("malformed SPDY frame: {0}")]
    Malformed(&'static str),
    /// A header block that does not decompress or parse.
    #[error("invalid SPDY header block: {0}")]
    Headers(String),
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

fn u31(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
}

/// Takes one whole frame off the front of `buf`; `None` while the frame is incomplete.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let control = buf[0] & 0x80 != 0;
    let flags = buf[4];
    let len = u24(&buf[5..8]);
    if control {
        let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
        if version != VERSION {
            return Err(Error::Version(version));
        }
        if len > MAX_CONTROL_LEN {
            return Err(Error::TooLarge(len));
        }
    }
    if buf.len() < 8 + len {
        return Ok(None);
    }
    let head = buf.split_to(8);
    let mut body = buf.split_to(len).freeze();
    if !control {
        return Ok(Some(Frame::Data { stream_id: u31(&head[0..4]), flags, data: body }));
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    let need =
        |n: usize, what: &'static str| if body.len() < n { Err(Error::Malformed(what)) } else { Ok(()) };
    let frame = match kind {
        TYPE_SYN_STREAM => {
            need(10, "short SYN_STREAM")?;
            let stream_id = u31(&body[0..4]);
            let associated_id = u31(&body[4..8]);
            let priority = body[8] >> 5;
            body.advance(10);
            Frame::SynStream { stream_id, associated_id, priority, flags, headers: body }
        }
        TYPE_SYN_REPLY => {
            need(4, "short SYN_REPLY")?;
            let stream_id = u31(&body[0..4]);
            body.advance(4);
            Frame::SynReply { stream_id, flags, headers: body }
        }
        TYPE_RST_STREAM => {
            need(8, "short RST_STREAM")?;
            Frame::RstStream { stream_id: u31(&body[0..4]), status: body.slice(4..8).get_u32() }
        }
        TYPE_SETTINGS => Frame::Settings,
        TYPE_PING => {
            need(4, "short PING")?;
            Frame::Ping { id: body.get_u32() }
        }
        TYPE_GOAWAY => {
            need(4, "short GOAWAY")?;
            let last_good_stream_id = u31(&body[0..4]);
            // SPDY/3 added the status; tolerate its absence.
            let status = if body.len() >= 8 { body.slice(4..8).get_u32() } else { GOAWAY_OK };
            Frame::GoAway { last_good_stream_id, status }
        }
        TYPE_HEADERS => {
            need(4, "short HEADERS")?;
            let stream_id = u31(&body[0..4]);
            body.advance(4);
            Frame::Headers { stream_id, flags, headers: body }
        }
        TYPE_WINDOW_UPDATE => {
            need(8, "short WINDOW_UPDATE")?;
            Frame::WindowUpdate { stream_id: u31(&body[0..4]), delta: u31(&body[4..8]) }
        }
        other => Frame::Other { kind: other },
    };
    Ok(Some(frame))
}

fn control_head(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    let len = len.min(MAX_FRAME_LEN) as u32;
    out.put_slice(&len.to_be_bytes()[1..]);
}

/// Appends `frame` to `out`. Header blocks must already be compressed; a data payload
/// longer than [`MAX_FRAME_LEN`] is the caller's to split (see [`data_frames`]).
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::SynStream { stream_id, associated_id, priority, flags, headers } => {
            control_head(out, TYPE_SYN_STREAM, *flags, 10 + headers.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(associated_id & 0x7fff_ffff);
            out.put_u8((priority & 0x07) << 5);
            out.put_u8(0);
            out.put_slice(headers);
        }
        Frame::SynReply { stream_id, flags, headers } => {
            control_head(out, TYPE_SYN_REPLY, *flags, 4 + headers.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_slice(headers);
        }
        Frame::RstStream { stream_id, status } => {
            control_head(out, TYPE_RST_STREAM, 0, 8);
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::Settings => {
            control_head(out, TYPE_SETTINGS, 0, 4);
            out.put_u32(0);
        }
        Frame::Ping { id } => {
            control_head(out, TYPE_PING, 0, 4);
            out.put_u32(*id);
        }
        Frame::GoAway { last_good_stream_id, status } => {
            control_head(out, TYPE_GOAWAY, 0, 8);
            out.put_u32(last_good_stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::Headers { stream_id, flags, headers } => {
            control_head(out, TYPE_HEADERS, *flags, 4 + headers.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_slice(headers);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control_head(out, TYPE_WINDOW_UPDATE, 0, 8);
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(delta & 0x7fff_ffff);
        }
        Frame::Data { stream_id, flags, data } => {
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u8(*flags);
            let len = data.len().min(MAX_FRAME_LEN);
            out.put_slice(&(len as u32).to_be_bytes()[1..]);
            out.put_slice(&data[..len]);
        }
        Frame::Other { kind } => control_head(out, *kind, 0, 0),
    }
}

/// Data frames carrying `data` on `stream_id` in pieces of at most `chunk` bytes; with
/// `fin`, the last one (or an empty one) carries FIN.
pub fn data_frames(stream_id: u32, data: &[u8], chunk: usize, fin: bool) -> Vec<Frame> {
    let chunk = chunk.clamp(1, MAX_FRAME_LEN);
    let mut frames: Vec<Frame> = data
        .chunks(chunk)
        .map(|c| Frame::Data { stream_id, flags: 0, data: Bytes::copy_from_slice(c) })
        .collect();
    if fin {
        match frames.last_mut() {
            Some(Frame::Data { flags, .. }) => *flags |= FLAG_FIN,
            _ => frames.push(Frame::Data { stream_id, flags: FLAG_FIN, data: Bytes::new() }),
        }
    }
    frames
}

/// Header name/value pairs; a value holding several values separates them with NUL.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (names are lower case in SPDY/3).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

/// Compresses header blocks: one zlib stream for the whole connection, with the SPDY/3
/// dictionary, each block ending in a sync flush.
pub struct HeaderCompressor {
    z: Compress,
}

impl Default for HeaderCompressor {
    fn default() -> Self {
        HeaderCompressor::new()
    }
}

impl HeaderCompressor {
    /// A fresh compressor (one per connection and direction).
    pub fn new() -> HeaderCompressor {
        let mut z = Compress::new(Compression::default(), true);
        // Setting a dictionary on a fresh deflate stream cannot fail.
        let _ = z.set_dictionary(DICTIONARY);
        HeaderCompressor { z }
    }

    /// The compressed block for `headers`.
    pub fn compress(&mut self, headers: &[(&str, &str)]) -> Result<Bytes, Error> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for s in [name, value] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            let before = self.z.total_in();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Headers(format!("compression failed: {e}")))?;
            input = &input[(self.z.total_in() - before) as usize..];
            // The sync flush is complete once deflate left output space unused.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(Bytes::from(out));
            }
            out.reserve(256);
        }
    }
}

/// Decompresses header blocks: the peer's one zlib stream for the whole connection.
pub struct HeaderDecompressor {
    z: Decompress,
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        HeaderDecompressor::new()
    }
}

impl HeaderDecompressor {
    /// A fresh decompressor (one per connection and direction).
    pub fn new() -> HeaderDecompressor {
        HeaderDecompressor { z: Decompress::new(true) }
    }

    /// The name/value pairs of one compressed block. After an error the zlib stream is
    /// out of step with the peer's: the connection must end.
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, Error> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let r = self.z.decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.z.total_in() - in0) as usize..];
            let progressed = self.z.total_in() != in0 || self.z.total_out() != out0;
            match r {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| Error::Headers(format!("the peer's dictionary is not SPDY/3's: {e}")))?;
                    continue;
                }
                Err(e) => return Err(Error::Headers(e.to_string())),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(Error::Headers(format!("header block larger than {MAX_HEADER_BLOCK} bytes")));
            }
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if !progressed && out.len() < out.capacity() {
                return Err(Error::Headers("truncated header block".into()));
            }
            out.reserve(1024);
        }
        parse_block(&out)
    }
}

fn parse_block(mut b: &[u8]) -> Result<Headers, Error> {
    fn take<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], Error> {
        if b.len() < 4 {
            return Err(Error::Headers("truncated length".into()));
        }
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if b.len() - 4 < n {
            return Err(Error::Headers("length beyond the block".into()));
        }
        let s = &b[4..4 + n];
        *b = &b[4 + n..];
        Ok(s)
    }
    if b.len() < 4 {
        return Err(Error::Headers("missing pair count".into()));
    }
    let count = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    b = &b[4..];
    // Each pair takes at least 8 bytes: a count beyond that is a lie.
    if count > b.len() / 8 {
        return Err(Error::Headers(format!("{count} pairs cannot fit in the block")));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = String::from_utf8_lossy(take(&mut b)?).into_owned();
        let value = String::from_utf8_lossy(take(&mut b)?).into_owned();
        headers.push((name, value));
    }
    if !b.is_empty() {
        return Err(Error::Headers("bytes after the last pair".into()));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options"));
        assert!(DICTIONARY.ends_with(b",enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_on_one_stream() {
        let mut c = HeaderCompressor::new();
        let mut d = HeaderDecompressor::new();
        let blocks: Vec<Vec<(&str, &str)>> = vec![
            vec![("streamtype", "error"), ("port", "80"), ("requestid", "0")],
            vec![("streamtype", "data"), ("port", "80"), ("requestid", "0")],
            vec![],
            vec![("x-multi", "a\0b"), ("streamtype", "data"), ("port", "8080"), ("requestid", "1")],
        ];
        let mut sizes = Vec::new();
        for block in &blocks {
            let z = c.compress(block).unwrap();
            sizes.push(z.len());
            let got = d.decompress(&z).unwrap();
            let want: Headers = block.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            assert_eq!(got, want);
        }
        // The second block reuses the first's history: the stream is continuous.
        assert!(sizes[1] < sizes[0], "{sizes:?}");
        assert_eq!(header(&d.decompress(&c.compress(&blocks[3]).unwrap()).unwrap(), "x-multi"), Some("a"));
    }

    #[test]
    fn frames_round_trip_split_anywhere() {
        let mut c = HeaderCompressor::new();
        let h = c.compress(&[("streamtype", "data"), ("port", "80"), ("requestid", "7")]).unwrap();
        let frames = vec![
            Frame::SynStream { stream_id: 3, associated_id: 0, priority: 2, flags: 0, headers: h.clone() },
            Frame::SynReply { stream_id: 3, flags: 0, headers: h },
            Frame::Data { stream_id: 3, flags: FLAG_FIN, data: Bytes::from_static(b"hello") },
            Frame::Data { stream_id: 5, flags: 0, data: Bytes::new() },
            Frame::RstStream { stream_id: 3, status: RST_CANCEL },
            Frame::Ping { id: 1 },
            Frame::GoAway { last_good_stream_id: 5, status: GOAWAY_OK },
            Frame::WindowUpdate { stream_id: 3, delta: 65536 },
            Frame::Settings,
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            encode(f, &mut wire);
        }
        // Feed the bytes in pieces of every size from 1 to 13.
        for step in 1..14 {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                buf.extend_from_slice(piece);
                while let Some(f) = decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            assert!(buf.is_empty());
            assert_eq!(got, frames, "step {step}");
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut buf = BytesMut::from(&[0x80u8, 0x02, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(decode(&mut buf), Err(Error::Version(2)));
        let mut buf = BytesMut::from(&[0x80u8, 0x03, 0, 1, 0, 0, 0, 2, 0, 0][..]);
        assert!(matches!(decode(&mut buf), Err(Error::Malformed(_))));
        let mut buf = BytesMut::from(&[0x80u8, 0x03, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert!(matches!(decode(&mut buf), Err(Error::TooLarge(_))));
        let mut d = HeaderDecompressor::new();
        assert!(d.decompress(b"not zlib at all").is_err());
        // A valid zlib stream whose block claims more pairs than it holds.
        let mut c = HeaderCompressor::new();
        let mut z = Compress::new(Compression::default(), true);
        let _ = z.set_dictionary(DICTIONARY);
        let mut out = Vec::with_capacity(64);
        z.compress_vec(&[0, 0, 0, 9], &mut out, FlushCompress::Sync).unwrap();
        assert!(HeaderDecompressor::new().decompress(&out).is_err());
        let _ = c.compress(&[]).unwrap();
    }

    #[test]
    fn data_is_split_with_fin_on_the_last_piece() {
        let f = data_frames(3, b"abcdefg", 3, true);
        assert_eq!(f.len(), 3);
        assert!(matches!(&f[2], Frame::Data { flags: FLAG_FIN, data, .. } if data.as_ref() == b"g"));
        let f = data_frames(3, b"", 3, true);
        assert!(matches!(&f[..], [Frame::Data { flags: FLAG_FIN, data, .. }] if data.is_empty()));
        assert!(data_frames(3, b"", 3, false).is_empty());
    }
}
