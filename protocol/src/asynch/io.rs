//! `tokio::io::AsyncRead`/`AsyncWrite`: a byte stream over the channel's
//! messages, like the blocking `ChannelReader`/`ChannelWriter` (an empty
//! message ends the stream), and compatible with them.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{AsChannel, AsyncChannel};

/// Reads the message at the head of the ring in place: copies what fits
/// into `buf` from where the last read stopped, and releases the message
/// once it is read whole (no intermediate buffer).
impl<C: AsChannel + Unpin> AsyncRead for AsyncChannel<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.eof || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut offset = this.read_offset;
        let read = ready!(this.poll_rx_op(cx, |ch| {
            let Some(grant) = ch.try_peek()? else {
                return Ok(None);
            };
            let msg = grant.volatile();
            if msg.is_empty() {
                grant.release();
                return Ok(Some(None));
            }
            // A peer may rewrite the length between two looks: clamp.
            let start = offset.min(msg.len());
            let n = (msg.len() - start).min(buf.remaining());
            let copied = match msg.subslice(start, n) {
                Ok(part) => part.copy_to(buf.initialize_unfilled_to(n)),
                Err(_) => 0,
            };
            buf.advance(copied);
            offset = start + copied;
            if offset >= msg.len() {
                grant.release();
                offset = 0;
            }
            Ok(Some(Some(copied)))
        }));
        this.read_offset = offset;
        match read {
            Ok(None) => {
                this.eof = true;
                Poll::Ready(Ok(()))
            }
            Ok(Some(_)) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

/// Each write sends one message of up to a quarter of the largest message
/// (an eighth of the ring), so several are in flight at once;
/// `poll_shutdown` sends the empty message that ends the stream.
impl<C: AsChannel + Unpin> AsyncWrite for AsyncChannel<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let chunk = (this.max_message() / 4).max(1);
        let n = buf.len().min(chunk);
        ready!(this.poll_send(cx, &buf[..n]))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner.with_channel(|ch| ch.publish());
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx, &[]))?;
        Poll::Ready(Ok(()))
    }
}
