//! The guest's end of a channel: the selected device's BAR2 mapping and the
//! channel over it. [`GuestChannel`] dereferences to [`OwnedChannel`], so
//! the whole channel API is called on it directly.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ivchan_protocol::{
    poll_until, Channel, ChannelOptions, DoorbellAddress, Header, Notifier, OwnedChannel, Side,
    WaitStrategy,
};

use crate::discovery::DeviceKind;
use crate::error::GuestError;
use crate::mapping::{MapOptions, MappedBar, Registers};
use crate::select::{select, Selector};
use crate::wake::{self, Interrupts, WakeCounters, WakePreference, WakeSource, WakeStats};

/// How long [`GuestChannel::open`] waits, by default, for the device to
/// appear and for the host to write its header.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The guest's end of a channel. Dropping it detaches cleanly (the host
/// sees `closed`).
///
/// ```no_run
/// use ivchan_guest::GuestChannel;
/// use std::time::Duration;
///
/// // The ivshmem device whose header carries this VM's UUID.
/// let mut ch = GuestChannel::open()?;
/// let mut buf = vec![0; ch.max_message()];
/// let n = ch.recv(&mut buf, Some(Duration::from_secs(30)))?;
/// ch.send(&buf[..n], None)?; // echo
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct GuestChannel {
    channel: OwnedChannel<MappedBar>,
    wake: WakeSource,
    counters: Arc<WakeCounters>,
    peer: Option<u16>,
}

impl Deref for GuestChannel {
    type Target = OwnedChannel<MappedBar>;

    fn deref(&self) -> &Self::Target {
        &self.channel
    }
}

impl DerefMut for GuestChannel {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.channel
    }
}

/// How to find, map and attach to the device (see [`GuestChannel::builder`]).
#[derive(Debug, Clone)]
pub struct GuestChannelBuilder {
    sysfs_root: PathBuf,
    selector: Selector,
    map: MapOptions,
    options: ChannelOptions,
    timeout: Duration,
    wake: WakePreference,
}

impl GuestChannelBuilder {
    /// How to wait for the host's messages (default: the best available,
    /// see [`WakePreference::Auto`]); [`WakePreference::Only`] forces one.
    ///
    /// ```no_run
    /// use ivchan_guest::{GuestChannel, WakePreference, WakeSource};
    ///
    /// // Sleep on ivchan's guest driver, or fail (no silent polling).
    /// let ch = GuestChannel::builder()
    ///     .wake(WakePreference::Only(WakeSource::Driver))
    ///     .open()?;
    /// assert_eq!(ch.wake_source(), WakeSource::Driver);
    /// # Ok::<(), ivchan_guest::GuestError>(())
    /// ```
    pub fn wake(mut self, wake: WakePreference) -> Self {
        self.wake = wake;
        self
    }

    /// Use the device at this PCI address (`0000:00:1f.0`).
    pub fn address(mut self, address: &str) -> Self {
        self.selector = Selector::Address(address.to_owned());
        self
    }

    /// Use the device whose header carries this channel name.
    pub fn name(mut self, name: &str) -> Self {
        self.selector = Selector::Name(name.to_owned());
        self
    }

    /// How to pick the device (default: this VM's identity).
    pub fn selector(mut self, selector: Selector) -> Self {
        self.selector = selector;
        self
    }

    /// How to map BAR2 (uncached or write-combining; enabling the device).
    pub fn map_options(mut self, map: MapOptions) -> Self {
        self.map = map;
        self
    }

    /// Wait strategy, heartbeat and peer timeout.
    pub fn options(mut self, options: ChannelOptions) -> Self {
        self.options = options;
        self
    }

    /// How long to wait for the device and for the host's header.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where sysfs is (tests point it at a fake tree).
    pub fn sysfs_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.sysfs_root = root.into();
        self
    }

    /// Finds the device, maps BAR2, waits for the host's header and
    /// attaches as the guest. A hotplugged device may show up late, maybe
    /// beside devices of other VMs: until the timeout, "no device" and "no
    /// match" mean "not yet".
    pub fn open(self) -> Result<GuestChannel, GuestError> {
        // One deadline for all of it: the device, the match, the header.
        let start = Instant::now();
        let strategy = WaitStrategy::backoff(Duration::from_millis(1), Duration::from_millis(100));
        let mut last = GuestError::NoDevice {
            root: self.sysfs_root.clone(),
        };
        let bar = poll_until(strategy, Some(self.timeout), || {
            match select(&self.sysfs_root, &self.selector, &self.map) {
                Err(
                    e @ (GuestError::NoDevice { .. }
                    | GuestError::NoMatch { .. }
                    | GuestError::NoSuchAddress { .. }),
                ) => {
                    last = e;
                    Ok(None)
                }
                other => other.map(Some),
            }
        })?;
        let Some(bar) = bar else {
            return Err(match last {
                // Devices were there, but the host never wrote a header.
                GuestError::NoMatch { waiting, .. } if !waiting.is_empty() => GuestError::Timeout {
                    address: waiting.join(", "),
                    waited: self.timeout,
                },
                other => other,
            });
        };
        let left = self.timeout.saturating_sub(start.elapsed());
        GuestChannel::from_bar_waking(bar, self.options, left, self.wake)
    }
}

