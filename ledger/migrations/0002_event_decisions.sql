-- Every decision that changes who may buy, not only the first configuration: the latest
-- accepted configuration, the retention, an operator's pause or end. Redis may take a decision
-- first; the worker records it here once it sees Redis's decision counter above `version`, and
-- a Redis that lost it gets it back from here (worker/src/fence.rs).

alter table events
    -- Redis's decision counter (the event hash's `version`) of the decision this row holds; 0
    -- for a row recorded before this migration, whose state the ledger never knew.
    add column version        bigint not null default 0,
    -- An operator's decision: null (selling by its window), 'paused' or 'ended' (final).
    add column state          text check (state in ('paused', 'ended')),
    add column paused_at      timestamptz,
    add column ended_at       timestamptz,
    -- When the configuration in force was accepted (a replacement before the first sale moves it).
    add column configured_at  timestamptz;

-- Every decision the worker recorded, in order: a configuration that replaced another before the
-- first sale shows as a row whose configuration differs from the one before it.
create table event_decisions (
    event_id        text not null,
    version         bigint not null,
    name            text,
    stock           bigint not null,
    per_user_limit  integer not null,
    starts_at       timestamptz,
    ends_at         timestamptz,
    purge_at        timestamptz,
    state           text check (state in ('paused', 'ended')),
    paused_at       timestamptz,
    ended_at        timestamptz,
    configured_at   timestamptz,
    recorded_at     timestamptz not null default now(),
    primary key (event_id, version)
);
