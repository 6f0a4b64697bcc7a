//! `std::io` adapters: a byte stream over a channel's messages, batched.
//!
//! The writer stages messages and publishes them together, the way a
//! `BufWriter` holds bytes until `flush`: the reader takes a whole batch
//! with one load of `tail`. The reader copies straight from the ring into
//! the caller's buffer (no staging copy), fills it from as many messages
//! as are queued, and hands the space back in chunks rather than per
//! message. Both publish before they wait, so neither side can stall the
//! other with work it has not published.

use std::io;
use std::time::Duration;

use super::{Channel, ChannelError};

impl<'a> Channel<'a> {
    /// A byte-stream writer. Writes are staged and published in batches:
    /// call [`flush`](io::Write::flush) (or
    /// [`finish`](ChannelWriter::finish), or drop the writer) to make what
    /// was written visible to the reader, as with a `BufWriter`.
    pub fn writer(&mut self, timeout: Option<Duration>) -> ChannelWriter<'_, 'a> {
        ChannelWriter {
            channel: self,
            timeout,
            staged: 0,
        }
    }

    /// A byte-stream reader: message boundaries disappear; an empty message
    /// (see [`ChannelWriter::finish`]) reads as end of stream.
    pub fn reader(&mut self, timeout: Option<Duration>) -> ChannelReader<'_, 'a> {
        ChannelReader {
            channel: self,
            timeout,
            offset: 0,
            eof: false,
        }
    }
}

/// `std::io::Write` over a channel. Writes of any length are split into
/// messages of at most an eighth of the ring (so several are in flight)
/// and [`Channel::max_message`] bytes. Staged messages are published every
/// [`PUBLISH_EVERY`](super::PUBLISH_EVERY) bytes, before any wait for room,
/// on `flush`, on `finish` and on drop.
#[derive(Debug)]
pub struct ChannelWriter<'c, 'a> {
    channel: &'c mut Channel<'a>,
    timeout: Option<Duration>,
    /// Bytes staged since the last publish.
    staged: usize,
}

impl ChannelWriter<'_, '_> {
    /// Ends the stream: publishes everything written, then an empty message
    /// that the reader sees as end of file.
    pub fn finish(self) -> io::Result<()> {
        Ok(self.channel.send(&[], self.timeout)?)
    }

    fn publish(&mut self) {
        self.channel.publish_sent();
        self.staged = 0;
    }

    /// Stages one message, as a batch does: publishing when the ring is
    /// full (then waiting) and every `PUBLISH_EVERY` bytes.
    fn stage(&mut self, piece: &[u8]) -> Result<(), ChannelError> {
        self.channel.usable()?;
        self.channel.tick();
        let timeout = self.timeout;
        self.channel
            .stage_batched(piece, &mut self.staged, || timeout)
    }
}

impl io::Write for ChannelWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let chunk = (self.channel.tx.capacity() / 8)
            .min(self.channel.tx.max_message())
            .max(1);
        let mut written = 0;
        for piece in buf.chunks(chunk) {
            match self.stage(piece) {
                Ok(()) => written += piece.len(),
                // What was staged counts; the error comes back on the next
                // call (a poisoned ring stays poisoned, a timeout recurs).
                Err(_) if written > 0 => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.publish();
        Ok(())
    }
}

impl Drop for ChannelWriter<'_, '_> {
    fn drop(&mut self) {
        self.publish();
    }
}

/// `std::io::Read` over a channel. A `read` waits (up to the timeout) only
/// for the first message; it then copies from every message already
/// queued until `out` is full, reading a message that does not fit across
/// several calls.
#[derive(Debug)]
pub struct ChannelReader<'c, 'a> {
    channel: &'c mut Channel<'a>,
    timeout: Option<Duration>,
    /// Bytes of the current (front) message already read.
    offset: usize,
    eof: bool,
}

impl ChannelReader<'_, '_> {
    fn release(&mut self) {
        self.channel.rx.publish();
    }

    /// Copies queued bytes into `out`; waits only while nothing at all has
    /// been copied.
    fn fill(&mut self, out: &mut [u8]) -> Result<usize, ChannelError> {
        let mut n = 0;
        // Messages finished, and whether a wait (which counts the first
        // for the receive pace) came before them.
        let (mut finished, mut waited) = (0usize, false);
        while n < out.len() {
            let msg = match self.channel.rx.peek() {
                Ok(Some(msg)) => msg,
                Ok(None) if n > 0 => break,
                Ok(None) => {
                    // Hand back what was read before waiting: the writer
                    // may be waiting for that room.
                    self.release();
                    self.channel
                        .block(self.timeout, true, |ch| ch.rx.peek().map(|g| g.map(drop)))?;
                    waited = true;
                    continue;
                }
                // Return what was copied; the error comes back next call.
                Err(_) if n > 0 => break,
                Err(e) => return Err(e.into()),
            };
            let len = msg.len();
            if len == 0 {
                msg.stage();
                self.eof = true;
                break;
            }
            let take = (len - self.offset).min(out.len() - n);
            msg.read(self.offset, &mut out[n..n + take])?;
            n += take;
            if self.offset + take == len {
                msg.stage();
                self.offset = 0;
                self.channel.release_batched();
                finished += 1;
            } else {
                self.offset += take;
            }
        }
        let unwaited = if waited {
            finished.saturating_sub(1)
        } else {
            finished
        };
        self.channel.paces[super::RECV].took(unwaited);
        Ok(n)
    }
}

impl io::Read for ChannelReader<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.eof {
            return Ok(0);
        }
        self.channel.usable()?;
        self.channel.tick();
        Ok(self.fill(out)?)
    }
}

impl Drop for ChannelReader<'_, '_> {
    fn drop(&mut self) {
        self.release();
    }
}
