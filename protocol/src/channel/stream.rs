//! `std::io` adapters: a byte stream over a channel's messages.

use std::io;
use std::time::Duration;

use super::Channel;

impl<'a> Channel<'a> {
    /// A byte-stream writer: each `write` sends up to one message.
    pub fn writer(&mut self, timeout: Option<Duration>) -> ChannelWriter<'_, 'a> {
        ChannelWriter {
            channel: self,
            timeout,
        }
    }

    /// A byte-stream reader: message boundaries disappear; an empty message
    /// (see [`ChannelWriter::finish`]) reads as end of stream.
    pub fn reader(&mut self, timeout: Option<Duration>) -> ChannelReader<'_, 'a> {
        ChannelReader {
            buf: vec![0; self.rx.max_message()],
            channel: self,
            timeout,
            start: 0,
            end: 0,
            eof: false,
        }
    }
}

/// `std::io::Write` over a channel. Writes of any length are split into
/// messages of at most [`Channel::max_message`] bytes.
#[derive(Debug)]
pub struct ChannelWriter<'c, 'a> {
    channel: &'c mut Channel<'a>,
    timeout: Option<Duration>,
}

impl ChannelWriter<'_, '_> {
    /// Ends the stream: the reader sees end of file.
    pub fn finish(self) -> io::Result<()> {
        Ok(self.channel.send(&[], self.timeout)?)
    }
}

impl io::Write for ChannelWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Messages of an eighth of the ring keep several in flight, so the
        // reader copies one while the writer fills the next.
        let chunk = (self.channel.tx.capacity() / 8).min(self.channel.tx.max_message());
        let n = buf.len().min(chunk);
        self.channel.send(&buf[..n], self.timeout)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.channel.publish();
        Ok(())
    }
}

/// `std::io::Read` over a channel.
#[derive(Debug)]
pub struct ChannelReader<'c, 'a> {
    channel: &'c mut Channel<'a>,
    timeout: Option<Duration>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl io::Read for ChannelReader<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.start == self.end {
            if self.eof {
                return Ok(0);
            }
            let n = self.channel.recv(&mut self.buf, self.timeout)?;
            if n == 0 {
                self.eof = true;
            }
            self.start = 0;
            self.end = n;
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}
