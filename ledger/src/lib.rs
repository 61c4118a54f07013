//! The ledger: PostgreSQL as the system of record for finalized orders and for every event's
//! latest decision (configuration, retention, pause, end: [`Ledger::record_decision`]), from
//! which a Redis that lost them is rebuilt.
//!
//! Redis stays the admission engine (the purchase path never touches the database); the
//! worker writes each batch of finalized orders here, in one statement, and only then confirms
//! and acknowledges them in Redis. A crash anywhere in between means a redelivery, whose write
//! is a no-op (`ON CONFLICT (order_id)`), so an order is recorded once.
//!
//! # Layout
//! - [`config`]: `DATABASE_URL` (never logged with its password), pool size, timeouts.
//! - [`migrate`](Ledger::migrate): the embedded migrations of `ledger/migrations/`, applied
//!   under an advisory lock by the worker at start-up and by `flashsale-worker migrate`.
//! - [`Ledger`]: the pool and every query, each bounded by `DATABASE_TIMEOUT_MS`. Rows are
//!   read into the shared domain types (`OrderId`, `EventId`, `UserId`, `OrderStatus`) here,
//!   once; a walk over an event's orders is [`Ledger::pages`].
//! - [`LedgerError`]: the database was unavailable (retry: nothing is lost) or refused the
//!   data (a poison order: never retried as if the database were down).
//!
//! Why tokio-postgres and deadpool-postgres rather than sqlx: the ledger is a handful of
//! fixed statements (an `UNNEST` insert, a few reads), so compile-time query checking buys
//! little, while sqlx's macros, drivers and migrator roughly double the dependency tree and
//! the build time; the lean pair is maintained by the same people as the PostgreSQL protocol
//! crates, and migrations are ten lines here.

pub mod config;

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use flashsale_shared::domain::{from_unix_ms, to_unix_ms};
use flashsale_shared::event::{Decision, EventConfig};
use flashsale_shared::schema::{EventStateMark, OrderStatus};
use flashsale_shared::{EventId, OrderId, UserId};
use time::OffsetDateTime;
use tokio_postgres::NoTls;
use uuid::Uuid;

pub use crate::config::{DatabaseUrl, LedgerArgs};

/// The migrations, in order. A migration is never edited once released; a change is a new one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "orders", include_str!("../migrations/0001_orders.sql")),
    (2, "event_decisions", include_str!("../migrations/0002_event_decisions.sql")),
    (3, "parked_orders", include_str!("../migrations/0003_parked_orders.sql")),
];

/// `pg_advisory_xact_lock` key: only one process migrates at a time.
const MIGRATION_LOCK: i64 = 0x0066_6c61_7368_7361; // "flashsa"

/// What can go wrong with the ledger, as the worker must treat it.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database is down, unreachable, slow, restarting or out of resources: retry later,
    /// for as long as it takes. Nothing is counted against the orders.
    #[error("the ledger is unavailable: {0}")]
    Unavailable(String),
    /// The database refused the data (a constraint, an invalid value): the orders in hand are
    /// the cause, not the database.
    #[error("the ledger refused the data: {0}")]
    Refused(String),
}

impl LedgerError {
    fn of(error: &tokio_postgres::Error) -> Self {
        match error.code() {
            // Class 22 (data exception) and 23 (integrity constraint violation): the data.
            // The server's message and code ("integer out of range (22003)"): what an operator
            // reads in the dead letter, where `Display` alone says only "db error".
            Some(code) if code.code().starts_with("22") || code.code().starts_with("23") => {
                Self::Refused(describe(error))
            }
            _ => Self::Unavailable(describe(error)),
        }
    }
}

/// A read of a table the migrations have not created yet (no worker ran them so far): the
/// ledger is empty, not broken.
fn before_migrations<T>(result: std::result::Result<T, tokio_postgres::Error>, empty: T) -> Result<T> {
    match result {
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(empty),
        other => Ok(other?),
    }
}

/// A PostgreSQL error with its server message, which `Display` alone leaves out.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

impl From<tokio_postgres::Error> for LedgerError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::of(&error)
    }
}

