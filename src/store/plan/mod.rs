//! What is stored, written once: the rows a batch writes, the queries each read runs, and their
//! order, for both stores. `sqlite/` and `postgres/` supply only what differs between the two
//! SQL dialects, through the small interface defined here.
//!
//! # Code generic over a dialect, and one plan
//!
//! The two stores differ in how they run statements far more than in which statements they
//! run: SQLite's writer executes a prepared statement once per row where PostgreSQL binds a
//! whole column as one array; a PostgreSQL read may run again on a fresh connection, a SQLite
//! one never does; a search is cut short by a progress handler in one and by
//! `statement_timeout` in the other. So the logic is ordinary Rust generic over a [`Backend`],
//! and a backend answers one question: "run this statement with these values, on the
//! connection you chose" ([`Db`]). `load` reads a session row, then its messages, notes and
//! tail, in that order, in one place (`conversations.rs`); the graph's operations likewise
//! (`graph.rs`). A planner, a value describing statements for each backend to interpret, would
//! have to describe reads whose second statement needs the first one's answer (a conversation's
//! key, a node's neighbours), and would need an interpreter per backend: more code than the
//! logic it replaces.
//!
//! The batch is the exception, and it is a plan: `batch.rs` turns a journal batch into rows
//! gathered per table, as columns ([`Rows`]), because that is the one form both dialects can
//! write efficiently. SQLite runs a table's statements once per row, PostgreSQL sends every
//! column of every table as an array in one statement.
//!
//! # Writing SQL here
//!
//! Statement text shared by both dialects is written once, in this module, with `?N`
//! placeholders (PostgreSQL's side renumbers them to `$N` as it prepares a statement) and
//! `CAST(x AS type)` where a parameter needs a type. Text that differs is a field of
//! [`Dialect`], with the same parameters in both. A value is bound as a [`Param`] and read back
//! through [`Row`]; each dialect converts them to and from its own types.
//!
//! Depends on: `common::error`, `store`.

mod accounts;
mod batch;
mod conversations;
mod files;
mod graph;
mod mcp_auth;
mod share;
mod shares;
mod usage;
mod values;
mod vectors;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::error::Result;
use crate::store::{Node, StoreStatus, WriteOp};

pub(crate) use self::batch::{BatchTable, Keys, Rows, apply};
pub(crate) use self::files::sweep_uploads;
pub(crate) use self::graph::node_from_row;
pub(crate) use self::share::{SearchShare, SearchTurn};
pub(crate) use self::values::*;
#[cfg(test)]
pub(crate) use self::vectors::Tuning;
pub(crate) use self::vectors::VectorIndexes;

/// The columns a conversation's summary reads, in the order the shared logic takes them (a
/// macro, so that `concat!` can build both dialects' statements with it).
macro_rules! summary_columns {
    () => {
        "id, title, created_at, updated_at, turns, model, prompt_tokens, completion_tokens, \
         open_turn IS NOT NULL"
    };
}

/// The columns a node is read from, in the order the shared logic takes them (a macro, as
/// [`summary_columns`]).
macro_rules! node_columns {
    () => {
        "id, kind, label, content, properties, created_at, updated_at"
    };
}

pub(crate) use {node_columns, summary_columns};

/// A store over one SQL dialect. [`crate::store::ConversationStore`] and
/// [`crate::store::GraphStore`] are implemented once, for every backend, on top of it. Its
/// [`Counters`] are the figures it keeps beside the tables.
pub trait Backend: AsRef<Counters> + Send + Sync {
    /// The dialect's own error, kept until the store answers, so that a backend can tell a
    /// broken connection or a search out of time from other failures.
    type Error;

    /// The statements whose text differs in this dialect.
    const SQL: Dialect;

