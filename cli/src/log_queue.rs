//! gcslock's messages reach stderr through a bounded queue and a writer thread of
//! their own, so that no log call can wait on the pipe.
//!
//! Why: gcslock shares stderr with the command it runs, and refreshes the lease and
//! signals the command on the thread that logs. A stderr pipe nobody drains (a
//! stalled log collector, Docker's blocking log mode, a terminal paused with Ctrl-S)
//! would otherwise freeze that thread in `write(2)`, and with it the SIGKILL that
//! keeps a cut-off job from running beside the next holder. So a log call only
//! offers its line to the queue (`try_send`, never blocking); when the queue is full
//! the line is dropped and counted, and once lines are accepted again a notice
//! says how many were lost. At exit, flushing waits a bounded time.
//!
//! Not `tracing-appender`'s `non_blocking`: its guard's `Drop` prints to *stdout*
//! (the command's, possibly a blocked or closed pipe) when the queue is full, which
//! can hang or panic gcslock's exit, and it cannot say when the queue has drained.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Lines waiting for stderr. gcslock writes a few lines per run; a queue this long
/// only fills when stderr is blocked.
const QUEUE_LINES: usize = 256;

/// Formats the notice about `lost` dropped lines, as a complete line in the log format.
pub type LostNotice = fn(lost: u64) -> Vec<u8>;

/// The sending side, shared by every log call.
#[derive(Clone)]
pub struct LogQueue {
    sender: SyncSender<Vec<u8>>,
    shared: Arc<Shared>,
    notice: LostNotice,
}

struct Shared {
    /// Lines dropped because the queue was full.
    dropped: AtomicU64,
    /// Of those, the ones a notice has already reported (or queued).
    reported: AtomicU64,
    /// Lines queued and not yet written (or given up on).
    pending: Mutex<usize>,
    drained: Condvar,
}

impl LogQueue {
    /// Starts the writer thread for `out`. If no thread can be started, lines are
    /// dropped (and counted) rather than written on the caller's thread.
    pub fn start<W: Write + Send + 'static>(out: W, notice: LostNotice) -> Self {
        Self::with_capacity(out, notice, QUEUE_LINES)
    }

    fn with_capacity<W: Write + Send + 'static>(
        out: W,
        notice: LostNotice,
        capacity: usize,
    ) -> Self {
        let (sender, receiver) = sync_channel(capacity);
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            pending: Mutex::new(0),
            drained: Condvar::new(),
        });
        let writer_shared = Arc::clone(&shared);
        // A failure to spawn drops the receiver: every later send fails and counts.
        let _ = std::thread::Builder::new()
            .name("gcslock-log".into())
            .spawn(move || write_lines(receiver, out, &writer_shared));
        Self {
            sender,
            shared,
            notice,
        }
    }

    /// Queues one line without ever blocking; first the notice of earlier losses,
    /// if any, so that it appears where the gap is.
    pub fn offer(&self, line: Vec<u8>) {
        let dropped = self.shared.dropped.load(Ordering::Acquire);
        let reported = self.shared.reported.load(Ordering::Acquire);
        let lost = dropped.saturating_sub(reported);
        if lost > 0 && self.try_queue((self.notice)(lost)) {
            self.shared.reported.fetch_add(lost, Ordering::AcqRel);
        }
        if !self.try_queue(line) {
            self.shared.dropped.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn try_queue(&self, line: Vec<u8>) -> bool {
        self.add_pending(1);
        let queued = self.sender.try_send(line).is_ok();
        if !queued {
            self.shared.line_done();
        }
        queued
    }

    fn add_pending(&self, lines: usize) {
        if let Ok(mut pending) = self.shared.pending.lock() {
            *pending = pending.saturating_add(lines);
        }
    }

    /// Lines dropped so far.
    #[cfg(test)]
    fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Acquire)
    }

    /// At exit: reports losses not yet reported, then waits at most `limit` for the
    /// queue to drain. Returns whether it drained; whatever is left is lost with the
    /// process, as stderr is not taking it.
    pub fn flush_within(&self, limit: Duration) -> bool {
        self.offer_notice_only();
        let deadline = Instant::now().checked_add(limit);
        let Ok(mut pending) = self.shared.pending.lock() else {
            return false;
        };
        while *pending > 0 {
            let left = deadline.map_or(limit, |at| at.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return false;
            }
            match self.shared.drained.wait_timeout(pending, left) {
                Ok((guard, _)) => pending = guard,
                Err(_) => return false,
            }
        }
        true
    }

    fn offer_notice_only(&self) {
        let lost = self
            .shared
            .dropped
            .load(Ordering::Acquire)
            .saturating_sub(self.shared.reported.load(Ordering::Acquire));
        if lost > 0 && self.try_queue((self.notice)(lost)) {
            self.shared.reported.fetch_add(lost, Ordering::AcqRel);
        }
    }
}

