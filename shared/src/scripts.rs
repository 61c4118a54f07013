//! The Lua scripts of `lua/`, compiled into both binaries with `include_str!`.
//!
//! Each script's header documents its KEYS, ARGV and reply. `Script::invoke_async` sends
//! EVALSHA and, on NOSCRIPT (a restarted or flushed Redis), loads the script and retries
//! once, so a Redis restart heals itself; [`load_all`] warms a fresh server up front.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, RedisResult, Script, Value};

/// A script's source and its compiled handle (which carries the SHA1 for EVALSHA).
#[derive(Debug)]
pub struct LuaScript {
    source: &'static str,
    compiled: LazyLock<Script>,
}

impl std::ops::Deref for LuaScript {
    type Target = Script;

    fn deref(&self) -> &Script {
        &self.compiled
    }
}

macro_rules! lua {
    ($file:literal) => {
        LuaScript {
            source: include_str!(concat!("../../lua/", $file)),
            compiled: LazyLock::new(|| Script::new(include_str!(concat!("../../lua/", $file)))),
        }
    };
}

pub static PURCHASE: LuaScript = lua!("purchase.lua");
pub static PUT_EVENT: LuaScript = lua!("put_event.lua");
pub static FINALIZE: LuaScript = lua!("finalize.lua");
pub static TRIM: LuaScript = lua!("trim.lua");
pub static PURGE: LuaScript = lua!("purge.lua");
pub static RESOLVE_DEAD_LETTER: LuaScript = lua!("resolve_dead_letter.lua");
pub static REMOVE_EVENT: LuaScript = lua!("remove_event.lua");
pub static ENSURE_GROUP: LuaScript = lua!("ensure_group.lua");

static ALL: [&LuaScript; 8] =
    [&PURCHASE, &PUT_EVENT, &FINALIZE, &TRIM, &PURGE, &RESOLVE_DEAD_LETTER, &REMOVE_EVENT, &ENSURE_GROUP];

/// SCRIPT LOAD every script, so the first purchase after a (re)start needs no second trip.
pub async fn load_all(conn: &mut impl ConnectionLike) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    for script in ALL {
        pipe.cmd("SCRIPT").arg("LOAD").arg(script.source).ignore();
    }
    pipe.query_async(conn).await
}

/// Whether Redis has every script cached (what `/readyz` reports).
pub async fn all_loaded(conn: &mut impl ConnectionLike) -> RedisResult<bool> {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("EXISTS");
    for script in ALL {
        cmd.arg(script.get_hash());
    }
    let present: Vec<i64> = cmd.query_async(conn).await?;
    Ok(present.iter().all(|&p| p == 1))
}

/// A script's flat array reply, read by position with typed accessors. A reply of the wrong
/// shape means the Lua and the Rust disagree: that is a bug, reported as a Redis type error.
#[derive(Debug)]
pub struct Reply(Vec<Value>);

impl Reply {
    pub fn new(value: Value) -> RedisResult<Self> {
        match value {
            Value::Array(items) => Ok(Self(items)),
            other => Err(unexpected("an array", &other)),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn str(&self, index: usize) -> RedisResult<&str> {
        match self.0.get(index) {
            Some(Value::BulkString(bytes)) => {
                std::str::from_utf8(bytes).map_err(|_| unexpected("a UTF-8 string", &self.0[index]))
            }
            Some(Value::SimpleString(s)) => Ok(s),
            other => Err(unexpected("a string", other.unwrap_or(&Value::Nil))),
        }
    }

    pub fn int(&self, index: usize) -> RedisResult<i64> {
        match self.0.get(index) {
            Some(Value::Int(n)) => Ok(*n),
            Some(Value::BulkString(_) | Value::SimpleString(_)) => {
                let text = self.str(index)?;
                text.parse().map_err(|_| unexpected("an integer", &self.0[index]))
            }
            other => Err(unexpected("an integer", other.unwrap_or(&Value::Nil))),
        }
    }
}

pub fn unexpected(expected: &str, got: &Value) -> RedisError {
    RedisError::from((
        ErrorKind::UnexpectedReturnType,
        "script reply of unexpected shape",
        format!("expected {expected}, got {got:?}"),
    ))
}

/// Elements per call of every walk over an event's collections (`HSCAN`, `XRANGE`): the check
/// and the sold-out snapshot. Measured here on 300,000-element hashes, one `HSCAN ... COUNT
/// 1000` took 1.2 ms in the median but 10-15 ms at times on a busy 2-core machine; 200 keeps
/// each call a fraction of a millisecond, and a walk of 300,000 orders still takes about a
/// second.
pub const SCAN_CHUNK: usize = 200;

/// A bulk or simple string reply as text (`None` for anything else, or invalid UTF-8).
pub fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// An integer reply, or a string holding one.
pub fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// The value of `name` in a flat `[name, value, name, value, ...]` reply (as XINFO gives).
pub fn field<'a>(pairs: &'a [Value], name: &str) -> Option<&'a Value> {
    pairs.chunks(2).find(|kv| kv.len() == 2 && text(&kv[0]) == Some(name)).map(|kv| &kv[1])
}