    /// Runs `work` on a connection for reading, as `view` asks, and names `what` in an error.
    /// `work` may run twice (PostgreSQL tries once more on a new connection when an idle one
    /// turns out closed), as reads may.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when no connection can be had or `work` fails.
    fn read<T>(&self, what: &str, view: View, work: &mut Work<'_, Self::Error, T>) -> Result<T>;

    /// Runs `work` on a connection for writing, as `write` says the write may be run.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when no connection can be had, the store is full and
    /// `write` adds, or `work` fails.
    fn write<T>(&self, what: &str, write: Write, work: &mut Work<'_, Self::Error, T>) -> Result<T>;

    /// True when `e` is a search stopped because its time budget ran out.
    fn out_of_time(e: &Self::Error) -> bool;

    /// Brings the conversation search's index up to what is committed, where the dialect
    /// fills it behind the commits (SQLite's `text_index.rs`); nothing elsewhere. A failure is
    /// the dialect's to log: the search goes on over what is indexed.
    fn catch_up_search(&self) {}

    /// [`crate::store::ConversationStore::apply`]: opens the batch's transaction on the
    /// writer, runs [`apply`] in it, and commits.
    ///
    /// # Errors
    ///
    /// As [`crate::store::ConversationStore::apply`].
    fn write_batch(&self, batch: &[WriteOp]) -> Result<()>;

    /// [`crate::store::ConversationStore::set_size_limit`].
    ///
    /// # Errors
    ///
    /// As [`crate::store::ConversationStore::set_size_limit`].
    fn cap_size(&self, bytes: Option<u64>) -> Result<()>;

    /// [`crate::store::ConversationStore::status`].
    fn health(&self) -> StoreStatus;
}

/// What a backend runs on the connection it chose: the shared logic's side of a read or write.
pub type Work<'w, E, T> = dyn FnMut(&mut dyn Db<Error = E>) -> Result<T, E> + 'w;

/// How a read sees the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Each statement on its own.
    Statement,
    /// Every statement in one snapshot (a read-only transaction), for reads that take several.
    Snapshot,
    /// A full-text search, within the search budget: a statement that runs out fails with an
    /// error [`Backend::out_of_time`] knows, and [`Db::time_left`] arms the next one.
    Search,
}

/// What a write does, which decides where it runs and whether it may run twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Moves owners at start-up: on the journal's writer, in one transaction.
    Owners,
    /// Adds to the graph and may safely run twice (an upsert): refused past the size cap.
    Upsert,
    /// Adds a row that a second run would add again: refused past the size cap, run once.
    Insert,
    /// Takes rows away, run once; let through a full store.
    Delete,
    /// Replaces rows and may safely run twice; let through a full store.
    Replace,
}

