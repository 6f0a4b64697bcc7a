//! `Stream` and `Sink` of messages.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_core::Stream;
use futures_sink::Sink;

use super::{AsChannel, AsyncChannel};
use crate::channel::ChannelError;

/// The messages received, each in a new buffer; the stream ends when the
/// peer closes the channel (after what it sent before closing).
impl<C: AsChannel + Unpin> Stream for AsyncChannel<C> {
    type Item = Result<Vec<u8>, ChannelError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match ready!(self.get_mut().poll_recv_vec(cx)) {
            Ok(msg) => Poll::Ready(Some(Ok(msg))),
            Err(ChannelError::PeerClosed) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

/// Sends messages: `start_send` copies the message straight into the ring
/// when it has room, and keeps a copy to send later only when it has not.
impl<C: AsChannel + Unpin, T: AsRef<[u8]>> Sink<T> for AsyncChannel<C> {
    type Error = ChannelError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ChannelError>> {
        self.get_mut().poll_pending(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), ChannelError> {
        let this = self.get_mut();
        let msg = item.as_ref();
        if !this.inner.with_channel(|ch| ch.try_send(msg))? {
            this.pending = Some(msg.to_vec());
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ChannelError>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        this.inner.with_channel(|ch| ch.publish());
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ChannelError>> {
        <Self as Sink<T>>::poll_flush(self, cx)
    }
}

impl<C: AsChannel> AsyncChannel<C> {
    /// Sends the `Sink` item that did not fit, once there is room.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ChannelError>> {
        if let Some(msg) = self.pending.take() {
            match self.poll_send(cx, &msg) {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    self.pending = Some(msg);
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}
