//! The guest's end of a channel, owning the BAR mapping it runs over.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use ivchan_protocol::{
    Channel, ChannelError, ChannelOptions, DoorbellAddress, Header, Notifier, PeerEvent, Side,
};

use crate::discovery::DeviceKind;
use crate::error::GuestError;
use crate::mapping::{MapOptions, MappedBar, Registers};
use crate::select::{select_waiting, Selector};

self_cell::self_cell!(
    struct Cell {
        owner: MappedBar,
        #[covariant]
        dependent: Channel,
    }
    impl {Debug}
);

/// The guest's end of a channel: the selected device's BAR2 and the channel
/// over it. Dropping it detaches cleanly (the host sees `closed`).
#[derive(Debug)]
pub struct GuestChannel {
    cell: Cell,
    address: String,
}

impl GuestChannel {
    /// Finds the device (`selector`), maps BAR2, waits for the host's header
    /// and attaches as the guest. Waits up to `wait` for each of: the device
    /// to appear (hotplug), and the header to be written.
    pub fn open(
        sysfs_root: &Path,
        selector: &Selector,
        map: &MapOptions,
        options: ChannelOptions,
        wait: Duration,
    ) -> Result<Self, GuestError> {
        let start = Instant::now();
        let bar = loop {
            match select_waiting(sysfs_root, selector, map, wait) {
                // Not there yet: a hotplugged device shows up later, maybe
                // beside devices that belong to other VMs.
                Err(GuestError::NoDevice { .. } | GuestError::NoMatch { .. })
                    if start.elapsed() < wait =>
                {
                    thread::sleep(Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        Self::from_bar(bar, options, wait)
    }

    /// Attaches as the guest over a mapped BAR, waiting up to `wait` for the
    /// host's header. A write-combining mapping turns on the store fence. On
    /// an `ivshmem-doorbell` device the guest publishes its peer id
    /// (IVPosition) in its side block and rings the host through BAR0 when
    /// the host asks to be woken; it cannot receive interrupts in user space
    /// here, so it keeps polling for incoming messages.
    pub fn from_bar(
        bar: MappedBar,
        mut options: ChannelOptions,
        wait: Duration,
    ) -> Result<Self, GuestError> {
        let address = bar.device().address.clone();
        options.write_combining |= bar.write_combining();
        let cell = Cell::try_new(bar, |bar| -> Result<_, GuestError> {
            let header = bar.wait_for_header(wait)?;
            let mut channel = Channel::attach(header, Side::Guest, options).map_err(|source| {
                GuestError::Channel {
                    address: bar.device().address.clone(),
                    source,
                }
            })?;
            if bar.device().kind == DeviceKind::Doorbell {
                let regs = Registers::map(bar.device())?;
                // IVPosition is a 16-bit peer id in a 32-bit register.
                #[allow(clippy::cast_possible_truncation)]
                let peer = regs.iv_position() as u16;
                header.set_doorbell(Side::Guest, Some(DoorbellAddress { peer, vectors: 1 }));
                channel.set_notifier(Some(Box::new(GuestBell { regs, header })));
            }
            Ok(channel)
        })?;
        Ok(Self { cell, address })
    }

    /// PCI address of the device.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The mapped device.
    pub fn bar(&self) -> &MappedBar {
        self.cell.borrow_owner()
    }

    /// Runs `f` on the channel (zero-copy API, io adapters, and the rest).
    pub fn with<R>(&mut self, f: impl FnOnce(&mut Channel<'_>) -> R) -> R {
        self.cell.with_dependent_mut(|_, channel| f(channel))
    }

    fn wrap<T>(&self, r: Result<T, ChannelError>) -> Result<T, GuestError> {
        r.map_err(|source| GuestError::Channel {
            address: self.address.clone(),
            source,
        })
    }

    /// Sends, waiting up to `timeout` for room.
    pub fn send(&mut self, msg: &[u8], timeout: Option<Duration>) -> Result<(), GuestError> {
        let r = self.with(|c| c.send(msg, timeout));
        self.wrap(r)
    }

    /// Receives into `buf`, waiting up to `timeout`; returns the length.
    pub fn recv(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> Result<usize, GuestError> {
        let r = self.with(|c| c.recv(buf, timeout));
        self.wrap(r)
    }

    /// Sends without waiting; `Ok(false)` when the ring is full.
    pub fn try_send(&mut self, msg: &[u8]) -> Result<bool, GuestError> {
        let r = self.with(|c| c.try_send(msg));
        self.wrap(r)
    }

    /// Receives without waiting; `Ok(None)` when nothing is queued.
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, GuestError> {
        let r = self.with(|c| c.try_recv(buf));
        self.wrap(r)
    }

    /// Reports what changed on the host's side since the last call.
    pub fn poll_peer(&mut self) -> Result<Option<PeerEvent>, GuestError> {
        let r = self.with(|c| c.poll_peer());
        self.wrap(r)
    }

    /// The largest message either direction carries.
    pub fn max_message(&mut self) -> usize {
        self.with(|c| c.max_message())
    }
}

/// The guest's doorbell: rings the host's published peer id through BAR0.
/// Interrupts from the host would need MSI-X in user space (VFIO with an
/// IOMMU in the guest), so it does not sleep on them: the channel polls.
#[derive(Debug)]
struct GuestBell<'a> {
    regs: Registers,
    header: Header<'a>,
}

impl Notifier for GuestBell<'_> {
    fn ring(&self) {
        // Read each time: the host publishes it when its server starts, and
        // again after a restart.
        if let Some(host) = self.header.doorbell(Side::Host) {
            self.regs.ring(host.peer, 0);
        }
    }

    fn can_wait(&self) -> bool {
        false
    }

    fn wait(&self, timeout: Duration) {
        thread::sleep(timeout);
    }
}