impl GuestChannel {
    /// Opens the device whose header carries this VM's UUID, waiting up to
    /// [`DEFAULT_OPEN_TIMEOUT`] for it and for the host. See
    /// [`builder`](Self::builder) for the rest.
    pub fn open() -> Result<Self, GuestError> {
        Self::builder().open()
    }

    /// Options for opening, from the defaults: `/sys`, this VM's identity,
    /// an uncached mapping, default channel options, 60 s.
    pub fn builder() -> GuestChannelBuilder {
        GuestChannelBuilder {
            sysfs_root: PathBuf::from("/sys"),
            selector: Selector::Identity,
            map: MapOptions::default(),
            options: ChannelOptions::default(),
            timeout: DEFAULT_OPEN_TIMEOUT,
            wake: WakePreference::Auto,
        }
    }

    /// Attaches as the guest over a mapped BAR, waiting up to `wait` for the
    /// host's header, with the best wake source available
    /// ([`from_bar_waking`](Self::from_bar_waking)).
    pub fn from_bar(
        bar: MappedBar,
        options: ChannelOptions,
        wait: Duration,
    ) -> Result<Self, GuestError> {
        Self::from_bar_waking(bar, options, wait, WakePreference::Auto)
    }

    /// Attaches as the guest over a mapped BAR, waiting up to `wait` for the
    /// host's header. A write-combining mapping turns on the store fence. On
    /// an `ivshmem-doorbell` device the guest publishes its peer id
    /// (IVPosition) in its side block, rings the host through BAR0 when the
    /// host asks to be woken, and sleeps on the device's interrupt when
    /// `wake` finds one (VFIO remaps both BARs through `/dev/vfio`, the
    /// driver maps BAR0 through its device file);
    /// otherwise it polls for incoming messages.
    pub fn from_bar_waking(
        bar: MappedBar,
        mut options: ChannelOptions,
        wait: Duration,
        wake: WakePreference,
    ) -> Result<Self, GuestError> {
        let address = bar.device().address.clone();
        options.write_combining |= bar.write_combining();
        bar.wait_for_header(wait)?;
        let interrupts = wake::open(bar.device(), wake)?;
        let (bar, registers) = match (&interrupts, bar.device().kind) {
            (Some(Interrupts::Vfio(vfio)), _) => {
                let device = bar.device().clone();
                let registers = Registers::map_vfio(&device, vfio)?;
                let remapped = MappedBar::map_vfio(device, vfio)?;
                drop(bar);
                (remapped, Some(registers))
            }
            (Some(Interrupts::Driver(driver)), _) => {
                let registers = Registers::map_driver(bar.device(), driver)?;
                (bar, Some(registers))
            }
            (_, DeviceKind::Doorbell) => {
                let registers = Registers::map(bar.device())?;
                (bar, Some(registers))
            }
            (_, DeviceKind::Plain) => (bar, None),
        };
        let source = interrupts
            .as_ref()
            .map_or(WakeSource::Polling, Interrupts::source);
        let counters = Arc::new(WakeCounters::default());
        let bell_counters = counters.clone();
        // IVPosition is a 16-bit peer id in a 32-bit register.
        #[allow(clippy::cast_possible_truncation)]
        let peer = registers.as_ref().map(|r| r.iv_position() as u16);
        let channel = OwnedChannel::new(bar, |region| {
            let header = Header::open(region)?;
            let mut channel = Channel::attach(header, Side::Guest, options)?;
            if let (Some(regs), Some(peer)) = (registers, peer) {
                header.set_doorbell(Side::Guest, Some(DoorbellAddress { peer, vectors: 1 }));
                channel.set_notifier(Some(Box::new(GuestBell {
                    regs,
                    header,
                    interrupts,
                    counters: bell_counters,
                })));
            }
            Ok(channel)
        })
        .map_err(|source| GuestError::Channel { address, source })?;
        Ok(Self {
            channel,
            wake: source,
            counters,
            peer,
        })
    }

    /// How this channel waits for incoming messages.
    pub fn wake_source(&self) -> WakeSource {
        self.wake
    }

    /// This guest's peer id on the host's ivshmem server (IVPosition, read
    /// from BAR0), on a doorbell device.
    pub fn peer_id(&self) -> Option<u16> {
        self.peer
    }

    /// How this channel's sleeps on its interrupt ended so far (all zero
    /// when polling).
    pub fn wake_stats(&self) -> WakeStats {
        self.counters.get()
    }

    /// PCI address of the device.
    pub fn address(&self) -> &str {
        &self.channel.memory().device().address
    }

    /// The mapped device.
    pub fn bar(&self) -> &MappedBar {
        self.channel.memory()
    }
}

/// The guest's doorbell: rings the host's published peer id through BAR0,
/// and sleeps on the device's interrupt when it has one (VFIO or the
/// driver); without, the channel polls.
#[derive(Debug)]
struct GuestBell<'a> {
    regs: Registers,
    header: Header<'a>,
    interrupts: Option<Interrupts>,
    counters: Arc<WakeCounters>,
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
        self.interrupts.is_some()
    }

    fn wait(&self, timeout: Duration) {
        match &self.interrupts {
            Some(interrupts) => interrupts.wait(timeout, &self.counters),
            None => thread::sleep(timeout),
        }
    }
}
