-- A parked order (its stream entry failed MAX_DELIVERIES times; it waits for an operator's
-- redrive or fail with its units held) is recorded as 'parked', not 'confirmed': merchants ship
-- from this table, and a Redis restored from it must keep the order pending. 'parked' is not
-- final: a redrive replaces it with 'confirmed', an operator's fail with 'failed'.

alter table orders drop constraint if exists orders_status_check;
alter table orders add constraint orders_status_check
    check (status in ('confirmed', 'failed', 'parked'));
