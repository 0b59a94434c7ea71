//! Tests shared by both stores.
