//! Acks a stage's messages in as few frames as AMQP's `multiple` flag allows.
//!
//! One ack frame per message is most of what a quorum queue spends on its consumer side: on this
//! machine's RabbitMQ 3.10, consuming with one ack per message cost the broker 0.040–0.046 ms of
//! CPU per message, and with one `multiple` ack per 16 messages 0.013–0.017 ms (docs/benchmarks.md).
//!
//! Design constraints:
//! - A message is acked only after its handler settled it with `Ack` (its outcome is durable);
//!   the window changes how the acks travel, never which messages are acked.
//! - A `multiple` ack acks every unacked delivery of the channel up to its tag, so one is sent
//!   only for tags below the lowest tag still *open*: taken from the stream and not yet settled
//!   (being handled, being nacked, or dropped at a stop before a handler got it). Every delivery
//!   is registered as open the moment the stream yields it, and the stream yields in tag order,
//!   so nothing the broker holds unacked below that tag is anything but a settled `Ack`.
//! - A nack goes to the broker before its tag stops being open, so no `multiple` ack can overtake
//!   and ack it.
//! - An ack waits at most [`COALESCE`] to share a frame with its neighbours, or [`STRAGGLER_HOLD`]
//!   when a lower tag is still open, and is then sent on its own: a message a slow receiver holds
//!   delays no other message's ack by more than that.
//! - Before its channel closes (stop, resubscription, lost connection) the stage closes the
//!   window, which sends every ack it still holds: a graceful stop redelivers nothing settled.
//! - What to send is a pure decision over the window ([`Window::take_due`], table-tested); the
//!   flusher only sleeps and sends.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lapin::options::BasicAckOptions;
use lapin::Acker;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::telemetry::ConsumerMetrics;

/// How long the first settled ack waits for others to share its frame.
pub(crate) const COALESCE: Duration = Duration::from_millis(1);

/// How long a settled ack above a still-open tag waits for that tag before it is sent alone.
pub(crate) const STRAGGLER_HOLD: Duration = Duration::from_millis(5);

/// The acks of one consume channel, and the task that sends them.
pub(crate) struct AckWindow {
    window: Mutex<Window<Acker>>,
    wake: Notify,
    closing: CancellationToken,
    flusher: Mutex<Option<JoinHandle<()>>>,
    stage: &'static str,
    metrics: ConsumerMetrics,
}

impl AckWindow {
    /// A window for one channel of `stage`, with its flusher running.
    pub(crate) fn start(stage: &'static str, metrics: ConsumerMetrics) -> Arc<Self> {
        let window = Arc::new(Self {
            window: Mutex::new(Window::default()),
            wake: Notify::new(),
            closing: CancellationToken::new(),
            flusher: Mutex::new(None),
            stage,
            metrics,
        });
        let flusher = tokio::spawn(window.clone().run());
        *lock(&window.flusher) = Some(flusher);
        window
    }

    /// The stream yielded `tag`: it is open until it is settled.
    pub(crate) fn taken(&self, tag: u64) {
        lock(&self.window).taken(tag);
    }

    /// The handler settled `tag` with `Ack`: send it with the next frame.
    pub(crate) fn ack(&self, tag: u64, acker: Acker) {
        lock(&self.window).settled(tag, Instant::now(), acker);
        self.wake.notify_one();
    }

    /// `tag` was settled another way (a nack the broker has been sent): it no longer holds back
    /// the acks above it.
    pub(crate) fn settled_otherwise(&self, tag: u64) {
        lock(&self.window).forget(tag);
        self.wake.notify_one();
    }

    /// Stops the flusher and sends every ack still held. Call before the channel closes.
    pub(crate) async fn close(&self) {
        self.closing.cancel();
        let flusher = lock(&self.flusher).take();
        if let Some(flusher) = flusher {
            // It finishes the frames it is sending; its next wait sees `closing`.
            let _ = flusher.await;
        }
        self.flush(true).await;
    }