/// The statements whose text differs between the dialects. The shared logic runs each with
/// the parameters given here, in both.
#[derive(Debug)]
pub struct Dialect {
    /// A conversation's notes, oldest first: `?1` its key.
    pub notes: &'static str,
    /// `?1`'s conversations whose title or one of whose events matches the full-text query
    /// `?2`, as [`summary_columns`], most recently active first, at most `?3`. `?4` is the
    /// owner's [`Dialect::owner_term`]: the index answers for the owner's rows alone.
    pub search_conversations: &'static str,
    /// A fact stored unless its owner has it: `?1` owner, `?2` label, `?3` content, `?4` its
    /// [`Dialect::fact_key`], `?5` now. Answers [`node_columns`] and whether the row is new
    /// (or no row, when the fact was there).
    pub remember: &'static str,
    /// `?1`'s fact whose key is `?2`, as [`node_columns`].
    pub remembered: &'static str,
    /// A node: `?1` owner, `?2` kind, `?3` label, `?4` content, `?5` its
    /// [`Dialect::fact_key`], `?6` properties, `?7` now. Answers its id.
    pub add_node: &'static str,
    /// `?2`'s node `?1` given the content `?4` (and its [`Dialect::fact_key`] `?5`), the label
    /// `?3` when it is a fact, and the time `?6`. Answers [`node_columns`], or no row when `?2`
    /// has no such node.
    pub edit_node: &'static str,
    /// Every conversation of `?1` given to `?2`, with whatever the dialect's full-text indexes
    /// keep of the owner.
    pub reassign_conversations: &'static [&'static str],
    /// Vectors for [`Db::write_table`]: `?1` a node's id, `?2` the model, `?3` the vector,
    /// stored under the node's owner and replacing an earlier one; a node deleted meanwhile is
    /// skipped.
    pub store_embeddings: &'static [&'static str],
    /// Turn times for [`Db::write_table`]: `?1` a conversation's key (one value), `?2` a turn's
    /// id, `?3` the unix seconds it started (an imported turn's own time).
    pub turn_times: &'static [&'static str],
    /// Conversation `?1` (its key) and every row that belongs to it, deleted.
    pub delete_session: &'static [&'static str],
    /// The full-text queries for free text in the dialect's syntax, most selective first:
    /// every word, then (when there are several) any of them.
    pub search_queries: fn(&str) -> Vec<String>,
    /// What stands for a fact's content where a fact is looked up: the text itself (SQLite's
    /// index), or its digest (PostgreSQL's unique index).
    pub fact_key: for<'a> fn(&'a str) -> Param<'a>,
    /// What stands for an owner inside the dialect's full-text queries: every indexed row
    /// carries its owner's, and a search ANDs it in, so that the index skips other
    /// principals' rows.
    pub owner_term: fn(&str) -> String,
    /// The keys of blobs left half-written (`sha256` NULL) by a writer that is gone, for the
    /// sweep at start: every one in SQLite, whose directory lock keeps other processes out;
    /// in PostgreSQL, those whose writer has no connection left.
    pub stale_blobs: &'static str,
    /// Waits, until the transaction ends, for any other upload finishing with the owner and
    /// digest `?1` (PostgreSQL's advisory lock, so that two uploads of the same bytes keep
    /// them once); SQLite's one writer already runs one at a time. Answers one row.
    pub lock_digest: &'static str,
    /// A blob's text chunks for [`Db::write_table`]: `?1` the blob's key (one value), `?2`
    /// the chunk's number, `?3` the owner (one value), `?4` its label, `?5` its text.
    pub put_chunks: &'static [&'static str],
    /// Chunk vectors for [`Db::write_table`], each replacing an earlier one: `?1` the blob's
    /// key, `?2` the chunk's number, `?3` the model (one value), `?4` the vector. A chunk that
    /// is gone is skipped.
    pub put_chunk_vectors: &'static [&'static str],
    /// The chunks of blob `?1` that match the full-text query `?2` (one of
    /// [`Dialect::search_queries`]), with `?3` the owner's [`Dialect::owner_term`], best
    /// first, at most `?4`: number, label, text, and a score that is higher for a better
    /// match and comparable across blobs.
    pub search_chunks: &'static str,
    /// `?2`'s nodes whose ids are in the list `?1` ([`Param::Ints`]), as [`node_columns`],
    /// each with its vector by `?3` as the eighth column, in no order: what a semantic search
    /// picked, read back in one statement.
    pub nodes_with_vectors: &'static str,
}

/// A connection, or a transaction on one, running the shared logic's statements.
///
/// Statement text is always `&'static str`: both dialects cache prepared statements by it.
pub trait Db {
    /// The dialect's own error.
    type Error;

    /// Runs `query`, handing each row to `row` until it returns false.
    ///
    /// # Errors
    ///
    /// The database's, or what `row` returns.
    fn each(
        &mut self,
        query: Query<'_>,
        row: &mut EachRow<'_, Self::Error>,
    ) -> Result<(), Self::Error>;

    /// As [`Db::each`], for a long result that is likely read only in part: PostgreSQL fetches
    /// it a few rows at a time when it runs in a transaction.
    ///
    /// # Errors
    ///
    /// As [`Db::each`].
    fn stream(
        &mut self,
        query: Query<'_>,
        row: &mut EachRow<'_, Self::Error>,
    ) -> Result<(), Self::Error> {
        self.each(query, row)
    }

