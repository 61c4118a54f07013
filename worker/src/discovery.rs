//! Finding events: new events appear in `fs:events` when an operator creates them; the
//! worker creates its group on each new stream and starts consuming it without a restart.

use std::sync::Arc;

use flashsale_shared::shutdown::Ticker;
use flashsale_shared::{EventKeys, event, stream};
use redis::RedisResult;
use tokio::sync::watch;

use crate::context::{Ctx, EventStream};

pub(crate) async fn discovery_loop(ctx: Arc<Ctx>, streams: watch::Sender<Arc<Vec<EventStream>>>) {
    let mut ticker = Ticker::new(crate::config::ms(ctx.config.discovery_interval_ms), ctx.stop.clone());
    let mut streak = crate::failure::Streak::new("discovery");
    while ticker.tick().await {
        match discover(&ctx, &streams).await {
            Ok(()) => streak.succeeded(),
            Err(error) => streak.failed(&ctx, &error.into()).await,
        }
    }
}

/// One pass: registers groups for events not seen before and publishes the new list.
pub(crate) async fn discover(ctx: &Ctx, streams: &watch::Sender<Arc<Vec<EventStream>>>) -> RedisResult<()> {
    let mut conn = ctx.redis.get();
    let mut ids = event::list(&mut conn).await?;
    ids.sort();
    let current = streams.borrow().clone();
    if current.len() == ids.len() && current.iter().zip(&ids).all(|(s, id)| &s.event == id) {
        return Ok(());
    }
    let mut next = Vec::with_capacity(ids.len());
    for id in ids {
        let keys = EventKeys::new(&id);
        if !current.iter().any(|s| s.event == id) {
            // `event::put` registers an event before its script creates it: a registration
            // whose event does not exist (yet, or ever: a crashed PUT) waits here until the
            // event does, so its group is created then, not left to a NOGROUP repair.
            if !event::exists(&mut conn, &id).await? {
                continue;
            }
            stream::ensure_group(&mut conn, &keys).await?;
            tracing::info!(event = %id, "consuming a new event");
        }
        next.push(EventStream { event: id, keys });
    }
    if current.len() != next.len() || current.iter().zip(&next).any(|(a, b)| a.event != b.event) {
        streams.send_replace(Arc::new(next));
    }
    Ok(())
}