impl Shared {
    fn line_done(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            *pending = pending.saturating_sub(1);
            if *pending == 0 {
                self.drained.notify_all();
            }
        }
    }
}

/// The writer thread: blocks on stderr so that nobody else has to. A failed write
/// (stderr closed) loses the line; nobody could be told.
fn write_lines<W: Write>(receiver: Receiver<Vec<u8>>, mut out: W, shared: &Shared) {
    for line in receiver {
        let _ = out.write_all(&line).and_then(|()| out.flush());
        shared.line_done();
    }
}

/// One event's bytes, queued as one line when the formatter has written them.
pub struct QueuedLine<'a> {
    queue: &'a LogQueue,
    buffer: Vec<u8>,
}

impl Write for QueuedLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine<'_> {
    fn drop(&mut self) {
        if !self.buffer.is_empty() {
            self.queue.offer(std::mem::take(&mut self.buffer));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogQueue {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine {
            queue: self,
            buffer: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A writer that blocks until the test lets it go, like a pipe nobody drains.
    struct Blocked {
        gate: Receiver<()>,
        written: mpsc::Sender<Vec<u8>>,
    }

    impl Write for Blocked {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _ = self.gate.recv();
            let _ = self.written.send(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn notice(lost: u64) -> Vec<u8> {
        format!("lost {lost}\n").into_bytes()
    }

    #[test]
    fn a_blocked_writer_never_blocks_the_caller_and_losses_are_reported() {
        let (open, gate) = mpsc::channel();
        let (written, lines) = mpsc::channel();
        let queue = LogQueue::with_capacity(Blocked { gate, written }, notice, 2);
        // The writer thread takes the first line and blocks on it; two more fill the
        // queue; the rest are dropped. None of these calls may block.
        for n in 0..10 {
            queue.offer(format!("line {n}\n").into_bytes());
        }
        let dropped = queue.dropped();
        assert!(dropped >= 7, "{dropped}");
        assert!(!queue.flush_within(Duration::from_millis(20)));
        // Output flows again: the lines that were queued come out, and the next line
        // accepted is preceded by the notice of the losses.
        for _ in 0..100 {
            let _ = open.send(());
        }
        let accepted = 10 - usize::try_from(dropped).expect("small");
        for _ in 0..accepted {
            lines
                .recv_timeout(Duration::from_secs(30))
                .expect("a queued line");
        }
        queue.offer(b"after\n".to_vec());
        assert!(queue.flush_within(Duration::from_secs(30)));
        let rest: Vec<String> = lines
            .try_iter()
            .map(|line| String::from_utf8_lossy(&line).into_owned())
            .collect();
        assert_eq!(rest, [format!("lost {dropped}\n"), "after\n".to_owned()]);
    }

    #[test]
    fn flushing_waits_for_the_queue_to_drain() {
        let (written, lines) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        for _ in 0..3 {
            let _ = open.send(());
        }
        let queue = LogQueue::with_capacity(Blocked { gate, written }, notice, 8);
        for n in 0..3 {
            queue.offer(format!("line {n}\n").into_bytes());
        }
        assert!(queue.flush_within(Duration::from_secs(10)));
        assert_eq!(lines.try_iter().count(), 3);
        assert_eq!(queue.dropped(), 0);
    }
}