    /// Runs the statement `query`, and returns how many rows it changed.
    ///
    /// # Errors
    ///
    /// The database's.
    fn execute(&mut self, query: Query<'_>) -> Result<u64, Self::Error>;

    /// Gives the next statement what is left of the search budget ([`View::Search`]); false
    /// when nothing is left. SQLite arms the budget once for the whole read.
    ///
    /// # Errors
    ///
    /// The database's.
    fn time_left(&mut self) -> Result<bool, Self::Error> {
        Ok(true)
    }

    /// Adds to `found`, best first, the nodes `search` asks for that are not in it yet, until
    /// it holds `search.limit`.
    ///
    /// # Errors
    ///
    /// The database's, including a search out of time.
    fn search_nodes(
        &mut self,
        search: &NodeSearch<'_>,
        found: &mut Vec<Node>,
    ) -> Result<(), Self::Error>;

    /// Inserts a conversation's row and answers its key: `values` are its id, owner, user id,
    /// personality, model, and the time it was created. PostgreSQL also leases it to this
    /// instance.
    ///
    /// # Errors
    ///
    /// The database's.
    fn insert_session(&mut self, values: &[Param<'_>]) -> Result<i64, Self::Error>;

    /// Runs `statements` over the rows of `table`: SQLite each statement once per row, with the
    /// row's values as `?1`, `?2`, … in column order (as many as the statement names);
    /// PostgreSQL each statement once, with each column as an array.
    ///
    /// # Errors
    ///
    /// The database's.
    fn write_table(
        &mut self,
        statements: &'static [&'static str],
        table: &Table<'_>,
    ) -> Result<(), Self::Error>;

    /// Writes the rows a batch gathered, every table of them, and the signals they raise.
    ///
    /// # Errors
    ///
    /// The database's.
    fn write_rows(&mut self, rows: &Rows<'_>) -> Result<(), Self::Error>;
}

/// What [`Db::each`] hands each row to: true to go on.
pub type EachRow<'f, E> = dyn FnMut(&dyn Row<Error = E>) -> Result<bool, E> + 'f;

/// A statement and the values of its parameters.
#[derive(Clone, Copy, Debug)]
pub struct Query<'q> {
    /// Its text; both dialects cache the prepared statement by it.
    pub sql: &'static str,
    /// The values of `?1`, `?2`, … in order.
    pub params: &'q [Param<'q>],
}

/// A full-text search of the graph, for [`Db::search_nodes`].
#[derive(Clone, Copy, Debug)]
pub struct NodeSearch<'a> {
    /// One of [`Dialect::search_queries`].
    pub query: &'a str,
    /// Whose nodes.
    pub owner: &'a str,
    /// Only nodes of this kind, when given.
    pub kind: Option<&'a str>,
    /// How many nodes the search wants in all.
    pub limit: usize,
    /// Counts each candidate row the search reads from the database, as it reads it (so that
    /// a search out of time counts too): [`Counters::searched_rows`].
    pub read: &'a AtomicU64,
}

impl<E> dyn Db<Error = E> + '_ {
    /// Every row of the query `sql`, each made into a `T` by `read`.
    ///
    /// # Errors
    ///
    /// The database's, or what `read` returns.
    pub fn rows<T>(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
        mut read: impl FnMut(&dyn Row<Error = E>) -> Result<T, E>,
    ) -> Result<Vec<T>, E> {
        let mut all = Vec::new();
        self.each(Query { sql, params }, &mut |row| {
            all.push(read(row)?);
            Ok(true)
        })?;
        Ok(all)
    }

    /// The first row of the query `sql` made into a `T` by `read`, or `None`.
    ///
    /// # Errors
    ///
    /// The database's, or what `read` returns.
    pub fn row<T>(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
        read: impl FnOnce(&dyn Row<Error = E>) -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        let mut read = Some(read);
        let mut first = None;
        self.each(Query { sql, params }, &mut |row| {
            if let Some(read) = read.take() {
                first = Some(read(row)?);
            }
            Ok(false)
        })?;
        Ok(first)
    }

    /// Runs the statement `sql` with `params`, and returns how many rows it changed.
    ///
    /// # Errors
    ///
    /// The database's.
    pub fn run(&mut self, sql: &'static str, params: &[Param<'_>]) -> Result<u64, E> {
        self.execute(Query { sql, params })
    }
}

