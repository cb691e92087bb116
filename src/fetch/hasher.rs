//! sha256 on a thread of its own, beside the socket reads and file writes.
//!
//! Hashing is the costliest per-byte work of a download: about 1 GiB/s on
//! one core even with the SHA extensions (which `sha2` detects and uses at
//! run time), while receiving or writing a GiB takes well under a
//! CPU-second each. In line, its time would add to theirs; instead full
//! buffers go to a [`Hasher`] thread, which hashes while the caller
//! receives and writes the next ones.
//!
//! The buffers come from a fixed pool of [`BUFFERS`] × [`BUFFER_SIZE`] that
//! circulates between the caller and the thread: memory stays bounded
//! however slow the hash, the caller waits for a buffer when all are being
//! hashed, and no buffer is allocated (or page-faulted) twice.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use aligned_vec::{AVec, ConstAlign};
use sha2::{Digest, Sha256};

/// What a [`Buffer`]'s memory is aligned to: a page, so that a full buffer
/// can be written with `O_DIRECT` (see `part.rs`).
pub(crate) const BUFFER_ALIGN: usize = 4096;

/// A buffer of the pool: page-aligned memory with room for [`BUFFER_SIZE`]
/// bytes.
pub(crate) type Buffer = AVec<u8, ConstAlign<BUFFER_ALIGN>>;

/// The size of each buffer, which is also the unit of file writes.
pub(crate) const BUFFER_SIZE: usize = 1 << 20;

/// How many buffers one download has at most.
const BUFFERS: usize = 8;

enum Message {
    Data(Buffer),
    Reset,
}

/// A running sha256 whose work happens on its own thread.
pub(crate) struct Hasher {
    /// `None` once finished.
    to_thread: Option<Sender<Message>>,
    /// Buffers the thread is done with, emptied.
    returned: Receiver<Buffer>,
    allocated: usize,
    /// Set when the hash is no longer wanted: the thread skips the rest.
    abandoned: Arc<AtomicBool>,
    thread: Option<JoinHandle<[u8; 32]>>,
}

impl Hasher {
    pub(crate) fn spawn() -> io::Result<Hasher> {
        let (to_thread, messages) = mpsc::channel();
        let (to_pool, returned) = mpsc::channel();
        let abandoned = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("kiln-hash".to_string())
            .spawn({
                let abandoned = Arc::clone(&abandoned);
                move || hash(&messages, &to_pool, &abandoned)
            })?;
        Ok(Hasher {
            to_thread: Some(to_thread),
            returned,
            allocated: 0,
            abandoned,
            thread: Some(thread),
        })
    }

    /// An empty buffer with room for [`BUFFER_SIZE`] bytes: one the thread
    /// is done with, a new one while the pool is not full, or else the next
    /// one the thread finishes (waiting for it).
    pub(crate) fn buffer(&mut self) -> Buffer {
        if let Ok(buffer) = self.returned.try_recv() {
            return buffer;
        }
        if self.allocated < BUFFERS {
            self.allocated += 1;
            return new_buffer();
        }
        // Err: the thread is gone (it panicked); `finish` reports that.
        self.returned.recv().unwrap_or_else(|_| new_buffer())
    }

    /// Hash `buffer` after everything given before it.
    pub(crate) fn update(&self, buffer: Buffer) {
        self.send(Message::Data(buffer));
    }

    /// Forget every byte given so far.
    pub(crate) fn reset(&self) {
        self.send(Message::Reset);
    }

    fn send(&self, message: Message) {
        let to_thread = self.to_thread.as_ref().expect("used after finish");
        // Err: the thread is gone (it panicked); `finish` reports that.
        let _ = to_thread.send(message);
    }

    /// The sha256 of the bytes given since the last reset, once the thread
    /// has hashed them all.
    pub(crate) fn finish(mut self) -> [u8; 32] {
        drop(self.to_thread.take());
        let thread = self.thread.take().expect("finish is called once");
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        // Abandoned (the download failed): the thread skips what is queued.
        if let Some(thread) = self.thread.take() {
            self.abandoned.store(true, Ordering::Relaxed);
            drop(self.to_thread.take());
            let _ = thread.join();
        }
    }
}

fn new_buffer() -> Buffer {
    Buffer::with_capacity(BUFFER_ALIGN, BUFFER_SIZE)
}

/// The hash thread: until the caller hangs up, hash each buffer and send
/// it back empty.
fn hash(
    messages: &Receiver<Message>,
    to_pool: &Sender<Buffer>,
    abandoned: &AtomicBool,
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for message in messages {
        match message {
            Message::Data(mut buffer) => {
                if !abandoned.load(Ordering::Relaxed) {
                    hasher.update(&buffer);
                }
                buffer.clear();
                // Err: the caller is gone, and so is the need for buffers.
                let _ = to_pool.send(buffer);
            }
            Message::Reset => hasher = Sha256::new(),
        }
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    /// Feeds `data` through the pool the way `PartFile` does.
    fn feed(hasher: &mut Hasher, data: &[u8]) {
        for piece in data.chunks(BUFFER_SIZE) {
            let mut buffer = hasher.buffer();
            assert!(buffer.is_empty() && buffer.capacity() >= BUFFER_SIZE);
            assert_eq!(buffer.as_ptr() as usize % BUFFER_ALIGN, 0);
            buffer.extend_from_slice(piece);
            hasher.update(buffer);
        }
    }

    #[test]
    fn buffers_hash_in_order_and_are_reused() {
        let data: Vec<u8> = (0..(BUFFERS + 2) * BUFFER_SIZE + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut hasher = Hasher::spawn().unwrap();
        feed(&mut hasher, &data);
        assert!(hasher.allocated <= BUFFERS);
        assert_eq!(hasher.finish(), expected(&data));
    }

    #[test]
    fn reset_forgets_earlier_bytes() {
        let mut hasher = Hasher::spawn().unwrap();
        feed(&mut hasher, b"wrong prefix");
        hasher.reset();
        feed(&mut hasher, b"hel");
        feed(&mut hasher, b"lo");
        assert_eq!(hasher.finish(), expected(b"hello"));
    }

    #[test]
    fn dropping_with_buffers_queued_ends_the_thread() {
        let mut hasher = Hasher::spawn().unwrap();
        feed(&mut hasher, &vec![0; BUFFERS * BUFFER_SIZE]);
        drop(hasher);
    }
}