impl From<deadpool_postgres::PoolError> for LedgerError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(e) => Self::of(&e),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, LedgerError>;

/// One order as the worker records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub quantity: u32,
    /// `confirmed`, `failed`, or `pending` for a parked order (written as `parked`, see
    /// [`status_column`]).
    pub status: OrderStatus,
    pub created_at: OffsetDateTime,
    pub finalized_at: OffsetDateTime,
    pub scope: String,
}

/// One order as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerOrder {
    pub order_id: OrderId,
    pub event_id: EventId,
    pub user_id: UserId,
    pub quantity: u32,
    /// `confirmed`, `failed`, or `pending`: a parked order (the column says `parked`).
    pub status: OrderStatus,
    pub created_at: OffsetDateTime,
    pub finalized_at: Option<OffsetDateTime>,
    pub scope: String,
}

/// Orders per page of [`Ledger::pages`]: short queries, yet few round trips.
pub const PAGE: i64 = 1000;

/// A walk over one event's orders by order id, a page of [`PAGE`] at a time, each page its
/// own short query (a walk during a sale never holds one long one): reconciliation, export and
/// `check --ledger` all walk this way.
#[derive(Debug)]
pub struct Pages<'a> {
    ledger: &'a Ledger,
    event: &'a EventId,
    after: Option<OrderId>,
    done: bool,
}

impl Pages<'_> {
    /// The next page; `None` once the walk is over. After an error the same page is asked
    /// for again by the next call.
    pub async fn next_page(&mut self) -> Result<Option<Vec<LedgerOrder>>> {
        while !self.done {
            let page = self.ledger.page_read(self.event, self.after, PAGE).await?;
            // A short page is the last one.
            self.done = page.rows < PAGE as usize;
            self.after = page.last.or(self.after);
            if !page.orders.is_empty() {
                return Ok(Some(page.orders));
            }
        }
        Ok(None)
    }
}

/// One page as read: its orders, how many rows it had and the last row's id.
struct PageRead {
    orders: Vec<LedgerOrder>,
    rows: usize,
    last: Option<OrderId>,
}

/// An event as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEvent {
    pub event_id: EventId,
    pub name: Option<String>,
    pub stock: u64,
    pub per_user_limit: u32,
    pub starts_at: Option<OffsetDateTime>,
    pub ends_at: Option<OffsetDateTime>,
    pub purge_at: Option<OffsetDateTime>,
    pub confirmed_units: u64,
    pub left_redis_at: Option<OffsetDateTime>,
    /// An operator's decision (`None`: selling by its window).
    pub state: Option<EventStateMark>,
    pub paused_at: Option<OffsetDateTime>,
    pub ended_at: Option<OffsetDateTime>,
    /// When the configuration in force was accepted (`None` for a row from before migration 2).
    pub configured_at: Option<OffsetDateTime>,
    /// Redis's decision counter of the decision recorded (0: recorded before migration 2).
    pub version: u64,
    /// Whether the ledger holds an order of the event: its configuration is then final.
    pub sold: bool,
}

impl LedgerEvent {
    /// The recorded decision, as a reconciliation puts it back into Redis.
    pub fn decision(&self) -> Decision {
        let ms = |at: Option<OffsetDateTime>| at.map(to_unix_ms);
        Decision {
            config: EventConfig {
                stock: self.stock,
                per_user_limit: self.per_user_limit,
                name: self.name.clone(),
                starts_at_ms: ms(self.starts_at),
                ends_at_ms: ms(self.ends_at),
            },
            purge_at_ms: ms(self.purge_at),
            control: self.state,
            paused_at_ms: ms(self.paused_at),
            ended_at_ms: ms(self.ended_at),
            configured_ms: ms(self.configured_at),
            version: self.version,
        }
    }
}

