//! iceoryx2 as a cross-process peer (feature `iceoryx2`): two
//! publish-subscribe services of `[u8]` slices, `<name>/ping` (parent to
//! child) and `<name>/pong` (child to parent). Senders loan a slice, copy
//! the message into it and send it (one copy, like ivchan's zero-copy API);
//! receivers touch every cache line in place.
//!
//! Queue depth: the subscriber buffers up to [`BUFFER`] samples and the
//! publisher retries until delivered when it is full, so the publisher
//! never drops data.

use std::io;

use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use ivchan_protocol::volatile::READ_FORWARD_FROM;

use crate::wait::Waiter;

/// Samples a subscriber buffers (the publisher's data segment holds about
/// this many slices of [`MAX_SLICE`] bytes).
pub const BUFFER: usize = 32;
/// The largest message.
pub const MAX_SLICE: usize = 1 << 20;

type Pub = Publisher<ipc::Service, [u8], ()>;
type Sub = Subscriber<ipc::Service, [u8], ()>;

fn err(e: impl std::fmt::Debug) -> io::Error {
    io::Error::other(format!("iceoryx2: {e:?}"))
}

fn service(
    node: &Node<ipc::Service>,
    name: &str,
) -> io::Result<
    iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, [u8], ()>,
> {
    let name: ServiceName = name.try_into().map_err(err)?;
    node.service_builder(&name)
        .publish_subscribe::<[u8]>()
        .subscriber_max_buffer_size(BUFFER)
        .history_size(0)
        .enable_safe_overflow(false)
        .max_publishers(1)
        .max_subscribers(1)
        .open_or_create()
        .map_err(err)
}

fn publisher(
    f: &iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, [u8], ()>,
) -> io::Result<Pub> {
    f.publisher_builder()
        .initial_max_slice_len(MAX_SLICE)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .map_err(err)
}

fn send(publisher: &Pub, msg: &[u8]) {
    let sample = publisher
        .loan_slice_uninit(msg.len())
        .expect("iceoryx2 loan");
    sample.write_from_slice(msg).send().expect("iceoryx2 send");
}

fn recv_with(subscriber: &Sub, waiter: &mut Waiter, mut f: impl FnMut(&[u8])) {
    waiter.reset();
    loop {
        if let Some(sample) = subscriber.receive().expect("iceoryx2 receive") {
            f(sample.payload());
            return;
        }
        waiter.wait();
    }
}

/// The parent's ends: publishes pings, subscribes to pongs.
pub struct Parent {
    _node: Node<ipc::Service>,
    ping: Pub,
    pong: Sub,
}

impl Parent {
    /// Creates both services; returns the ends and the name to hand the
    /// child.
    pub fn new() -> io::Result<(Self, String)> {
        let base = format!("ivchan-bench/{}", std::process::id());
        let node = NodeBuilder::new().create::<ipc::Service>().map_err(err)?;
        let ping = publisher(&service(&node, &format!("{base}/ping"))?)?;
        let pong = service(&node, &format!("{base}/pong"))?
            .subscriber_builder()
            .create()
            .map_err(err)?;
        Ok((
            Self {
                _node: node,
                ping,
                pong,
            },
            base,
        ))
    }

    /// Called once the child said it is ready (its ports exist).
    pub fn connect(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &[u8]) {
        send(&self.ping, msg);
    }

    /// Receives one reply.
    pub fn recv(&mut self, waiter: &mut Waiter) {
        recv_with(&self.pong, waiter, |m| {
            std::hint::black_box(touch_bytes(m));
        });
    }
}

/// The child's ends: subscribes to pings, publishes pongs.
pub struct Child {
    _node: Node<ipc::Service>,
    ping: Sub,
    pong: Pub,
}

impl Child {
    /// Opens the parent's services.
    pub fn new(base: &str) -> io::Result<Self> {
        let node = NodeBuilder::new().create::<ipc::Service>().map_err(err)?;
        let ping = service(&node, &format!("{base}/ping"))?
            .subscriber_builder()
            .create()
            .map_err(err)?;
        let pong = publisher(&service(&node, &format!("{base}/pong"))?)?;
        Ok(Self {
            _node: node,
            ping,
            pong,
        })
    }

    /// Receives one message and touches it.
    pub fn recv(&mut self, waiter: &mut Waiter) {
        recv_with(&self.ping, waiter, |m| {
            std::hint::black_box(touch_bytes(m));
        });
    }

    /// Receives one message and sends it back.
    pub fn echo(&mut self, waiter: &mut Waiter) {
        let pong = &self.pong;
        recv_with(&self.ping, waiter, |m| send(pong, m));
    }
}

/// Reads one byte of every cache line of an iceoryx2 sample (memory this
/// process owns as a subscriber: a plain slice) in the order ivchan's
/// `touch` reads through its volatile view: last line first below
/// [`READ_FORWARD_FROM`], first line first from it.
fn touch_bytes(bytes: &[u8]) -> u8 {
    let lines = bytes.iter().step_by(64);
    if bytes.len() >= READ_FORWARD_FROM {
        lines.fold(0, |x, b| x ^ b)
    } else {
        lines.rev().fold(0, |x, b| x ^ b)
    }
}