/// A row a query answered, read by column number (from 0).
pub trait Row {
    /// The dialect's own error.
    type Error;

    /// An integer column; `None` for NULL.
    ///
    /// # Errors
    ///
    /// The dialect's, when the column is not an integer.
    fn opt_int(&self, column: usize) -> Result<Option<i64>, Self::Error>;

    /// A text column; `None` for NULL.
    ///
    /// # Errors
    ///
    /// The dialect's, when the column is not text.
    fn opt_text(&self, column: usize) -> Result<Option<String>, Self::Error>;

    /// A boolean column (an integer in SQLite).
    ///
    /// # Errors
    ///
    /// The dialect's, when the column is not a boolean.
    fn flag(&self, column: usize) -> Result<bool, Self::Error>;

    /// A JSON column (`TEXT` in SQLite, `jsonb` in PostgreSQL); text that is not JSON reads as
    /// null.
    ///
    /// # Errors
    ///
    /// The dialect's, when the column is neither.
    fn json(&self, column: usize) -> Result<Value, Self::Error>;

    /// A floating-point column (`REAL` in SQLite, `float8` in PostgreSQL): a search's score.
    ///
    /// # Errors
    ///
    /// The dialect's, when the column is not a number.
    fn real(&self, column: usize) -> Result<f64, Self::Error>;

    /// A binary column, borrowed from the row.
    ///
    /// # Errors
    ///
    /// The dialect's, when the column is not binary.
    fn bytes(&self, column: usize) -> Result<&[u8], Self::Error>;

    /// An integer column of a `NOT NULL` column (NULL reads as 0).
    ///
    /// # Errors
    ///
    /// As [`Row::opt_int`].
    fn int(&self, column: usize) -> Result<i64, Self::Error> {
        Ok(self.opt_int(column)?.unwrap_or(0))
    }

    /// A text column of a `NOT NULL` column (NULL reads as empty).
    ///
    /// # Errors
    ///
    /// As [`Row::opt_text`].
    fn text(&self, column: usize) -> Result<String, Self::Error> {
        Ok(self.opt_text(column)?.unwrap_or_default())
    }
}

