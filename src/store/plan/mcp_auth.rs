//! [`McpAuthStore`] for every [`Backend`]: a server's grant upserted with its version bumped,
//! and the refresh lease taken by one conditional `UPDATE` (the grant still at the version the
//! claimant read, no lease running); a sign-in kept until its callback takes it (one
//! `DELETE … RETURNING`, so that it works once whichever instance it reaches), the same text
//! in both dialects.
//!
//! Depends on: `common::error`, `store::mcp_auth`, `store::plan`.

use super::{Backend, Param, View, Write, unix_now};
use crate::common::error::Result;
use crate::store::mcp_auth::{McpAuthStore, StoredGrant};

const GRANT: &str = "SELECT grant_json, version, refreshing_until FROM mcp_oauth WHERE server = ?1";
const PUT_GRANT: &str = "INSERT INTO mcp_oauth (server, grant_json, version, updated_at) \
     VALUES (?1, ?2, 1, ?3) ON CONFLICT (server) DO UPDATE SET \
     grant_json = excluded.grant_json, version = mcp_oauth.version + 1, \
     refreshing_until = NULL, updated_at = excluded.updated_at RETURNING version";
const CLAIM: &str = "UPDATE mcp_oauth SET refreshing_until = ?4 WHERE server = ?1 \
     AND version = ?2 AND (refreshing_until IS NULL OR refreshing_until < ?3)";
const RELEASE: &str = "UPDATE mcp_oauth SET refreshing_until = NULL WHERE server = ?1";
const FORGET: &str = "DELETE FROM mcp_oauth WHERE server = ?1";
const SWEEP_SIGN_INS: &str = "DELETE FROM mcp_oauth_sign_ins WHERE created_at < ?1";
const PUT_SIGN_IN: &str = "INSERT INTO mcp_oauth_sign_ins (state, server, sign_in_json, created_at) \
     VALUES (?1, ?2, ?3, ?4)";
const TAKE_SIGN_IN: &str = "DELETE FROM mcp_oauth_sign_ins WHERE state = ?1 \
     RETURNING server, sign_in_json, created_at";

impl<B: Backend> McpAuthStore for B {
    fn mcp_grant(&self, server: &str) -> Result<Option<StoredGrant>> {
        self.read("read an MCP server's grant", View::Statement, &mut |db| {
            db.row(GRANT, &[Param::Text(server)], |row| {
                Ok(StoredGrant {
                    grant: row.text(0)?,
                    version: row.int(1)?,
                    refreshing_until: row.opt_int(2)?,
                })
            })
        })
    }

    fn put_mcp_grant(&self, server: &str, grant: &str) -> Result<i64> {
        let now = unix_now();
        let version = self.write("store an MCP server's grant", Write::Replace, &mut |db| {
            db.row(
                PUT_GRANT,
                &[Param::Text(server), Param::Text(grant), Param::Int(now)],
                |row| row.int(0),
            )
        })?;
        Ok(version.unwrap_or(1))
    }

    fn claim_mcp_refresh(&self, server: &str, version: i64, now: i64, until: i64) -> Result<bool> {
        let changed = self.write("claim an MCP refresh", Write::Replace, &mut |db| {
            db.run(
                CLAIM,
                &[
                    Param::Text(server),
                    Param::Int(version),
                    Param::Int(now),
                    Param::Int(until),
                ],
            )
        })?;
        Ok(changed == 1)
    }

    fn release_mcp_refresh(&self, server: &str) -> Result<()> {
        self.write("free an MCP refresh", Write::Replace, &mut |db| {
            db.run(RELEASE, &[Param::Text(server)])
        })?;
        Ok(())
    }

    fn put_mcp_sign_in(
        &self,
        state: &str,
        server: &str,
        sign_in: &str,
        expired_before: i64,
    ) -> Result<()> {
        let now = unix_now();
        self.write("keep an MCP sign-in", Write::Insert, &mut |db| {
            db.run(SWEEP_SIGN_INS, &[Param::Int(expired_before)])?;
            db.run(
                PUT_SIGN_IN,
                &[
                    Param::Text(state),
                    Param::Text(server),
                    Param::Text(sign_in),
                    Param::Int(now),
                ],
            )
        })?;
        Ok(())
    }

    fn take_mcp_sign_in(&self, state: &str, not_before: i64) -> Result<Option<(String, String)>> {
        let taken = self.write("take an MCP sign-in", Write::Delete, &mut |db| {
            db.row(TAKE_SIGN_IN, &[Param::Text(state)], |row| {
                Ok((row.text(0)?, row.text(1)?, row.int(2)?))
            })
        })?;
        Ok(taken
            .filter(|(_, _, created_at)| *created_at >= not_before)
            .map(|(server, sign_in, _)| (server, sign_in)))
    }

    fn forget_mcp_grant(&self, server: &str) -> Result<bool> {
        let changed = self.write("forget an MCP server's grant", Write::Delete, &mut |db| {
            db.run(FORGET, &[Param::Text(server)])
        })?;
        Ok(changed > 0)
    }
}
