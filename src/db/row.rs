//! Reading rows by column name.
//!
//! `mysql`'s typed queries panic when a row does not convert to the type
//! asked for; a reply that belongs to another statement (a connection out
//! of sync) or a column of an unexpected type would then kill the thread.
//! Every statement here reads its rows through [`col`], which names the
//! column and returns a [`DbError::Row`] instead.

use mysql::Row;
use mysql::prelude::FromValue;

use super::error::{DbError, DbResult};

/// The value of column `name` in `row`, as a `T`.
pub fn col<T: FromValue>(row: &mut Row, name: &str) -> DbResult<T> {
    match row.take_opt::<T, &str>(name) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(DbError::Row(format!("column {name}: {e}"))),
        None => Err(DbError::Row(format!("no column {name} in {row:?}"))),
    }
}

/// The first column of `row`, as a `T`: for one-value queries (`SELECT 1`,
/// `COUNT(*)`).
pub fn first<T: FromValue>(row: Row) -> DbResult<T> {
    let mut row = row;
    match row.take_opt::<T, usize>(0) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(DbError::Row(format!("first column: {e}"))),
        None => Err(DbError::Row("no column".into())),
    }
}