/// A value bound to a statement's parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Param<'a> {
    /// A 64-bit integer.
    Int(i64),
    /// An integer or NULL.
    OptInt(Option<i64>),
    /// Text.
    Text(&'a str),
    /// Text or NULL.
    OptText(Option<&'a str>),
    /// A boolean.
    Flag(bool),
    /// Bytes.
    Bytes(Cow<'a, [u8]>),
    /// JSON (`TEXT` in SQLite, `jsonb` in PostgreSQL).
    Json(&'a Value),
    /// A list of integers: PostgreSQL's `bigint[]` (for `= ANY(?N)`), SQLite's JSON array
    /// text (for `IN (SELECT value FROM json_each(?N))`).
    Ints(&'a [i64]),
}

impl Param<'_> {
    /// True for SQL's NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Param::OptInt(None) | Param::OptText(None))
    }
}

/// One column of a [`Table`]: a value per row, or one value for every row.
#[derive(Clone, Debug, PartialEq)]
pub enum Column<'a> {
    /// Integers.
    Ints(&'a [i64]),
    /// Integers or NULL.
    OptInts(&'a [Option<i64>]),
    /// Text.
    Texts(&'a [&'a str]),
    /// Text or NULL.
    OptTexts(&'a [Option<&'a str>]),
    /// Text made for the batch, or NULL.
    OptStrings(&'a [Option<String>]),
    /// Booleans.
    Flags(&'a [bool]),
    /// Bytes.
    Blobs(&'a [Vec<u8>]),
    /// The same value in every row.
    Same(Param<'a>),
}

impl Column<'_> {
    /// The value in row `row`.
    pub fn at(&self, row: usize) -> Param<'_> {
        match self {
            Column::Ints(values) => Param::Int(values[row]),
            Column::OptInts(values) => Param::OptInt(values[row]),
            Column::Texts(values) => Param::Text(values[row]),
            Column::OptTexts(values) => Param::OptText(values[row]),
            Column::OptStrings(values) => Param::OptText(values[row].as_deref()),
            Column::Flags(values) => Param::Flag(values[row]),
            Column::Blobs(values) => Param::Bytes(Cow::Borrowed(&values[row])),
            Column::Same(value) => value.clone(),
        }
    }
}

/// Rows to write, as columns of the same length.
#[derive(Clone, Debug, PartialEq)]
pub struct Table<'a> {
    /// How many rows.
    pub rows: usize,
    /// The columns, in the order the statements number their parameters.
    pub columns: Vec<Column<'a>>,
}

/// The figures a store keeps beside its tables, and how its full-text searches are shared.
#[derive(Debug)]
pub struct Counters {
    /// Nodes in the graph, counted at open, so that a turn can skip the memory lookup on an
    /// empty graph without a query.
    nodes: AtomicU64,
    /// How long a full-text search may run, in microseconds.
    search_budget_micros: AtomicU64,
    /// How many searches each principal runs at once.
    searches: SearchShare,
    /// The semantic search's vector indexes, kept in memory.
    vectors: VectorIndexes,
    /// Candidate rows the full-text searches of nodes read ([`NodeSearch::read`]).
    searched_rows: AtomicU64,
}

impl Counters {
    /// The counters of `backend`.
    fn of(backend: &impl AsRef<Counters>) -> &Counters {
        backend.as_ref()
    }

    /// The figures of a store that holds `nodes` nodes and reads with `connections`
    /// connections, with the default search budget.
    pub fn new(nodes: i64, connections: usize) -> Self {
        Counters {
            nodes: AtomicU64::new(small(nodes)),
            search_budget_micros: AtomicU64::new(micros(crate::store::DEFAULT_SEARCH_BUDGET)),
            searches: SearchShare::new(connections),
            vectors: VectorIndexes::default(),
            searched_rows: AtomicU64::new(0),
        }
    }

    /// The semantic search's vector indexes.
    pub(crate) fn vectors(&self) -> &VectorIndexes {
        &self.vectors
    }

    /// How many candidate rows the store's full-text searches of nodes have read from the
    /// database: what a search costs, without a clock (a search that ranked another
    /// principal's rows would read them).
    pub fn searched_rows(&self) -> u64 {
        self.searched_rows.load(Ordering::Relaxed)
    }

    /// Waits for `owner`'s turn to run a full-text search ([`SearchShare`]), at most for the
    /// search budget; `None` when it did not come, and the search should find nothing.
    fn search_turn(&self, owner: &str) -> Option<SearchTurn<'_>> {
        let turn = self.searches.enter(owner, self.search_deadline());
        if turn.is_none() {
            log::debug!("store: a search waited out its budget behind the same principal's");
        }
        turn
    }

    /// Gives every full-text search from now on `budget` to run.
    pub fn set_search_budget(&self, budget: Duration) {
        self.search_budget_micros
            .store(micros(budget), Ordering::Relaxed);
    }

    /// When a full-text search starting now must stop.
    pub fn search_deadline(&self) -> Instant {
        Instant::now() + Duration::from_micros(self.search_budget_micros.load(Ordering::Relaxed))
    }

    /// Sets the node count to `nodes` (after a copy filled the graph).
    pub fn set_nodes(&self, nodes: i64) {
        self.nodes.store(small(nodes), Ordering::Relaxed);
    }

    fn nodes(&self) -> u64 {
        self.nodes.load(Ordering::Relaxed)
    }

    fn node_added(&self) {
        self.nodes.fetch_add(1, Ordering::Relaxed);
    }

    fn node_deleted(&self) {
        self.nodes.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `duration` in whole microseconds, saturating.
fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
