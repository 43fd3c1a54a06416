//! The writer: one task that owns the head of the chain. Events queue in a
//! bounded channel; the task takes whatever has queued (up to a batch),
//! chains and inserts it in one transaction, answers the callers that
//! wait, forwards the rows to the sinks and signs checkpoints. A failed
//! write marks the log unwritable, raises an alarm and is retried; the
//! callers of that batch are told at once.

use crate::chain::{Row, GENESIS};
use crate::config::{AuditConfig, Unattributed};
use crate::db::{self, OpenMode};
use crate::event::{now_us, AuditEvent, Outcome};
use crate::keys::{self, Keys};
use crate::owners::{self, Plan};
use crate::pii::{self, Vault};
use crate::query::AuditReader;
use crate::sink::Sinks;
use crate::AuditError;
use sqlx::SqlitePool;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

type Ack = oneshot::Sender<Result<(), String>>;

// Events are nearly all of the traffic: boxing them to shrink the rare
// control variants would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
enum Command {
    Event(AuditEvent, Option<Ack>),
    Checkpoint(oneshot::Sender<Result<i64, String>>),
    Shutdown(oneshot::Sender<()>),
}

/// A handle on the running audit log; cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Command>,
    config: AuditConfig,
    pool: SqlitePool,
    vault: Arc<Vault>,
    /// False from a failed write (or a refused event) until the next
    /// successful write.
    writable: AtomicBool,
    /// Events that could not be queued since the last `audit.lost`.
    lost: AtomicU64,
    /// True while edge events are being sampled.
    degraded: AtomicBool,
    sampled_out: AtomicU64,
    sample_tick: AtomicU64,
    /// Microseconds since the epoch of the last alarm line, to keep a
    /// flood from turning into a flood of alarms.
    last_alarm_us: AtomicI64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Auditor {
    /// Opens the log in the store of `data_dir` (migrated already), loads
    /// or creates its keys, checks the head against the last checkpoint
    /// and starts the writer. Fails if the first writes fail: a platform
    /// whose audit log is broken does not start.
    pub async fn start(data_dir: &Path, config: AuditConfig) -> Result<Auditor, AuditError> {
        let pool = db::open_with_cache(
            data_dir,
            OpenMode::Write {
                fsync: config.fsync,
            },
            Some(db::READER_CACHE_MIB.min(config.cache_mib)),
        )
        .await?;
        // The writer appends through its own connection; readers (and
        // the erasure-side key lookups) use the pool above.
        let writer_pool = db::open_writer(data_dir, config.fsync, config.cache_mib).await?;
        let key_dir = config
            .key_dir
            .clone()
            .unwrap_or_else(|| keys::default_key_dir(data_dir));
        let (keys, _) = keys::load_or_create(&key_dir, true)?;
        let vault = Arc::new(Vault::load(&key_dir, true)?);
        let (head_seq, head_mac) = db::head(&pool).await?.unwrap_or((0, GENESIS.to_vec()));
        let head_time = db::time_at(&pool, head_seq).await?.unwrap_or(0);
        let sinks = Sinks::start(&config);
        let mut writer = Writer {
            pool: writer_pool,
            keys,
            vault: vault.clone(),
            key_dir,
            head_seq,
            head_mac,
            head_time,
            checkpointed: head_seq,
            last_checkpoint: Instant::now(),
            config: config.clone(),
            sinks,
        };
        db::refresh_statistics(&writer.pool).await;
        let startup = writer.startup_events().await?;
        if !startup.is_empty() {
            writer.write(&startup).await?;
            writer.checkpoint().await?;
        }

        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let inner = Arc::new(Inner {
            tx,
            config,
            pool,
            vault,
            writable: AtomicBool::new(true),
            lost: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            sampled_out: AtomicU64::new(0),
            sample_tick: AtomicU64::new(0),
            last_alarm_us: AtomicI64::new(0),
            writer: Mutex::new(None),
        });
        let task = tokio::spawn(writer.run(rx, Arc::downgrade(&inner)));
        *inner.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(Auditor { inner })
    }

    /// True iff the last write succeeded and no event was refused since.
    pub fn writable(&self) -> bool {
        self.inner.writable.load(Ordering::Acquire)
    }

    /// Records `event` and waits until its batch is committed.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        let config = &self.inner.config;
        let sent = self
            .inner
            .tx
            .send_timeout(Command::Event(event, Some(ack)), config.record_timeout)
            .await;
        if sent.is_err() {
            self.refused("the audit queue is full or closed");
            return Err(AuditError::Unavailable("the audit queue is full".into()));
        }
        match tokio::time::timeout(config.record_timeout, done).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(problem))) => Err(AuditError::Unavailable(problem)),
            Ok(Err(_)) => Err(AuditError::Unavailable("the audit writer stopped".into())),
            Err(_) => Err(AuditError::Unavailable(
                "the audit write did not finish in time".into(),
            )),
        }
    }

    /// Queues `event` without waiting; `ack`, if given, learns whether it
    /// was committed. Edge-only events may be sampled under flood (see
    /// [`crate::EdgeOverflow`]). `Err` means the event was not queued.
    pub fn submit(&self, event: AuditEvent, ack: Option<Ack>) -> Result<(), AuditError> {
        let inner = &self.inner;
        let edge = &inner.config.edge;
        if let Some(one_in) = edge.sample_one_in.filter(|_| event.is_in(&edge.types)) {
            if self.queue_fill() > edge.high_water {
                if !inner.degraded.swap(true, Ordering::AcqRel) {
                    self.alarm("audit queue flooded: edge events are now sampled");
                    let notice = AuditEvent::new("audit.degraded")
                        .meta("state", "sampling")
                        .meta("one_in", one_in);
                    let _ = self.enqueue(notice, None);
                }
                let tick = inner.sample_tick.fetch_add(1, Ordering::Relaxed);
                if tick % one_in.max(1) != 0 {
                    inner.sampled_out.fetch_add(1, Ordering::Relaxed);
                    if let Some(ack) = ack {
                        let _ = ack.send(Ok(()));
                    }
                    return Ok(());
                }
            }
        }
        self.enqueue(event, ack)
    }

    /// Queues `event`, waiting for room in the queue instead of refusing
    /// it; for bulk producers that can afford to wait (imports, benches).
    pub async fn submit_wait(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.inner
            .tx
            .send(Command::Event(event, None))
            .await
            .map_err(|_| AuditError::Unavailable("the audit writer stopped".into()))
    }

    fn enqueue(&self, event: AuditEvent, ack: Option<Ack>) -> Result<(), AuditError> {
        match self.inner.tx.try_send(Command::Event(event, ack)) {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Command::Event(_, Some(ack)) = e.into_inner() {
                    let _ = ack.send(Err("the audit queue is full".into()));
                }
                self.refused("the audit queue is full or closed");
                Err(AuditError::Unavailable("the audit queue is full".into()))
            }
        }
    }

    fn refused(&self, why: &str) {
        self.inner.lost.fetch_add(1, Ordering::Relaxed);
        self.inner.writable.store(false, Ordering::Release);
        self.alarm(why);
    }

    /// One alarm line per second at most.
    fn alarm(&self, why: &str) {
        let now = now_us();
        let last = self.inner.last_alarm_us.load(Ordering::Relaxed);
        if now - last >= 1_000_000
            && self
                .inner
                .last_alarm_us
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!(target: "spinforge::alarm", alarm = "audit", "{why}");
        }
    }

    /// How full the queue is, 0..1.
    fn queue_fill(&self) -> f64 {
        let tx = &self.inner.tx;
        let max = tx.max_capacity().max(1);
        (max - tx.capacity()) as f64 / max as f64
    }

    /// Writes everything queued so far and signs a checkpoint over the
    /// head. Returns the checkpoint's sequence number (0: empty log).
    pub async fn checkpoint(&self) -> Result<i64, AuditError> {
        let (ack, done) = oneshot::channel();
        self.inner
            .tx
            .send(Command::Checkpoint(ack))
            .await
            .map_err(|_| AuditError::Unavailable("the audit writer stopped".into()))?;
        done.await
            .map_err(|_| AuditError::Unavailable("the audit writer stopped".into()))?
            .map_err(AuditError::Unavailable)
    }

    /// Writes what is queued, signs a last checkpoint and stops the writer.
    pub async fn shutdown(&self) {
        let (ack, done) = oneshot::channel();
        if self.inner.tx.send(Command::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
        let task = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    pub(crate) fn record_timeout(&self) -> Duration {
        self.inner.config.record_timeout
    }

    /// Read access to the same log.
    pub fn reader(&self) -> AuditReader {
        AuditReader::new(self.inner.pool.clone(), Some(self.inner.vault.clone()))
    }

    /// The keys of personal fields: which subjects a user's erasure must
    /// destroy, and the cache to clear once it has.
    pub fn pii(&self) -> &Vault {
        &self.inner.vault
    }
}

struct Writer {
    pool: SqlitePool,
    keys: Keys,
    vault: Arc<Vault>,
    key_dir: PathBuf,
    head_seq: i64,
    head_mac: Vec<u8>,
    /// Microseconds since the epoch of the newest row.
    head_time: i64,
    /// Sequence number of the newest checkpoint.
    checkpointed: i64,
    last_checkpoint: Instant,
    config: AuditConfig,
    sinks: Option<Sinks>,
}

impl Writer {
    /// What must be written before anything else: the signing key's
    /// anchor when it is new or changed, and an alert when the log no
    /// longer matches its last checkpoint.
    async fn startup_events(&self) -> Result<Vec<AuditEvent>, AuditError> {
        let mut events = Vec::new();
        let mut newest = db::checkpoints(&self.pool).await?.pop();
        if let Ok(Some(file)) = keys::load_last_checkpoint(&self.key_dir) {
            if newest.as_ref().is_none_or(|c| c.seq < file.seq) {
                newest = Some(file);
            }
        }
        if let Some(checkpoint) = newest {
            let stored = db::mac_at(&self.pool, checkpoint.seq).await?;
            if stored.as_deref() != Some(checkpoint.mac.as_slice()) {
                tracing::error!(
                    target: "spinforge::alarm", alarm = "audit",
                    checkpoint = checkpoint.seq, head = self.head_seq,
                    "the audit log does not match its last checkpoint; run `spinforge audit verify`"
                );
                events.push(
                    AuditEvent::new("security.alert")
                        .result(Outcome::Failure)
                        .resource("audit-log")
                        .meta("reason", "the audit log does not match its last checkpoint")
                        .meta("checkpoint_seq", checkpoint.seq)
                        .meta("head_seq", self.head_seq),
                );
            }
        }
        let public = hex::encode(self.keys.signing.public_key());
        match db::anchored_key(&self.pool).await? {
            Some(anchored) if anchored == public => {}
            anchored => {
                let reason = if anchored.is_some() {
                    "the checkpoint signing key on disk changed"
                } else {
                    "first key of this log"
                };
                if anchored.is_some() {
                    tracing::error!(target: "spinforge::alarm", alarm = "audit", "{reason}");
                    events.push(
                        AuditEvent::new("security.alert")
                            .result(Outcome::Failure)
                            .resource("audit-log")
                            .meta("reason", reason),
                    );
                }
                events.push(
                    AuditEvent::new("audit.key")
                        .resource("audit-log")
                        .meta("public_key", public)
                        .meta("key_id", self.keys.signing.key_id())
                        .meta("reason", reason),
                );
            }
        }
        Ok(events)
    }

    /// Chains `events` onto the head and commits them in one transaction.
    /// The head moves only if the commit succeeds.
    async fn write(&mut self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let ip_mode = self.config.ip_mode;
        // Whose each personal field is, decided on the events as given
        // (before any masking hides the addresses).
        let resolved = owners::resolve(&self.vault, &self.pool, owners::addresses_of(events)).await;
        let plans: Vec<Plan> = events.iter().map(|e| owners::plan(e, &resolved)).collect();
        let subjects: Vec<String> = plans.iter().flat_map(Plan::subjects).cloned().collect();
        let (subject_keys, fresh_keys) = self.vault.keys_for_writing(&self.pool, subjects).await?;
        let mut plain_rows = Vec::new();
        let mut rows = Vec::with_capacity(events.len());
        let mut prev = self.head_mac.clone();
        let mut seq = self.head_seq;
        let mut time = self.head_time;
        for (event, plan) in events.iter().zip(&plans) {
            seq += 1;
            let mut event = event.clone().sanitise(ip_mode);
            if plan.actor.is_none() && self.config.unattributed == Unattributed::Anonymise {
                event.client_ip = event.client_ip.map(crate::anonymise_ip);
                event.user_agent = event.user_agent.as_deref().map(owners::product_token);
            }
            if self.config.email_mode == crate::EmailMode::Masked {
                for (name, value) in event.metadata.iter_mut() {
                    if let serde_json::Value::String(text) = value {
                        if pii::is_personal_key(name) && text.contains('@') {
                            *text = pii::mask_email(text);
                        }
                    }
                }
            }
            // Time never goes back along the chain, so time ranges are
            // seq ranges; an event stamped earlier keeps its own time in
            // the metadata.
            if event.time_us < time {
                event
                    .metadata
                    .insert("original_time_us".into(), event.time_us.into());
                event.time_us = time;
            }
            time = event.time_us;
            let mut row = to_row(seq, event, prev);
            if self.sinks.is_some() {
                plain_rows.push(row.clone());
            }
            // The MAC covers the ciphertext: erasing a key later leaves
            // every stored byte, and so the chain, as it was.
            self.vault.seal_row(&mut row, plan, &subject_keys)?;
            row.mac = self.keys.chain.mac(&row.prev_mac, &row).to_vec();
            prev = row.mac.clone();
            rows.push(row);
        }
        db::append(&self.pool, &rows, &fresh_keys).await?;
        self.vault.remember(subject_keys);
        self.head_seq = seq;
        self.head_mac = prev;
        self.head_time = time;
        // Limitation: sinks get the personal fields in clear (masked by
        // config), and erasure cannot reach copies they already sent
        // (a sink-side retention policy, or masking, would).
        if let Some(sinks) = &self.sinks {
            for (plain, sealed) in plain_rows.iter_mut().zip(&rows) {
                plain.mac = sealed.mac.clone();
            }
            sinks.forward(plain_rows);
        }
        Ok(())
    }

    /// Signs the head, stores the checkpoint in the table and in its file.
    async fn checkpoint(&mut self) -> Result<i64, AuditError> {
        self.last_checkpoint = Instant::now();
        if self.head_seq == 0 || self.head_seq == self.checkpointed {
            return Ok(self.checkpointed);
        }
        let checkpoint = self
            .keys
            .signing
            .sign(self.head_seq, &self.head_mac, now_us());
        db::insert_checkpoint(&self.pool, &checkpoint).await?;
        keys::save_last_checkpoint(&self.key_dir, &checkpoint)
            .map_err(|e| AuditError::key(&self.key_dir, e))?;
        self.checkpointed = checkpoint.seq;
        tracing::debug!(seq = checkpoint.seq, "audit checkpoint signed");
        db::refresh_statistics(&self.pool).await;
        Ok(checkpoint.seq)
    }

    fn checkpoint_due(&self) -> bool {
        let behind = (self.head_seq - self.checkpointed) as u64;
        behind >= self.config.checkpoint_every
            || (behind > 0 && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>, inner: std::sync::Weak<Inner>) {
        let mut tick = tokio::time::interval(self.config.checkpoint_interval.max(MIN_TICK));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed: Vec<AuditEvent> = Vec::new();
        let mut next: Option<Command> = None;
        loop {
            let Some(state) = inner.upgrade() else { break };
            if !failed.is_empty() {
                if self.retry(&mut rx, &state, &mut failed).await {
                    return;
                }
                continue;
            }
            let command = match next.take() {
                Some(command) => command,
                None => tokio::select! {
                    command = rx.recv() => match command {
                        Some(command) => command,
                        None => break,
                    },
                    _ = tick.tick() => {
                        if self.checkpoint_due() {
                            self.checkpoint_or_alarm().await;
                        }
                        continue;
                    }
                },
            };
            match command {
                Command::Event(event, ack) => {
                    next = self
                        .batch(&mut rx, &state, vec![event], vec![ack], &mut failed)
                        .await;
                }
                Command::Checkpoint(ack) => {
                    let _ = ack.send(self.checkpoint().await.map_err(|e| e.to_string()));
                }
                Command::Shutdown(ack) => {
                    self.shutdown(&mut rx).await;
                    let _ = ack.send(());
                    return;
                }
            }
        }
        self.checkpoint_or_alarm().await;
    }

    /// Gathers more queued events into the batch, writes it and answers
    /// its callers. Returns a non-event command met while gathering.
    async fn batch(
        &mut self,
        rx: &mut mpsc::Receiver<Command>,
        state: &Inner,
        mut events: Vec<AuditEvent>,
        mut acks: Vec<Option<Ack>>,
        failed: &mut Vec<AuditEvent>,
    ) -> Option<Command> {
        let deadline = tokio::time::Instant::now() + self.config.batch_delay;
        let mut deferred = None;
        while events.len() < self.config.batch_max {
            let next = match rx.try_recv() {
                Ok(command) => Some(command),
                Err(_) if self.config.batch_delay.is_zero() => None,
                Err(_) => tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            match next {
                Some(Command::Event(event, ack)) => {
                    events.push(event);
                    acks.push(ack);
                }
                Some(other) => {
                    deferred = Some(other);
                    break;
                }
                None => break,
            }
        }
        let mut notices = self.notices(state);
        let result = if notices.is_empty() {
            self.write(&events).await
        } else {
            notices.append(&mut events);
            events = notices;
            self.write(&events).await
        };
        match result {
            Ok(()) => {
                for ack in acks.into_iter().flatten() {
                    let _ = ack.send(Ok(()));
                }
                if self.checkpoint_due() {
                    self.checkpoint_or_alarm().await;
                }
            }
            Err(e) => {
                // Unwritable first: a caller told of the failure must
                // find the log marked as failed.
                let problem = e.to_string();
                self.failed(state, &problem);
                for ack in acks.into_iter().flatten() {
                    let _ = ack.send(Err(problem.clone()));
                }
                *failed = events;
            }
        }
        deferred
    }

    /// After a failed write: waits, answering newcomers with a refusal
    /// (their events are kept for the retry), then tries again. Returns
    /// true when the writer must stop.
    async fn retry(
        &mut self,
        rx: &mut mpsc::Receiver<Command>,
        state: &Inner,
        failed: &mut Vec<AuditEvent>,
    ) -> bool {
        let wake = tokio::time::sleep(self.config.retry_interval);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                () = &mut wake => break,
                command = rx.recv() => match command {
                    Some(Command::Event(event, ack)) => {
                        if let Some(ack) = ack {
                            let _ = ack.send(Err("the audit log is not writable".into()));
                        }
                        if failed.len() < self.config.queue_capacity {
                            failed.push(event);
                        } else {
                            state.lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Command::Checkpoint(ack)) => {
                        let _ = ack.send(Err("the audit log is not writable".into()));
                    }
                    Some(Command::Shutdown(ack)) => {
                        if self.write(failed).await.is_ok() {
                            self.checkpoint_or_alarm().await;
                        }
                        let _ = ack.send(());
                        return true;
                    }
                    None => return true,
                },
            }
        }
        // The head is read again: if another process appended meanwhile
        // (it should not), chaining onto its rows beats failing forever
        // on a taken sequence number.
        if let Ok(Some((seq, mac))) = db::head(&self.pool).await {
            if seq != self.head_seq {
                tracing::warn!(target: "spinforge::alarm", alarm = "audit", seq,
                    expected = self.head_seq, "the audit log was appended to by someone else");
                self.head_seq = seq;
                self.head_mac = mac;
                if let Ok(Some(time)) = db::time_at(&self.pool, seq).await {
                    self.head_time = self.head_time.max(time);
                }
            }
        }
        let mut events = self.notices(state);
        events.append(failed);
        match self.write(&events).await {
            Ok(()) => {
                state.writable.store(true, Ordering::Release);
                tracing::warn!(target: "spinforge::alarm", alarm = "audit",
                    "the audit log is writable again");
            }
            Err(e) => {
                self.failed(state, &e.to_string());
                *failed = events;
            }
        }
        false
    }

    /// Writes whatever queued before the shutdown, then signs a last
    /// checkpoint.
    async fn shutdown(&mut self, rx: &mut mpsc::Receiver<Command>) {
        let mut events = Vec::new();
        let mut acks = Vec::new();
        while let Ok(command) = rx.try_recv() {
            match command {
                Command::Event(event, ack) => {
                    events.push(event);
                    acks.push(ack);
                }
                Command::Checkpoint(ack) => {
                    let _ = ack.send(Err("the audit log is shutting down".into()));
                }
                Command::Shutdown(ack) => {
                    let _ = ack.send(());
                }
            }
        }
        if !events.is_empty() {
            let result = self.write(&events).await.map_err(|e| e.to_string());
            for ack in acks.into_iter().flatten() {
                let _ = ack.send(result.clone());
            }
        }
        self.checkpoint_or_alarm().await;
    }

    /// Events the log writes about itself before the next batch: how many
    /// events were refused, and the end of a sampling period.
    fn notices(&self, state: &Inner) -> Vec<AuditEvent> {
        let mut out = Vec::new();
        let lost = state.lost.swap(0, Ordering::Relaxed);
        if lost > 0 {
            out.push(
                AuditEvent::new("audit.lost")
                    .result(Outcome::Failure)
                    .resource("audit-log")
                    .meta("count", lost),
            );
        }
        let fill = {
            let max = state.tx.max_capacity().max(1);
            (max - state.tx.capacity()) as f64 / max as f64
        };
        if state.degraded.load(Ordering::Acquire)
            && fill < self.config.edge.high_water / 2.0
            && state.degraded.swap(false, Ordering::AcqRel)
        {
            out.push(
                AuditEvent::new("audit.degraded")
                    .resource("audit-log")
                    .meta("state", "ended")
                    .meta("sampled_out", state.sampled_out.swap(0, Ordering::Relaxed)),
            );
        }
        out
    }

    fn failed(&self, state: &Inner, problem: &str) {
        state.writable.store(false, Ordering::Release);
        tracing::error!(target: "spinforge::alarm", alarm = "audit", error = %problem,
            "the audit log cannot be written; security-relevant requests are refused");
    }

    async fn checkpoint_or_alarm(&mut self) {
        if let Err(e) = self.checkpoint().await {
            tracing::error!(target: "spinforge::alarm", alarm = "audit", error = %e,
                "cannot write an audit checkpoint");
        }
    }
}

/// The shortest checkpoint timer period, so a zero setting cannot spin.
const MIN_TICK: Duration = Duration::from_millis(100);

fn to_row(seq: i64, event: AuditEvent, prev_mac: Vec<u8>) -> Row {
    let metadata = serde_json::Value::Object(event.metadata).to_string();
    Row {
        seq,
        time_us: event.time_us,
        kind: event.kind,
        actor_user: event.actor.user_id,
        actor_role: event.actor.role,
        actor_key: event.actor.api_key_id,
        client_ip: event.client_ip.map(|ip| ip.to_string()),
        user_agent: event.user_agent,
        resource: event.resource,
        action: event.action,
        result: event.result.as_str().to_owned(),
        request_id: event.request_id,
        session_id: event.session_id,
        customer: event.customer,
        metadata,
        prev_mac,
        mac: Vec::new(),
    }
}
