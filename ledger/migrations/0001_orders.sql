-- The ledger: every finalized order, written by the worker before it acknowledges the order in
-- Redis. This is the public schema operators and merchants query; it only ever grows by
-- migrations that keep these columns.

create table events (
    event_id        text primary key,
    name            text,
    stock           bigint not null check (stock > 0),
    per_user_limit  integer not null check (per_user_limit > 0),
    starts_at       timestamptz,
    ends_at         timestamptz,
    -- When Redis forgets its idempotency entries (ends_at + the gateway's retention).
    purge_at        timestamptz,
    -- When the worker first recorded the event.
    recorded_at     timestamptz not null default now(),
    -- When the event's keys left Redis (its sale ended, its retention passed, every order is
    -- here); from then on the ledger alone answers for it.
    left_redis_at   timestamptz
);

create table orders (
    order_id      uuid primary key,
    event_id      text not null,
    user_id       text not null,
    quantity      integer not null check (quantity > 0),
    status        text not null check (status in ('confirmed', 'failed')),
    -- When the gateway reserved the stock (the 202).
    created_at    timestamptz not null,
    -- When the order was confirmed or failed.
    finalized_at  timestamptz,
    -- The idempotency scope the buyer's retries use, so Redis can be rebuilt from here.
    scope         text not null,
    -- When this row was written.
    recorded_at   timestamptz not null default now()
);

create index orders_by_event on orders (event_id, status);
