//! Reading replies: a script's flat array by position, and the loose shapes Redis answers in
//! (bulk or simple strings, integers as text, `[name, value, ...]` pairs). A reply of the
//! wrong shape means the Lua and the Rust disagree: a bug, reported as a Redis type error.

use redis::{ErrorKind, RedisError, RedisResult, Value};

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
