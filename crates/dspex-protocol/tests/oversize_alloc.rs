//! A hostile length header costs no memory: counted with a global allocator
//! (its own test binary, so no other test's allocations are counted).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, BytesMut};
use dspex_protocol::{MessageCodec, ProtocolError, Request, Response};
use tokio_util::codec::Decoder;

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_3_gib_header_allocates_nothing() {
    let mut codec = MessageCodec::<Request, Response>::default();
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u32(3 * 1024 * 1024 * 1024);
    buf.put_slice(b"partial body");

    let before = ALLOCATED.load(Ordering::Relaxed);
    let result = codec.decode(&mut buf);
    let allocated = ALLOCATED.load(Ordering::Relaxed) - before;

    assert!(matches!(result, Err(ProtocolError::FrameTooLarge { .. })));
    // The error value itself is a few words; a reservation would be 3 GiB.
    assert!(
        allocated < 1024,
        "decoding a rejected header allocated {allocated} bytes"
    );
}