#[derive(Clone)]
pub struct Ledger {
    pool: Pool,
    timeout: Duration,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Ledger {
    /// A pool that connects lazily: a worker starts (and keeps Redis's orders pending) while
    /// the database is down.
    pub fn new(args: &LedgerArgs) -> Result<Self> {
        let timeout = args.timeout();
        let Some(url) = &args.database_url else {
            return Err(LedgerError::Unavailable("DATABASE_URL is not set".into()));
        };
        let mut config = url.config().clone();
        config.connect_timeout(timeout);
        // The server enforces the statement deadline too, so a slow statement is cancelled
        // there rather than left running when the client gives up; and a session that sits in
        // an open transaction (a worker frozen mid-migration, say) is ended after the same
        // time, so it cannot hold a lock the other workers wait for.
        config.options(format!(
            "-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms}",
            ms = timeout.as_millis()
        ));
        config.application_name("flashsale");
        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(usize::from(args.database_pool_size))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| LedgerError::Unavailable(e.to_string()))?;
        Ok(Self { pool, timeout })
    }

    /// Runs `op` on a pooled connection under the deadline.
    async fn with<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let work = async {
            let client = self.pool.get().await?;
            op(client).await
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(LedgerError::Unavailable(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// Applies every migration not applied yet, each in its own transaction, under an
    /// advisory lock (workers starting together migrate once). Returns how many ran.
    pub async fn migrate(&self) -> Result<usize> {
        let work = async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            tx.batch_execute(
                "create table if not exists flashsale_migrations (
                     version integer primary key, name text not null,
                     applied_at timestamptz not null default now())",
            )
            .await?;
            let done: Vec<i32> = tx
                .query("select version from flashsale_migrations", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut applied = 0;
            for (version, name, sql) in MIGRATIONS {
                if done.contains(version) {
                    continue;
                }
                tx.batch_execute(sql).await?;
                tx.execute(
                    "insert into flashsale_migrations (version, name) values ($1, $2)",
                    &[version, name],
                )
                .await?;
                tracing::info!(version, name, "ledger migration applied");
                applied += 1;
            }
            tx.commit().await?;
            Ok(applied)
        };
        // Migrations may take longer than one statement's deadline.
        match tokio::time::timeout(self.timeout * 10, work).await {
            Ok(result) => result,
            Err(_) => Err(LedgerError::Unavailable("migrations did not finish in time".into())),
        }
    }

    /// Whether the database answers (for `flashsale_ledger_up`).
    pub async fn ping(&self) -> Result<()> {
        self.with(|client| async move {
            client.simple_query("select 1").await?;
            Ok(())
        })
        .await
    }

    /// Records an event's decision unless the ledger already holds a later one (a higher
    /// decision counter): a stale snapshot, from a worker that read Redis before a restart
    /// or from a Redis restored from an older snapshot, never overwrites a later decision.
    /// Two rules hold whatever the counters say: an end is final (a recorded end is never
    /// replaced by a sale that is not ended), and once the ledger holds an order the
    /// configuration is final (it only ever changes before the first sale, so a different one
    /// would resize a sale). Every decision taken is also appended to `event_decisions`.
    /// Returns the ledger's decision counter afterwards.
    pub async fn record_decision(&self, event: &EventId, decision: &Decision) -> Result<u64> {
        let at = |ms: Option<i64>| ms.map(from_unix_ms);
        let config = &decision.config;
        let (stock, limit) = (i64::try_from(config.stock).unwrap_or(i64::MAX), config.per_user_limit as i32);
        let (starts, ends, name) = (at(config.starts_at_ms), at(config.ends_at_ms), config.name.clone());
        let (purge_at, paused_at, ended_at) =
            (at(decision.purge_at_ms), at(decision.paused_at_ms), at(decision.ended_at_ms));
        let configured_at = at(decision.configured_ms);
        let state = decision.control.map(EventStateMark::value);
        let version = i64::try_from(decision.version).unwrap_or(i64::MAX);
        let event = event.as_str().to_owned();
        self.with(|client| async move {
            let row = client
                .query_one(
                    RECORD_DECISION,
                    &[
                        &event,
                        &name,
                        &stock,
                        &limit,
                        &starts,
                        &ends,
                        &purge_at,
                        &state,
                        &paused_at,
                        &ended_at,
                        &configured_at,
                        &version,
                    ],
                )
                .await?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
        .await
    }

    /// Records a batch of one event's finalized orders in one statement, committed on return.
    /// An order already recorded is left as it is, except for an operator's decision on a
    /// parked order: `failed` replaces `parked` (and `confirmed`: a row written before the park
    /// was recorded), `confirmed` replaces `parked` (a redrive). Nothing else downgrades:
    /// `confirmed` never replaces `failed`, and a stale `parked` replaces nothing (parking
    /// goes through [`Ledger::mark_parked`]).
    /// An order id already naming a different order is refused ([`LedgerError::Refused`]: the
    /// entry's failed attempt, never a silent skip). Returns how many rows changed.
    pub async fn record(&self, event: &EventId, orders: &[Recorded]) -> Result<u64> {
        if orders.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id.as_uuid()).collect();
        let users: Vec<&str> = orders.iter().map(|o| o.user_id.as_str()).collect();
        // Sent as `bigint` and cast by the database into the `integer` column: a quantity
        // that does not fit is refused there (22003, numeric_value_out_of_range), as that
        // row's fault, rather than silently recorded as some other quantity.
        let quantities: Vec<i64> = orders.iter().map(|o| i64::from(o.quantity)).collect();
        let statuses: Vec<&str> = orders.iter().map(|o| status_column(o.status)).collect();
        let created: Vec<OffsetDateTime> = orders.iter().map(|o| o.created_at).collect();
        let finalized: Vec<OffsetDateTime> = orders.iter().map(|o| o.finalized_at).collect();
        let scopes: Vec<&str> = orders.iter().map(|o| o.scope.as_str()).collect();
        let event = event.as_str();
        self.with(|client| async move {
            let changed = client
                .execute(
                    "insert into orders
                       (order_id, event_id, user_id, quantity, status, created_at, finalized_at, scope)
                     select id, $2, u, q, s, c, f, sc
                       from unnest($1::uuid[], $3::text[], $4::bigint[], $5::text[],
                                   $6::timestamptz[], $7::timestamptz[], $8::text[])
                         as t(id, u, q, s, c, f, sc)
                     on conflict (order_id) do update
                       set status = excluded.status, finalized_at = excluded.finalized_at,
                           recorded_at = now()
                       where (orders.status in ('confirmed', 'parked') and excluded.status = 'failed')
                          or (orders.status = 'parked' and excluded.status = 'confirmed')",
                    &[&ids, &event, &users, &quantities, &statuses, &created, &finalized, &scopes],
                )
                .await?;
            if changed < ids.len() as u64 {
                // Rows already there (a redelivery): each must be this very order. An order id
                // naming another order (another event or buyer) would otherwise be silently
                // skipped, leaving this one confirmed in Redis and absent from the ledger.
                let same = client
                    .query_one(
                        "select count(*) from orders o
                           join unnest($1::uuid[], $3::text[]) as t(id, u) on o.order_id = t.id
                          where o.event_id = $2 and o.user_id = t.u",
                        &[&ids, &event, &users],
                    )
                    .await?;
                if same.get::<_, i64>(0) != ids.len() as i64 {
                    return Err(LedgerError::Refused(
                        "an order id of this batch already names another order in the ledger".into(),
                    ));
                }
            }
            Ok(changed)
        })
        .await
    }

    /// Records these orders of the event as parked: `finalize.lua` parked their entries (the
    /// orders stay pending in Redis, their units held), after this worker had written them
    /// `confirmed`. Only a `confirmed` row changes (a `failed` or a redriven order recorded
    /// since is a later decision). Returns how many rows changed.
    pub async fn mark_parked(&self, event: &EventId, ids: &[OrderId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        let event = event.as_str().to_owned();
        self.with(|client| async move {
            Ok(client
                .execute(
                    "update orders set status = 'parked', finalized_at = null, recorded_at = now()
                      where event_id = $1 and order_id = any($2) and status = 'confirmed'",
                    &[&event, &ids],
                )
                .await?)
        })
        .await
    }

    /// How many orders of the event the ledger holds (confirmed, failed or parked).
    pub async fn count_orders(&self, event: &EventId) -> Result<u64> {
        let event = event.as_str();
        self.with(|client| async move {
            let row = client.query_one("select count(*) from orders where event_id = $1", &[&event]).await?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
        .await
    }

    /// Units of the event's confirmed orders.
    pub async fn confirmed_units(&self, event: &EventId) -> Result<u64> {
        let event = event.as_str();
        self.with(|client| async move {
            let row = client
                .query_one(
                    "select coalesce(sum(quantity), 0)::bigint from orders
                      where event_id = $1 and status = 'confirmed'",
                    &[&event],
                )
                .await?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
        .await
    }

    /// The status and quantity of each of these orders the ledger has.
    pub async fn statuses(&self, ids: &[OrderId]) -> Result<HashMap<OrderId, (OrderStatus, u32)>> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        self.with(|client| async move {
            let rows = client
                .query("select order_id, status, quantity from orders where order_id = any($1)", &[&ids])
                .await?;
            Ok(rows
                .iter()
                .filter_map(|row| {
                    let status = status_of(row.get(1))?;
                    Some((OrderId::from_uuid(row.get(0)), (status, row.get::<_, i32>(2).max(0) as u32)))
                })
                .collect())
        })
        .await
    }

    /// The event's orders after `after` (by order id), at most `limit`: pages for walks that
    /// must not hold one long query (reconciliation, export, rebuilding Redis).
    pub async fn page(
        &self,
        event: &EventId,
        after: Option<OrderId>,
        limit: i64,
    ) -> Result<Vec<LedgerOrder>> {
        Ok(self.page_read(event, after, limit).await?.orders)
    }

    /// A page, and how far it went: a row no worker wrote is left out of `orders` but still
    /// ends the page where it is, so a walk neither stops early nor reads it again.
    async fn page_read(&self, event: &EventId, after: Option<OrderId>, limit: i64) -> Result<PageRead> {
        let event = event.as_str().to_owned();
        let after = after.map_or(Uuid::nil(), OrderId::as_uuid);
        self.with(|client| async move {
            let rows = client
                .query(
                    "select order_id, event_id, user_id, quantity, status, created_at, finalized_at, scope
                       from orders where event_id = $1 and order_id > $2
                      order by order_id limit $3",
                    &[&event, &after, &limit],
                )
                .await?;
            Ok(PageRead {
                rows: rows.len(),
                last: rows.last().map(|row| OrderId::from_uuid(row.get(0))),
                orders: rows.iter().filter_map(order_of).collect(),
            })
        })
        .await
    }

    /// Every order of the event, a page at a time (see [`Pages`]).
    pub fn pages<'a>(&'a self, event: &'a EventId) -> Pages<'a> {
        Pages { ledger: self, event, after: None, done: false }
    }

    /// Like [`Ledger::page`], only orders with `status`.
    pub async fn page_with_status(
        &self,
        event: &EventId,
        status: OrderStatus,
        after: Option<OrderId>,
        limit: i64,
    ) -> Result<Vec<LedgerOrder>> {
        let event = event.as_str().to_owned();
        let after = after.map_or(Uuid::nil(), OrderId::as_uuid);
        self.with(|client| async move {
            let rows = client
                .query(
                    "select order_id, event_id, user_id, quantity, status, created_at, finalized_at, scope
                       from orders where event_id = $1 and status = $2 and order_id > $3
                      order by order_id limit $4",
                    &[&event, &status_column(status), &after, &limit],
                )
                .await;
            Ok(before_migrations(rows, Vec::new())?.iter().filter_map(order_of).collect())
        })
        .await
    }

    /// One order of one event (the gateway's read once the event left Redis).
    pub async fn order(&self, event: &EventId, order_id: OrderId) -> Result<Option<LedgerOrder>> {
        let event = event.as_str().to_owned();
        let order_id = order_id.as_uuid();
        self.with(|client| async move {
            let row = client
                .query_opt(
                    "select order_id, event_id, user_id, quantity, status, created_at, finalized_at, scope
                       from orders where event_id = $1 and order_id = $2",
                    &[&event, &order_id],
                )
                .await;
            Ok(before_migrations(row, None)?.as_ref().and_then(order_of))
        })
        .await
    }

    /// An event and its confirmed units.
    pub async fn event(&self, event: &EventId) -> Result<Option<LedgerEvent>> {
        let event = event.as_str().to_owned();
        self.with(|client| async move {
            let row = client
                .query_opt(&format!("{EVENT_COLUMNS} from events e where e.event_id = $1"), &[&event])
                .await;
            Ok(before_migrations(row, None)?.as_ref().and_then(event_of))
        })
        .await
    }

    /// Every event that has not left Redis: what a reconciliation after a Redis restart
    /// restores.
    pub async fn events_in_redis(&self) -> Result<Vec<LedgerEvent>> {
        self.with(|client| async move {
            let rows = client
                .query(&format!("{EVENT_COLUMNS} from events e where e.left_redis_at is null"), &[])
                .await;
            Ok(before_migrations(rows, Vec::new())?.iter().filter_map(event_of).collect())
        })
        .await
    }

    /// Every event the ledger says left Redis, with the number of its orders the ledger holds:
    /// what a reconciliation removes from a Redis that a restored snapshot brought them back to.
    pub async fn events_left_redis(&self) -> Result<Vec<(EventId, u64)>> {
        self.with(|client| async move {
            let rows = client
                .query(
                    "select e.event_id, (select count(*) from orders o where o.event_id = e.event_id)
                       from events e where e.left_redis_at is not null",
                    &[],
                )
                .await;
            Ok(before_migrations(rows, Vec::new())?
                .iter()
                .filter_map(|row| {
                    let id = EventId::parse(row.get::<_, String>(0)).ok()?;
                    Some((id, u64::try_from(row.get::<_, i64>(1)).unwrap_or(0)))
                })
                .collect())
        })
        .await
    }

    /// Forgets an event that left Redis without ever selling (its row and decision history),
    /// so its id may be created again as a new sale. An event with an order, or still in
    /// Redis, is kept. Safe to repeat.
    pub async fn forget_unsold_left(&self, event: &EventId) -> Result<()> {
        let event = event.as_str().to_owned();
        self.with(|client| async move {
            // One statement: the history goes only with the row it belongs to.
            client
                .execute(
                    "with gone as (
                         delete from events e where e.event_id = $1 and e.left_redis_at is not null
                           and not exists (select 1 from orders o where o.event_id = e.event_id)
                         returning e.event_id)
                     delete from event_decisions d using gone where d.event_id = gone.event_id",
                    &[&event],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Marks the event as gone from Redis: the ledger alone answers for it from now on. Called
    /// before Redis removes it, so the removal waits until this says `true`: the ledger holds
    /// the event's row, with the decision that its retention is over (`purge_at` passed). Not
    /// a row recorded since for a new event of the same id (created again after an unsold
    /// one left, see [`Ledger::forget_unsold_left`]): its retention has not passed. Safe to
    /// repeat (the first time stays).
    pub async fn mark_left_redis(&self, event: &EventId) -> Result<bool> {
        let event = event.as_str().to_owned();
        self.with(|client| async move {
            let marked = client
                .execute(
                    "update events set left_redis_at = coalesce(left_redis_at, now())
                      where event_id = $1 and purge_at <= now()",
                    &[&event],
                )
                .await?;
            Ok(marked > 0)
        })
        .await
    }
}

const EVENT_COLUMNS: &str = "select e.event_id, e.name, e.stock, e.per_user_limit, e.starts_at, e.ends_at,
        e.left_redis_at, (select coalesce(sum(quantity), 0)::bigint from orders o
                           where o.event_id = e.event_id and o.status = 'confirmed'), e.purge_at,
        e.state, e.paused_at, e.ended_at, e.configured_at, e.version,
        exists (select 1 from orders o where o.event_id = e.event_id)";

/// [`Ledger::record_decision`]'s statement: $1 event, $2..$6 the configuration, $7 purge_at,
/// $8 state, $9 paused_at, $10 ended_at, $11 configured_at, $12 the decision counter. One
/// statement, so the decision and its history row commit together.
const RECORD_DECISION: &str = "
    with sold as (select exists (select 1 from orders where event_id = $1) as yes),
    decided as (
        insert into events as e (event_id, name, stock, per_user_limit, starts_at, ends_at, purge_at,
                                 state, paused_at, ended_at, configured_at, version)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        on conflict (event_id) do update set
            name = case when (select yes from sold) then e.name else excluded.name end,
            stock = case when (select yes from sold) then e.stock else excluded.stock end,
            per_user_limit = case when (select yes from sold) then e.per_user_limit
                                  else excluded.per_user_limit end,
            starts_at = case when (select yes from sold) then e.starts_at else excluded.starts_at end,
            ends_at = case when (select yes from sold) then e.ends_at else excluded.ends_at end,
            configured_at = case when (select yes from sold) then e.configured_at
                                 else excluded.configured_at end,
            state = case when e.state = 'ended' then e.state else excluded.state end,
            paused_at = case when e.state = 'ended' then null else excluded.paused_at end,
            ended_at = coalesce(e.ended_at, excluded.ended_at),
            purge_at = case when e.state = 'ended' then e.purge_at else excluded.purge_at end,
            version = excluded.version
          where e.version < excluded.version
        returning e.*
    ),
    history as (
        insert into event_decisions (event_id, version, name, stock, per_user_limit, starts_at, ends_at,
                                     purge_at, state, paused_at, ended_at, configured_at)
        select event_id, version, name, stock, per_user_limit, starts_at, ends_at,
               purge_at, state, paused_at, ended_at, configured_at from decided
        on conflict (event_id, version) do nothing
    )
    select coalesce((select version from decided), (select version from events where event_id = $1))";

/// `None` for a row whose id is not an event id (never written: ids are parsed before).
fn event_of(row: &tokio_postgres::Row) -> Option<LedgerEvent> {
    Some(LedgerEvent {
        event_id: EventId::parse(row.get::<_, String>(0)).ok()?,
        name: row.get(1),
        stock: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
        per_user_limit: row.get::<_, i32>(3).max(0) as u32,
        starts_at: row.get(4),
        ends_at: row.get(5),
        left_redis_at: row.get(6),
        confirmed_units: u64::try_from(row.get::<_, i64>(7)).unwrap_or(0),
        purge_at: row.get(8),
        state: row.get::<_, Option<&str>>(9).and_then(EventStateMark::parse),
        paused_at: row.get(10),
        ended_at: row.get(11),
        configured_at: row.get(12),
        version: u64::try_from(row.get::<_, i64>(13)).unwrap_or(0),
        sold: row.get(14),
    })
}

/// The order of a row, parsed into the domain's types once, here. `None` for a row no worker
/// wrote (an id or a status out of the domain).
fn order_of(row: &tokio_postgres::Row) -> Option<LedgerOrder> {
    Some(LedgerOrder {
        order_id: OrderId::from_uuid(row.get(0)),
        event_id: EventId::parse(row.get::<_, String>(1)).ok()?,
        user_id: UserId::parse(row.get::<_, String>(2)).ok()?,
        quantity: row.get::<_, i32>(3).max(0) as u32,
        status: status_of(row.get(4))?,
        created_at: row.get(5),
        finalized_at: row.get(6),
        scope: row.get(7),
    })
}

/// The `orders.status` value of a status. The only pending orders the ledger holds are parked
/// ones (a worker records an order when it finalizes it, and records a park), so the column
/// says `parked`, which tells a merchant why the order is neither shippable nor failed; Rust
/// keeps one status type, where a parked order is what Redis and the buyer see: pending.
pub fn status_column(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Pending => PARKED,
        final_status => final_status.as_str(),
    }
}

/// The `orders.status` value of a parked order (migration 4).
pub const PARKED: &str = "parked";

/// The inverse of [`status_column`]; `None` for a value no worker wrote.
fn status_of(text: &str) -> Option<OrderStatus> {
    if text == PARKED {
        return Some(OrderStatus::Pending);
    }
    OrderStatus::parse(text).filter(|status| status.is_final())
}