    async fn run(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.closing.cancelled() => return,
                () = self.wake.notified() => {}
            }
            loop {
                tokio::select! {
                    () = self.closing.cancelled() => return,
                    () = tokio::time::sleep(COALESCE) => {}
                }
                self.flush(false).await;
                let Some(deadline) = lock(&self.window).next_deadline() else {
                    break;
                };
                tokio::select! {
                    () = self.closing.cancelled() => return,
                    () = tokio::time::sleep_until(deadline.into()) => {}
                    () = self.wake.notified() => {}
                }
            }
        }
    }

    async fn flush(&self, all: bool) {
        let stage = [self.stage];
        let mut due = lock(&self.window).take_due(Instant::now(), all).into_iter();
        while let Some(frame) = due.next() {
            let options = BasicAckOptions {
                multiple: frame.multiple,
            };
            let error = match frame.handle.ack(options).await {
                Ok(true) => {
                    self.metrics.ack_frames.with_label_values(&stage).inc();
                    self.metrics
                        .messages_acked
                        .with_label_values(&stage)
                        .inc_by(frame.count);
                    continue;
                }
                Ok(false) => "the channel is closed".to_owned(),
                Err(error) => error.to_string(),
            };
            // The channel is gone: the rest of the frames would fail the same way, and the broker
            // redelivers all of them. One count and one line for the lot.
            let messages = frame.count + due.map(|frame| frame.count).sum::<u64>();
            self.metrics
                .ack_failures
                .with_label_values(&stage)
                .inc_by(messages);
            tracing::warn!(
                message = "Cannot ack messages; they will be redelivered.",
                stage = self.stage,
                messages,
                error = %error,
            );
            return;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The window's state is consistent after every call; a panic elsewhere cannot leave it half
    // changed.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One ack frame to send: `multiple` acks every unacked delivery up to `tag`; `count` is how many
/// settled messages it carries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame<A> {
    pub(crate) tag: u64,
    pub(crate) multiple: bool,
    pub(crate) count: u64,
    pub(crate) handle: A,
}

/// Which deliveries are open and which settled acks wait for a frame. `A` is what sends the frame
/// (lapin's `Acker` of the frame's tag); tests use `()`.
#[derive(Debug)]
pub(crate) struct Window<A> {
    open: BTreeSet<u64>,
    waiting: BTreeMap<u64, (Instant, A)>,
}

impl<A> Default for Window<A> {
    fn default() -> Self {
        Self {
            open: BTreeSet::new(),
            waiting: BTreeMap::new(),
        }
    }
}

impl<A> Window<A> {
    pub(crate) fn taken(&mut self, tag: u64) {
        self.open.insert(tag);
    }

    pub(crate) fn settled(&mut self, tag: u64, now: Instant, handle: A) {
        if self.open.remove(&tag) {
            self.waiting.insert(tag, (now, handle));
        }
    }

    pub(crate) fn forget(&mut self, tag: u64) {
        self.open.remove(&tag);
    }

    /// The frames to send now: one `multiple` ack for every waiting tag below the lowest open
    /// one, and a single ack for each waiting tag above it that has waited [`STRAGGLER_HOLD`]
    /// (every one, when `all`).
    pub(crate) fn take_due(&mut self, now: Instant, all: bool) -> Vec<Frame<A>> {
        let mut due = Vec::new();
        let lowest_open = self.open.first().copied().unwrap_or(u64::MAX);
        let above = self.waiting.split_off(&lowest_open);
        let below = std::mem::replace(&mut self.waiting, above);
        let count = below.len() as u64;
        if let Some((tag, (_, handle))) = below.into_iter().next_back() {
            due.push(Frame {
                tag,
                multiple: true,
                count,
                handle,
            });
        }
        let stragglers: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (since, _))| all || now >= *since + STRAGGLER_HOLD)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in stragglers {
            if let Some((_, handle)) = self.waiting.remove(&tag) {
                due.push(Frame {
                    tag,
                    multiple: false,
                    count: 1,
                    handle,
                });
            }
        }
        due
    }

    /// When the oldest waiting ack is due on its own, if any waits.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.waiting
            .values()
            .map(|(since, _)| *since + STRAGGLER_HOLD)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u64, multiple: bool, count: u64) -> Frame<()> {
        Frame {
            tag,
            multiple,
            count,
            handle: (),
        }
    }

    /// (taken, acked, nacked, waited, all) → the frames sent.
    #[test]
    fn what_is_sent_when() {
        let hold = STRAGGLER_HOLD;
        let none = Duration::ZERO;
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, &[u64], &[u64], &[u64], Duration, bool, Vec<Frame<()>>)] = &[
            ("nothing settled", &[1, 2, 3], &[], &[], hold, false, vec![]),
            (
                "a settled prefix goes in one multiple ack",
                &[1, 2, 3, 4],
                &[2, 1, 3],
                &[],
                none,
                false,
                vec![frame(3, true, 3)],
            ),
            (
                "everything settled: one frame up to the highest",
                &[1, 2, 3],
                &[3, 1, 2],
                &[],
                none,
                false,
                vec![frame(3, true, 3)],
            ),
            (
                "above an open tag an ack waits",
                &[1, 2, 3],
                &[2, 3],
                &[],
                none,
                false,
                vec![],
            ),
            (
                "until it has waited the hold, then alone",
                &[1, 2, 3],
                &[2, 3],
                &[],
                hold,
                false,
                vec![frame(2, false, 1), frame(3, false, 1)],
            ),
            (
                "a prefix and a straggler",
                &[1, 2, 3, 4],
                &[1, 2, 4],
                &[],
                hold,
                false,
                vec![frame(2, true, 2), frame(4, false, 1)],
            ),
            (
                "a nacked tag no longer holds the acks above it",
                &[1, 2, 3],
                &[2, 3],
                &[1],
                none,
                false,
                vec![frame(3, true, 2)],
            ),
            (
                "a taken tag never settled (dropped at a stop) is never covered",
                &[1, 2, 3],
                &[1, 3],
                &[],
                none,
                true,
                vec![frame(1, true, 1), frame(3, false, 1)],
            ),
            (
                "closing sends every waiting ack",
                &[5, 6, 7, 8],
                &[6, 8],
                &[],
                none,
                true,
                vec![frame(6, false, 1), frame(8, false, 1)],
            ),
            (
                "an ack for a tag never taken is ignored",
                &[1],
                &[9],
                &[],
                hold,
                true,
                vec![],
            ),
        ];
        for (name, taken, acked, nacked, waited, all, expected) in cases {
            let start = Instant::now();
            let mut window = Window::default();
            for tag in *taken {
                window.taken(*tag);
            }
            for tag in *acked {
                window.settled(*tag, start, ());
            }
            for tag in *nacked {
                window.forget(*tag);
            }
            let due = window.take_due(start + *waited, *all);
            assert_eq!(&due, expected, "{name}");
        }
    }

    #[test]
    fn what_was_sent_is_not_sent_again() {
        let start = Instant::now();
        let mut window = Window::default();
        for tag in 1..=4 {
            window.taken(tag);
        }
        window.settled(1, start, ());
        window.settled(3, start, ());
        assert_eq!(window.take_due(start, false), vec![frame(1, true, 1)]);
        assert_eq!(window.next_deadline(), Some(start + STRAGGLER_HOLD));
        window.settled(2, start, ());
        assert_eq!(window.take_due(start, false), vec![frame(3, true, 2)]);
        assert_eq!(window.next_deadline(), None);
        assert_eq!(window.take_due(start + STRAGGLER_HOLD, true), vec![]);
        window.settled(4, start, ());
        assert_eq!(window.take_due(start, false), vec![frame(4, true, 1)]);
    }
}
